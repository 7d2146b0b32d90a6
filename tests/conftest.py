"""Shared fixtures: offline hubs, a local Ray, generated PDFs, the real sample PDFs when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Fault injection for the isolation tests: only files named like this are affected (see docrerank.core.faults).
os.environ["DOCRERANK_FAULT_INJECT"] = "crash:__crash_me__:2,hang:__hang_me__:1"

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DOCRERANK_SHARED", REPO.parent / "shared"))  # a worktree elsewhere sets it
SHARED_PDFS = SHARED / "data" / "pdfs"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole test session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "lib")}})
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_pdfs() -> Path:
    """The real PDFs in ../shared/data/pdfs; tests using them skip on a fresh clone without ../shared."""
    if not SHARED_PDFS.is_dir():
        pytest.skip(f"real sample PDFs not found at {SHARED_PDFS} (../shared is not part of a fresh clone)")
    return SHARED_PDFS


def make_pdf(path: Path, pages: list[tuple[float, float, str]], password: str | None = None) -> Path:
    """Write a PDF whose pages have the given (width_pt, height_pt, text)."""
    import pymupdf

    doc = pymupdf.open()
    for w, h, text in pages:
        page = doc.new_page(width=w, height=h)
        if text:
            page.insert_text((10, 30), text, fontsize=12)
    kw = {}
    if password:
        kw = dict(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "!")
    doc.save(path, **kw)
    doc.close()
    return path
