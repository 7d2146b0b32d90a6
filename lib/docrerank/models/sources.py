"""Where a model will be loaded from, checked without downloading it, and fetching only a checkpoint's small files.

- ``model_source``: a local directory, a ``pkg:`` package's bundled model, a ``tiny:`` random checkpoint
  (``models.tiny``), the local Hugging Face cache, or the
  hub (gated or not, and its file list, asked of the hub only when downloads are allowed; offline: the static
  ``KNOWN_GATED`` list, else "not checked offline"), with the files a load needs that are missing. Used by every
  job's ``--plan``. ``layout="mistral"`` (vLLM's ``tokenizer_mode``/``config_format: mistral``) checks Mistral's own
  format instead of transformers': ``params.json``, a tokenizer (``tekken.json`` or ``tokenizer.model*``) and
  ``consolidated*.safetensors``, no ``config.json``.
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
from docrerank.models.tiny import is_tiny, tiny_checkpoint, tiny_dir

log = logging.getLogger("docrerank.models")

# Everything but the weights: configs, tokenizers, chat templates, image/video processor configs.
CONFIG_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MISTRAL_TOKENIZERS = ("tekken.json", "tokenizer.model*")

# Hub models whose licence must be accepted (gated) that the shipped configs use: what ``--plan`` says offline, where
# the hub cannot be asked. Online the hub's own ``gated`` flag is used for every model. Extend when configs add one.
KNOWN_GATED = frozenset({
    "mistralai/Pixtral-12B-2409",
    "mistralai/Pixtral-12B-Base-2409",
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
    "meta-llama/Llama-3.2-11B-Vision-Instruct",
    "google/gemma-3-12b-it",
    "google/gemma-3-27b-it",
})
GATED_NOTE = "gated: needs a token with the licence accepted (HF_TOKEN)"


@dataclass
class ModelSource:
    """Where one model comes from and what is known about it without loading it."""

    name: str
    kind: str  # local | pkg | tiny | cache | hub | served | missing
    where: str
    gated: str = "n/a"
    files: str = ""
    problems: list[str] = field(default_factory=list)


def _has_weights(d: Path) -> bool:
    return any(p.name.endswith(WEIGHT_SUFFIXES) for p in d.iterdir() if p.is_file())


def engine_layout(engine) -> str:
    """"mistral" when an engine config loads a checkpoint in Mistral's format (vLLM ``tokenizer_mode`` or
    ``config_format`` "mistral"), else "hf"."""
    v = getattr(engine, "vllm", None)
    if getattr(engine, "backend", None) == "vllm" and v is not None and "mistral" in (v.tokenizer_mode,
                                                                                     v.config_format):
        return "mistral"
    return "hf"


def _missing_files(names: list[str], layout: str) -> list[str]:
    """What a load in ``layout`` needs that ``names`` (a directory's or a hub repo's file names) lacks."""
    import fnmatch

    if layout == "mistral":
        missing = [] if "params.json" in names else ["params.json"]
        if not any(fnmatch.fnmatch(n, p) for n in names for p in MISTRAL_TOKENIZERS):
            missing.append("tokenizer (tekken.json / tokenizer.model*)")
        if not any(fnmatch.fnmatch(n, "consolidated*.safetensors") for n in names):
            missing.append("weights (consolidated*.safetensors)")
        return missing
    missing = [] if "config.json" in names else ["config.json"]
    if not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        missing.append("weights (*.safetensors / *.bin)")
    return missing


def _check_dir(src: ModelSource, d: Path, key: str, layout: str = "hf") -> ModelSource:
    missing = _missing_files([p.name for p in d.iterdir() if p.is_file()], layout)
    what = "Mistral params + tokenizer + consolidated weights" if layout == "mistral" else "config + weights"
    src.files = what if not missing else f"missing {', '.join(missing)}"
    if missing:
        src.problems.append(f"{key}: {src.name!r} at {d} lacks {', '.join(missing)}")
    return src


def _cached_snapshot(repo: str, layout: str = "hf") -> Optional[Path]:
    """The local snapshot directory of ``repo`` in the Hugging Face cache that holds its config (``params.json`` for
    the Mistral layout), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "params.json" if layout == "mistral" else "config.json")
    return Path(found).parent if isinstance(found, str) else None


