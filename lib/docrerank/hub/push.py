"""Push a dataset build output or a trained reranker to the Hugging Face Hub.

``plan_upload`` is pure file work: which local file goes to which path of the repository, and the card rewritten for
the Hub (the dataset card's front matter re-rendered for the tables present now, e.g. ``mined/`` after the mining
job; the license set when given; the usage snippets pointing at the repository; the model card's Evaluation section
from an evaluation job's ``metrics.json``). ``push`` then makes two calls of ``huggingface_hub.HfApi``:
``create_repo(exist_ok=True)`` and one ``create_commit`` with every file (``CommitOperationAdd``), so a push is one
commit. A remote ``path`` (s3://, gs://, ...) is copied to a temporary directory first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from docrerank.core import storage
from docrerank.hub.config import PushConfig

Source = Union[Path, bytes]
SNIPPET_CALLS = r"(load_dataset|Reranker\.load|from_pretrained|CrossEncoder)\(\"[^\"]*\""


@dataclass
class Upload:
    """What one push sends: the repository, its type and ``(path in repo, local file or bytes)`` pairs."""

    repo_id: str
    repo_type: str
    files: list[tuple[str, Source]] = field(default_factory=list)

    def size(self) -> int:
        """Bytes to upload."""
        return sum(len(s) if isinstance(s, bytes) else s.stat().st_size for _, s in self.files)


def model_dir_of(root: Path) -> Optional[Path]:
    """The merged model directory under a training output, its ``model/`` or itself (the one with reranker.json)."""
    for cand in (root / "model" / "merged", root / "merged", root):
        if (cand / "reranker.json").is_file() and (cand / "config.json").is_file():
            return cand
    return None


def detect_kind(root: Path, kind: str = "auto") -> str:
    """``dataset`` or ``model`` for the local directory ``root``; ValueError naming what was looked for."""
    is_dataset = (root / "stats.json").is_file() and (root / "examples").is_dir()
    is_model = model_dir_of(root) is not None
    if kind == "auto":
        if is_dataset == is_model:
            found = "both" if is_dataset else "neither"
            raise ValueError(f"path {str(root)!r}: expected a dataset build output (stats.json and examples/) or a "
                             f"training output (model/merged/reranker.json), found {found}; set kind=dataset or "
                             "kind=model")
        return "dataset" if is_dataset else "model"
    if kind == "dataset" and not is_dataset:
        raise ValueError(f"path {str(root)!r}: kind=dataset but there is no stats.json and examples/")
    if kind == "model" and not is_model:
        raise ValueError(f"path {str(root)!r}: kind=model but no reranker.json + config.json in it, merged/ or "
                         "model/merged/")
    return kind


def point_snippets(card: str, repo_id: str) -> str:
    """The card's usage snippets loading from ``repo_id`` instead of a local path."""
    return re.sub(SNIPPET_CALLS, lambda m: f'{m.group(1)}("{repo_id}"', card)


def set_license(card: str, license: Optional[str]) -> str:
    """The card with ``license`` in its YAML front matter (the commented placeholder line removed)."""
    if not license or not card.startswith("---\n"):
        return card
    import yaml

    end = card.find("\n---\n", 4)
    block = "\n".join(line for line in card[4:end].splitlines() if not line.startswith("# license:"))
    meta = yaml.safe_load(block) or {}
    meta = {"license": license, **{k: v for k, v in meta.items() if k != "license"}}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + card[end + 1:]


def set_section(card: str, heading: str, body: str, before: str = "## Limits") -> str:
    """The card with the section ``heading`` holding ``body``: replaced in place, else inserted before ``before``
    (else appended)."""
    section = f"{heading}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(card):
        return pattern.sub(lambda _: section, card, count=1)
    at = card.find(f"\n{before}\n")
    return card[:at + 1] + section + card[at + 1:] if at >= 0 else card.rstrip("\n") + "\n\n" + section


def evaluation_section(evaluation: str) -> str:
    """Markdown of an evaluation job's results (``<evaluation>/metrics.json``): setup line and the primary-metric
    table (values x100, deltas and p-values vs retrieval only)."""
    from docrerank.report.evaluation import markdown_table

    loc = storage.resolve(evaluation).join("metrics.json")
    if not storage.exists(loc):
        raise ValueError(f"evaluation={evaluation!r}: no metrics.json there (an output of jobs.evaluate)")
    results = json.loads(storage.read_bytes(loc))
    primary = results.get("primary", "ndcg@5")
    return (f"First stage {results.get('first_stage', '?')}, top-{results.get('top_k', '?')} pages reranked; "
            f"{primary} x100 (in brackets: change vs retrieval only and the paired randomization test's p):\n\n"
            + markdown_table(results, primary))


