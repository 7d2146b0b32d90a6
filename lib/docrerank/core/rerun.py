"""A rerun that refuses to lie: a job that resumes into its output compares its settings with the run recorded there.

A job that resumes (``Config.resume_marker``) keeps what an earlier run finished and does only the rest. Run again
with a setting that changes the data (``select.k=1`` over a finished ``k=3`` build), it would keep every finished
page as the old setting made it, add nothing, and write a card describing data it did not produce. So before it
writes anything, ``run_job`` compares the config with the one in ``<output>/_meta/<job>.json``; when the output
already holds finished work and a setting outside ``Config.run_only_keys`` differs, the job stops and says which
settings, what it would keep, and what to do. Keys one run has and the other lacks (a field added in a newer
version) are not compared; secrets are compared redacted (a changed password changes no data).
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from docrerank.core import storage


class RerunRefused(ValueError):
    """The output holds finished work made with other settings; the message says which and what to do."""


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(obj, dict) or not obj:
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_settings(previous: dict, current: dict, run_only: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, before, now)`` of every setting both configs have that differs, run-only keys left out."""
    before, now = flatten(previous), flatten(current)
    out = []
    for key in sorted(before.keys() & now.keys()):
        if before[key] == now[key] or any(fnmatch.fnmatchcase(key, pat) for pat in run_only):
            continue
        out.append((key, before[key], now[key]))
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_rerun(out: storage.Location, job: str, config: Any, recorded: dict | None, current: dict) -> None:
    """Raise RerunRefused when ``out`` holds ``job``'s finished work made with data-changing settings other than
    ``config``'s; ``recorded``: the ``_meta/<job>.json`` found there (None: none); ``current``: ``config`` as that
    file records it (``runtime.run_metadata``'s ``config``: a JSON dump with secrets redacted)."""
    marker = getattr(type(config), "resume_marker", None)
    if marker is None or not recorded or "config" not in recorded:
        return
    resume_key = getattr(type(config), "resume_key", None)
    if resume_key and not getattr(config, resume_key):
        return  # the job redoes everything
    done = storage.list_files(out.join(marker), suffixes=(".parquet",))
    if not done:
        return  # nothing finished: the earlier run's settings made no data
    diffs = changed_settings(recorded["config"], current, getattr(type(config), "run_only_keys", ()))
    if not diffs:
        return
    what = ", ".join(f"{k}: {_short(a)} then, {_short(b)} now" for k, a, b in diffs)
    when = recorded.get("finished") or f"{recorded.get('started', '?')}, not finished"
    raise RerunRefused(
        f"{out.uri} holds {len(done)} finished {marker} shard(s) of an earlier {job} run ({when}) made with other "
        f"settings ({what}). A rerun keeps that work as it is and does only the rest, so the output would mix both "
        f"settings and its card would describe data this run did not make: nothing was changed. Write to a new "
        f"output, run with the earlier settings to finish it, or remove {out.uri} to redo it all with these.")