def model_source(name: str, key: str = "model", backend: str = "hf", layout: str = "hf") -> ModelSource:
    """Where ``name`` (a path, ``pkg:MODULE`` or hub id) will be loaded from; ``problems`` says what would fail.
    ``backend`` "http": the model is served by an endpoint, nothing is loaded here. ``layout`` "mistral": the
    checkpoint is in Mistral's format (``engine_layout``)."""
    if backend == "http":
        return ModelSource(name, "served", "the endpoint's model (nothing loaded here)")
    if is_tiny(name):
        try:
            where = tiny_dir(name)
        except ValueError as err:
            return ModelSource(name, "missing", "", problems=[f"{key}: {err}"])
        return ModelSource(name, "tiny", str(where), gated="not gated",
                           files="random weights, " + ("written" if (where / "config.json").is_file() else
                                                       "written on first use"))
    if name.startswith("pkg:"):
        spec = importlib.util.find_spec(name[4:])
        if spec is None or not spec.origin:
            return ModelSource(name, "missing", "", problems=[f"{key}: package {name[4:]!r} is not installed"])
        return _check_dir(ModelSource(name, "pkg", str(Path(spec.origin).parent / "model")),
                          Path(spec.origin).parent / "model", key)
    if Path(name).is_dir():
        return _check_dir(ModelSource(name, "local", str(Path(name).resolve())), Path(name), key, layout)
    if "://" in name or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return ModelSource(name, "missing", "", problems=[f"{key}: {name!r} is not a local directory (nor a hub id)"])
    snap = _cached_snapshot(name, layout)
    src = ModelSource(name, "cache" if snap is not None else "hub", str(snap) if snap else "huggingface.co")
    if snap is not None and not _missing_files([p.name for p in snap.iterdir()], layout):
        src.files = ("Mistral params + tokenizer + weights" if layout == "mistral" else "config + weights") + \
            " in the cache"
    elif snap is not None:
        src.kind, src.files = "hub", "config cached, weights to download"
    if hub_offline():
        src.gated = GATED_NOTE if name in KNOWN_GATED else "not checked offline"
        if src.kind == "hub":
            src.problems.append(f"{key}: {name!r} is not (fully) in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                                "forbids downloading it")
        return src
    _ask_hub(src, key, layout)
    return src


def _ask_hub(src: ModelSource, key: str, layout: str = "hf") -> None:
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
        src.gated = (GATED_NOTE if src.name in KNOWN_GATED else "not checked") + f" ({type(err).__name__})"
        return
    src.gated = GATED_NOTE if info.gated else "not gated"
    names = [s.rfilename for s in (info.siblings or [])]
    if names and src.kind == "hub":
        weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
        missing = _missing_files(names, layout)
        src.files = f"{len(names)} files on the hub, {len(weights)} weight files" + (
            f", NO {', '.join(missing)}" if missing else "")
        if missing:
            src.problems.append(f"{key}: {src.name!r} on the hub lacks {', '.join(missing)}"
                                + (" (Mistral layout)" if layout == "mistral" else ""))


def fetch_config_files(name: str, key: str = "model.path") -> str:
    """A local directory with ``name``'s config, tokenizer, chat template and processor files, without its weights
    (a directory or ``pkg:`` model as it is, a ``tiny:`` one written first). ValueError naming ``key`` when they
    cannot be had, saying whether the cache was missing (offline) or the download failed (and why: a read-only
    HF_HOME, the network)."""
    from docrerank.models.hub import resolve_model_path

    if is_tiny(name):
        return str(tiny_checkpoint(name, key))
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
