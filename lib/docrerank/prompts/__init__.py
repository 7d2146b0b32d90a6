"""Versioned prompt templates, kept as data (YAML) next to this file; the version is stored with every row."""

from __future__ import annotations

from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@cache
def load_prompt(name: str) -> dict:
    """The prompt file ``<name>.yaml`` (or a path to a user's own file) as a dict with a ``version``."""
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else HERE / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in HERE.glob("*.yaml"))
        raise ValueError(f"prompt {name!r}: no such file {path}; shipped prompts: {known}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "version" not in data:
        raise ValueError(f"prompt {path}: expected a mapping with a 'version' key")
    return data