def dataset_upload(cfg: PushConfig, root: Path) -> Upload:
    """The files of a dataset build output: the card (front matter re-rendered), stats.json, the example tables."""
    from docrerank.report.card import HUB_TABLES, front_matter, set_front_matter

    out = storage.resolve(str(root))
    readme = root / "README.md"
    card = readme.read_text() if readme.is_file() else (root / "card.md").read_text()
    stats = json.loads((root / "stats.json").read_text())
    card = set_front_matter(card, front_matter(out, stats.get("examples", 0), cfg.license))
    up = Upload(cfg.repo_id, "dataset", [("README.md", point_snippets(card, cfg.repo_id).encode())])
    up.files.append(("stats.json", root / "stats.json"))
    for table in dict.fromkeys(t for _, _, t in HUB_TABLES):
        up.files += [(f"{table}/{f.name}", f) for f in sorted((root / table).glob("*.parquet"))]
    return up


def model_upload(cfg: PushConfig, root: Path) -> Upload:
    """The files of a trained reranker: the merged model at the root (card with license, evaluation and snippets
    for the repository), the LoRA adapter under ``adapter/``, ``train_config.json``."""
    merged = model_dir_of(root)
    assert merged is not None  # detect_kind checked it
    card = (merged / "README.md").read_text() if (merged / "README.md").is_file() else ""
    if cfg.evaluation:
        card = set_section(card, "## Evaluation", evaluation_section(cfg.evaluation))
    card = point_snippets(set_license(card, cfg.license), cfg.repo_id)
    up = Upload(cfg.repo_id, "model", [("README.md", card.encode())])
    files = [(f.relative_to(merged).as_posix(), f) for f in sorted(merged.rglob("*")) if f.is_file()]
    up.files += [(rel, f) for rel, f in files if rel != "README.md"]
    adapter = merged.parent / "adapter"
    if merged.name == "merged" and adapter.is_dir():
        up.files += [("adapter/" + f.relative_to(adapter).as_posix(), f) for f in sorted(adapter.rglob("*"))
                     if f.is_file()]
    config = merged.parent / "train_config.json"
    if merged.name == "merged" and config.is_file():
        up.files.append(("train_config.json", config))
    return up


def plan_upload(cfg: PushConfig, root: Path) -> Upload:
    """The upload for the local directory ``root`` (see ``detect_kind``)."""
    kind = detect_kind(root, cfg.kind)
    if kind == "dataset":
        if cfg.evaluation:
            raise ValueError("evaluation: an evaluation table belongs to a model card, not to a dataset push")
        return dataset_upload(cfg, root)
    return model_upload(cfg, root)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[Path]:
    """``path`` as a local directory: itself, or a temporary copy of a remote directory."""
    loc = storage.resolve(path)
    if "://" not in loc.uri:
        if not Path(loc.path).is_dir():
            raise ValueError(f"path={path!r}: not a directory")
        yield Path(loc.path)
        return
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="docrerank-push-") as tmp:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
        for info in infos:
            if info.type == pafs.FileType.File:
                dest = Path(tmp) / info.path[len(loc.path.rstrip("/")) + 1:]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with loc.fs.open_input_stream(info.path) as src:
                    dest.write_bytes(src.read())
        yield Path(tmp)


def push(cfg: PushConfig, api: Any = None) -> dict:
    """Upload ``cfg.path`` to ``cfg.repo_id`` in one commit; returns the repository URL, commit URL, kind, file count
    and bytes. ``api``: an ``HfApi`` (default a new one); the token comes from ``$<token_env>`` when set."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api if api is not None else HfApi()
    token = os.environ.get(cfg.token_env) or None
    with local_copy(cfg.path) as root:
        up = plan_upload(cfg, root)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=s if isinstance(s, bytes) else str(s))
               for p, s in up.files]
        try:
            url = api.create_repo(up.repo_id, token=token, private=cfg.private, repo_type=up.repo_type,
                                  exist_ok=True)
            if cfg.revision:
                api.create_branch(up.repo_id, branch=cfg.revision, token=token, repo_type=up.repo_type,
                                  exist_ok=True)
            info = api.create_commit(up.repo_id, operations=ops, token=token, repo_type=up.repo_type,
                                     revision=cfg.revision,
                                     commit_message=cfg.commit_message or f"Upload {up.repo_type} with docrerank")
        except Exception as err:  # noqa: BLE001 - auth, network and hub errors end the job with their reason
            raise RuntimeError(f"push to {up.repo_type} {up.repo_id} failed: {type(err).__name__}: {err}") from err
    return {"repo": str(url), "commit": str(getattr(info, "commit_url", info)), "kind": up.repo_type,
            "files": len(up.files), "bytes": up.size()}
