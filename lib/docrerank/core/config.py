"""Typed job configs: a YAML file plus ``key=value`` overrides, validated at construction.

Every config is a pydantic model whose fields carry their documentation as attribute docstrings. Errors
name the dotted key, the value received and what was expected, e.g.
``ingest.image_format: got 'gif', expected one of 'png', 'jpeg'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config that does not validate; the message names every offending key."""


class Config(BaseModel):
    """Base of every config: unknown keys are errors, docstrings document fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        got_s = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{got_s}")
    return "invalid config:\n" + "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3). The value is parsed as YAML, so lists and numbers work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.strip().startswith("{"):
        value = raw  # "sample:" or "s3://x" are strings, not one-key mappings
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``key=value`` override set (nested keys by dots)."""
    out = _deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides; raise ConfigError naming keys."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def describe(cls: type[Config], prefix: str = "") -> list[str]:
    """One line per field (recursing into nested configs): key, type, default, docstring."""
    lines = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, Config):
            lines.extend(describe(ann, prefix=f"{key}."))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        doc = (field.description or "").replace("\n", " ")
        tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        lines.append(f"  {key} ({tname}, default {default}): {doc}")
    return lines


def parse_job_args(cls: type[C], argv: list[str] | None, prog: str, description: str) -> tuple[C, argparse.Namespace]:
    """Parse ``--config FILE [--address ADDR] [--plan] key=value ...`` into a validated config and the CLI namespace.

    ``--plan`` (``ns.plan``): the job prints its plan and problems instead of running (``core/plan.py``).

    Invalid configs exit with status 2 and a message naming the keys (no traceback).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in --config YAML or as key=value):\n" + "\n".join(describe(cls)),
    )
    parser.add_argument("--config", help="YAML config file; key=value overrides win over it")
    parser.add_argument("--address", help="Ray cluster address; default $RAY_ADDRESS, else start a local Ray")
    parser.add_argument("--plan", action="store_true",
                        help="print the plan (stages, models and where they load from, actor pools, GPUs and CPUs "
                             "against the cluster, model calls and GPU-hours, writable paths) and every problem "
                             "found, without running; exit 1 when there is a problem")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys")
    ns = parser.parse_args(argv)
    try:
        cfg = load_config(cls, ns.config, ns.overrides)
    except (ConfigError, OSError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, ns
