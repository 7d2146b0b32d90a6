"""``jobs.view_dataset``'s typed config. Field docstrings are the documentation (``--help`` prints them)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from docrerank.core.config import Config


class ViewConfig(Config):
    """``jobs.view_dataset``: the static HTML viewer of a dataset build output."""

    output: str
    """The build output (``jobs.build_dataset``'s ``output``); the viewer goes to ``<output>/viewer/``."""
    pages_per_shard: int = Field(200, ge=1, le=10_000)
    """Pages per data file, loaded one at a time by the viewer (a viewer page shows one of them)."""
    thumb_width: int = Field(300, ge=16, le=2000)
    """Width of the page thumbnails in pixels (JPEG); the viewer never shows full-size pages."""
    title: Optional[str] = None
    """Title of the viewer page; default: the output directory's name."""
