"""Where a model will be loaded from, checked without downloading it, and fetching only a checkpoint's small files.

- ``model_source``: a local directory, a ``pkg:`` package's bundled model, the local Hugging Face cache, or the
  hub (gated or not, and its file list, asked of the hub only when downloads are allowed; offline: "not checked
  offline"), with the files a load needs that are missing. Used by every job's ``--plan``.
- ``fetch_config_files``: a local directory with a checkpoint's config, tokenizer, chat template and image
  processor files only (``snapshot_download(allow_patterns=...)``), never its weights: what a driver needs to
  check inputs before its workers load the model.
huggingface_hub is imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from docrerank.models.hub import hub_offline

log = logging.getLogger("docrerank.models")

# Everything but the weights: configs, tokenizers, chat templates, image/video processor configs.
CONFIG_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class ModelSource:
    """Where one model comes from and what is known about it without loading it."""

    name: str
    kind: str  # local | pkg | cache | hub | served | missing
    where: str
    gated: str = "n/a"
    files: str = ""
    problems: list[str] = field(default_factory=list)


def _has_weights(d: Path) -> bool:
    return any(p.name.endswith(WEIGHT_SUFFIXES) for p in d.iterdir() if p.is_file())


def _check_dir(src: ModelSource, d: Path, key: str) -> ModelSource:
    missing = [n for n in ("config.json",) if not (d / n).is_file()]
    if not _has_weights(d):
        missing.append("weights (*.safetensors / *.bin)")
    src.files = "config + weights" if not missing else f"missing {', '.join(missing)}"
    if missing:
        src.problems.append(f"{key}: {src.name!r} at {d} lacks {', '.join(missing)}")
    return src


def _cached_snapshot(repo: str) -> Optional[Path]:
    """The local snapshot directory of ``repo`` in the Hugging Face cache that holds its config, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def model_source(name: str, key: str = "model", backend: str = "hf") -> ModelSource:
    """Where ``name`` (a path, ``pkg:MODULE`` or hub id) will be loaded from; ``problems`` says what would fail.
    ``backend`` "http": the model is served by an endpoint, nothing is loaded here."""
    if backend == "http":
        return ModelSource(name, "served", "the endpoint's model (nothing loaded here)")
    if name.startswith("pkg:"):
        spec = importlib.util.find_spec(name[4:])
        if spec is None or not spec.origin:
            return ModelSource(name, "missing", "", problems=[f"{key}: package {name[4:]!r} is not installed"])
        return _check_dir(ModelSource(name, "pkg", str(Path(spec.origin).parent / "model")),
                          Path(spec.origin).parent / "model", key)
    if Path(name).is_dir():
        return _check_dir(ModelSource(name, "local", str(Path(name).resolve())), Path(name), key)
    if "://" in name or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return ModelSource(name, "missing", "", problems=[f"{key}: {name!r} is not a local directory (nor a hub id)"])
    snap = _cached_snapshot(name)
    src = ModelSource(name, "cache" if snap is not None else "hub", str(snap) if snap else "huggingface.co")
    if snap is not None and _has_weights(snap):
        src.files = "config + weights in the cache"
    elif snap is not None:
        src.kind, src.files = "hub", "config cached, weights to download"
    if hub_offline():
        src.gated = "not checked offline"
        if src.kind == "hub":
            src.problems.append(f"{key}: {name!r} is not (fully) in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                                "forbids downloading it")
        return src
    _ask_hub(src, key)
    return src


def _ask_hub(src: ModelSource, key: str) -> None:
    """Fill ``gated`` and ``files`` from the hub (short timeout); unreachable hubs are noted, not problems."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        info = HfApi().model_info(src.name, timeout=10, files_metadata=False)
    except GatedRepoError:  # before its base class RepositoryNotFoundError
        src.gated = "gated, no access with this token"
        src.problems.append(f"{key}: {src.name!r} is gated and this token has no access: accept its licence on the hub")
        return
    except RepositoryNotFoundError as err:
        src.problems.append(f"{key}: {src.name!r} is not on the hub ({type(err).__name__})")
        return
    except Exception as err:  # noqa: BLE001 - no network, proxies: only a note
        src.gated = f"not checked ({type(err).__name__})"
        return
    src.gated = "gated" if info.gated else "not gated"
    names = [s.rfilename for s in (info.siblings or [])]
    if names and src.kind == "hub":
        weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
        src.files = f"{len(names)} files on the hub, {len(weights)} weight files" + ("" if "config.json" in names
                                                                                     else ", NO config.json")
        if "config.json" not in names or not weights:
            src.problems.append(f"{key}: {src.name!r} on the hub has no config.json or no weights")


def fetch_config_files(name: str, key: str = "model.path") -> str:
    """A local directory with ``name``'s config, tokenizer, chat template and processor files, without its weights
    (a directory or ``pkg:`` model is returned as it is). ValueError naming ``key`` when they cannot be had, saying
    whether the cache was missing (offline) or the download failed (and why: a read-only HF_HOME, the network)."""
    from docrerank.models.hub import resolve_model_path

    if name.startswith("pkg:") or Path(name).is_dir():
        return resolve_model_path(name, key)
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        return snapshot_download(name, allow_patterns=CONFIG_PATTERNS, local_files_only=offline)
    except Exception as err:  # noqa: BLE001 - one clear message instead of the hub's
        from huggingface_hub import constants

        if offline:
            why = f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1"
        elif isinstance(err, PermissionError) or "Permission denied" in str(err):
            why = f"the Hugging Face cache {constants.HF_HUB_CACHE} is not writable: set HF_HOME to a writable path"
        else:
            why = "could not be downloaded"
        raise ValueError(f"{key}: {name!r}: {why} ({type(err).__name__}: {str(err)[:200]})") from None


def reranker_source(path: str, key: str = "reranker.path") -> ModelSource:
    """``model_source`` of a reranker path as ``Reranker.load`` reads it: a training output (its ``model/merged``), a
    merged model, or a checkpoint directory, ``pkg:`` or hub id."""
    p = Path(path)
    for cand in (p / "model" / "merged", p / "merged"):
        if (cand / "config.json").is_file():
            return _check_dir(ModelSource(path, "local", str(cand.resolve())), cand, key)
    if "://" in path:
        return ModelSource(path, "missing", "", problems=[f"{key}: {path!r}: rerankers load from a local directory "
                                                          "or a hub id; copy the training output to local disk first"])
    return model_source(path, key)


def trained_base(model_dir: str) -> Optional[str]:
    """The base checkpoint a training output (or its merged model) was trained from (``train_config.json``), else
    None: the name that says the model's size."""
    import json

    for cand in (Path(model_dir) / "model" / "train_config.json", Path(model_dir) / "train_config.json",
                 Path(model_dir).parent / "train_config.json"):
        if cand.is_file():
            try:
                return (json.loads(cand.read_text()).get("model") or {}).get("path")
            except ValueError:
                return None
    return None
