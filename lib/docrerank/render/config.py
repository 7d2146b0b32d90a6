"""``jobs.ingest``'s typed config (and the ingest options of the dataset build). Field docstrings are the docs."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions


class RenderConfig(Config):
    """How PDF pages become page images."""

    dpi: float = Field(144.0, gt=0, le=1200)
    """Render resolution in dots per inch before the pixel cap is applied."""

    max_pixels: int = Field(802_816, ge=28 * 28, le=50_000_000)
    """Cap on width*height of a rendered page; the scale is clamped to fit. The default, 1024*28*28,
    is 1024 visual tokens for Qwen2-VL-class models (28x28 pixels per token after merging)."""

    image_format: Literal["png", "jpeg"] = "png"
    """Encoding of the page images."""

    jpeg_quality: int = Field(90, ge=1, le=100)
    """JPEG quality when image_format is jpeg."""

    extract_text: bool = True
    """Store each page's text layer (needed by BM25, the text backbone and the text judge)."""

    max_aspect_ratio: float = Field(100.0, gt=1)
    """Pages more elongated than this are quarantined as absurd_page_size."""

    max_source_pixels: int = Field(400_000_000, gt=0)
    """Image inputs declaring more pixels than this are quarantined as decompression bombs."""


class IngestOptions(Config):
    """How documents are read and rendered (everything of the ingest but its input and output)."""

    render: RenderConfig = Field(default_factory=RenderConfig)
    """Page rendering settings."""

    suffixes: list[str] = Field(default_factory=lambda: [".pdf", ".png", ".jpg", ".jpeg"])
    """File name endings picked up from directories and globs (case-insensitive)."""

    passwords: list[str] = Field(default_factory=list)
    """Passwords tried on every encrypted document."""

    password_map: dict[str, str] = Field(default_factory=dict)
    """Passwords by file name or URI pattern (fnmatch), tried before ``passwords``. Never written to outputs."""

    pages_per_task: int = Field(16, ge=1, le=10_000)
    """Pages per render task: a big book is split into many tasks and small documents are packed together,
    so every worker stays busy and memory per task stays bounded."""

    num_workers: int | None = Field(None, ge=1)
    """Render workers (one CPU each); default: every CPU of the Ray cluster."""

    worker_memory_mb: int = Field(3072, ge=0)
    """Address-space limit of each isolated render process, in MiB (0: none). Bombs fail, not the node."""

    task_timeout_s: float = Field(600.0, gt=0)
    """A render call that takes longer is killed; its pages are retried one by one, then quarantined."""

    resume: bool = True
    """Skip documents and pages already in the output; false refuses to write into a non-empty output."""

    probe_local_max: int = Field(256, ge=0)
    """Inputs up to this many files are probed (opened, hashed, pages counted) by the driver in one isolated
    child process; more are probed by an actor pool on the cluster."""

    @model_validator(mode="after")
    def _check_suffixes(self):
        bad = [s for s in self.suffixes if not s.startswith(".")]
        if bad:
            raise ValueError(f"suffixes: expected endings starting with '.', got {bad}")
        return self


class IngestConfig(IngestOptions):
    """``jobs.ingest``: PDFs and images in, the pages table out."""

    # a rerun keeps the pages already rendered (``core.rerun``); ``input``: more documents, rendered the same way
    resume_marker: ClassVar[Optional[str]] = "pages"
    run_only_keys: ClassVar[tuple[str, ...]] = (
        "output", "input", "num_workers", "pages_per_task", "worker_memory_mb", "task_timeout_s", "probe_local_max",
        "resume", "plan", "plan.*")
    resume_key: ClassVar[Optional[str]] = "resume"

    input: str
    """PDFs/images to ingest: a directory (recursive), a glob (``dir/*.pdf``), a list file (``.txt``/``.lst``,
    one path or URI per line), a single file, or ``sample:`` (the generated sample corpus); local paths or
    any pyarrow filesystem URI (s3://, gs://)."""

    output: str
    """Output directory or URI; pages/, quarantine/, documents/, stats.json and _meta/ are written there."""
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""
