"""Typed job configs: a YAML file plus ``key=value`` overrides, validated at construction.

Every config is a pydantic model whose fields carry their documentation as attribute docstrings. Errors
name the dotted key, the value received and what was expected, e.g.
``ingest.image_format: got 'gif', expected one of 'png', 'jpeg'``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Literal, Optional, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config that does not validate; the message names every offending key."""


class Config(BaseModel):
    """Base of every config: unknown keys are errors, docstrings document fields.

    A job that resumes into its output (skips what an earlier run finished) declares it for ``core.rerun``:
    ``resume_marker``, the output table whose shards are the finished work a rerun keeps; ``run_only_keys``, the
    settings that do not change the data (dotted keys, ``fnmatch`` patterns); ``resume_key``, the boolean setting
    that turns resuming off (the job then redoes everything, so any setting may change)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
    resume_marker: ClassVar[Optional[str]] = None
    run_only_keys: ClassVar[tuple[str, ...]] = ()
    resume_key: ClassVar[Optional[str]] = None


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


def parse_override(item: str, cls: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3). The value is parsed as YAML, so lists, mappings and numbers work.

    With the config class ``cls``, a value (or list item, mapping value) whose field is typed as a string keeps the
    text the user typed: ``passwords=[1234]`` gives ``["1234"]`` and ``name=007`` gives ``"007"``, not numbers.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    path = key.split(".")
    if not raw.strip():
        return path, ""
    try:
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return path, raw
    if node is None:
        return path, ""
    if isinstance(node, yaml.MappingNode) and not raw.strip().startswith("{"):
        return path, raw  # "sample:" or "s3://x" are strings, not one-key mappings
    return path, _construct(node, field_type(cls, path) if cls is not None else None)


_NULL_TAG = "tag:yaml.org,2002:null"


def field_type(cls: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the field at dotted ``path`` in config class ``cls`` (into nested configs, unions holding a
    config, and mapping values); None where the path names no field."""
    ann: Any = cls
    for part in path:
        ann = _child_type(ann, part)
        if ann is None:
            return None
    return ann


def _members(ann: Any) -> list[Any]:
    """The non-None types an annotation accepts (the members of a union, or the annotation itself)."""
    if get_origin(ann) in (Union, UnionType):
        return [a for a in get_args(ann) if a is not type(None)]
    return [ann]


def _child_type(ann: Any, key: str) -> Any:
    for member in _members(ann):
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get(key)  # type: ignore[attr-defined]  # pydantic is not followed (pyproject)
            if field is not None:
                return field.annotation
        elif get_origin(member) in (dict, Mapping) and len(get_args(member)) == 2:
            return get_args(member)[1]
    return None


def _allows_none(ann: Any) -> bool:
    return get_origin(ann) in (Union, UnionType) and type(None) in get_args(ann)


def _is_text(ann: Any) -> bool:
    if ann is str:
        return True
    return get_origin(ann) is Literal and all(isinstance(a, str) for a in get_args(ann))


def _plain(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _construct(node: yaml.Node, ann: Any) -> Any:
    """The Python value of a YAML node, guided by the field type ``ann``: scalars typed as text keep their source."""
    if ann is None or ann is Any:
        return _plain(node)
    members = _members(ann)
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _NULL_TAG and node.style is None and _allows_none(ann):
            return None  # an Optional field given null / ~
        return node.value if any(_is_text(m) for m in members) else _plain(node)
    if isinstance(node, yaml.SequenceNode):
        for m in members:
            if get_origin(m) in (list, tuple, set, frozenset, Sequence):
                args = get_args(m)
                item = args[0] if args else None
                return [_construct(child, item) for child in node.value]
        return _plain(node)
    if isinstance(node, yaml.MappingNode):
        for m in members:
            if isinstance(m, type) and issubclass(m, BaseModel):
                out = {}
                for k, v in node.value:
                    name = _plain(k)
                    out[name] = _construct(v, _child_type(m, str(name)))
                return out
            if get_origin(m) in (dict, Mapping):
                args = get_args(m)
                kt, vt = args if len(args) == 2 else (None, None)
                return {(k.value if kt is str and isinstance(k, yaml.ScalarNode) else _plain(k)): _construct(v, vt)
                        for k, v in node.value}
    return _plain(node)


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``key=value`` override set (nested keys by dots); with the config class
    ``cls``, string-typed values keep the text typed (see :func:`parse_override`)."""
    out = _deepcopy(data)
    for item in overrides:
        path, value = parse_override(item, cls)
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


def read_yaml(path: str | Path) -> Any:
    """The YAML document in the file ``path``; a syntax error is a ConfigError of one line naming the file, line and
    column (``jobs/configs/x.yaml:4:7: YAML syntax error: ...``), not a traceback about ``"<unicode string>"``."""
    text = Path(path).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) \
            or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides; raise ConfigError naming keys."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides or [], cls)
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


_INVOKED_AS: str | None = None  # what the person typed before the job's arguments, when it was not `python -m jobs.X`


def set_invoked_as(command: str | None) -> None:
    """Record the command that runs the job (``docrerank build``), so messages repeat what the person typed."""
    global _INVOKED_AS
    _INVOKED_AS = command


def command_for(job: str) -> str:
    """The command that runs ``job`` as the person typed it: ``docrerank <name>`` under the ``docrerank`` command,
    ``python -m jobs.<job>`` otherwise."""
    return _INVOKED_AS or f"python -m jobs.{job}"


def parse_job_args(cls: type[C], argv: list[str] | None, prog: str, description: str) -> tuple[C, argparse.Namespace]:
    """Parse ``--config FILE [--address ADDR] [--plan] key=value ...`` into a validated config and the CLI namespace.

    ``--plan`` (``ns.plan``): the job prints its plan and problems instead of running (``core/plan.py``).

    Invalid configs exit with status 2 and a message naming the keys (no traceback). ``prog`` (``python -m
    jobs.<job>``) gives way to the ``docrerank`` command the person typed (:func:`set_invoked_as`).
    """
    prog = command_for(prog.rsplit(".", 1)[-1]) if prog.startswith("python -m jobs.") else prog
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
