"""``jobs.push_to_hub``'s typed config. Field docstrings are the documentation (``--help`` prints them)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import field_validator

from docrerank.core.config import Config


class PushConfig(Config):
    """``jobs.push_to_hub``: upload a dataset build output or a trained reranker to the Hugging Face Hub. Nothing is
    pushed by any other job: publishing is this separate, explicit step."""

    path: str
    """What to publish: a dataset build output (its README.md card, export/, examples/, examples_heldout/, mined/
    when present, stats.json), or a training output / its ``model/merged`` (the merged model with its card;
    ``model/adapter`` goes to ``adapter/``). Local or any pyarrow filesystem URI (copied to a temporary directory
    first)."""

    repo_id: str
    """The Hub repository, ``owner/name``; created when missing."""

    kind: Literal["auto", "dataset", "model"] = "auto"
    """``dataset`` or ``model``; auto: a directory with ``stats.json`` and ``examples/`` is a dataset, one with
    ``reranker.json`` (itself, ``merged/`` or ``model/merged/``) a model."""

    private: bool = True
    """Create the repository as private (an existing repository keeps its visibility)."""

    token_env: str = "HF_TOKEN"
    """Environment variable holding the Hub token (never a config value); unset: huggingface_hub's saved login."""

    license: Optional[str] = None
    """License id written into the card's front matter (e.g. ``cc-by-4.0``, ``apache-2.0``); the cards leave it
    for you to set, as the license depends on your documents and base model."""

    evaluation: Optional[str] = None
    """Model only: an evaluation output (``jobs.evaluate``'s directory with ``metrics.json``) whose NDCG table goes
    into the model card's Evaluation section."""

    revision: Optional[str] = None
    """Branch to push to; default the repository's main branch."""

    commit_message: Optional[str] = None
    """Commit message; default "Upload <kind> with docrerank"."""

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if v.count("/") != 1 or not all(v.split("/")):
            raise ValueError(f"expected 'owner/name', got {v!r}")
        return v
