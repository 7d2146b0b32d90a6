"""Ray Data stage: any engine as an actor class for ``Dataset.map_batches``.

    ds = engine_stage(ds, cfg, task="judge")           # adds p_yes, judge_error, judge_method
    ds = engine_stage(ds, cfg, task="generate", sampling={"max_tokens": 64}, json_schema=SCHEMA)

Each actor builds its engine once (``__init__``) and answers whole batches (``__call__``); concurrency,
GPUs and CPUs per actor and the batch size come from ``cfg.ray``. Rows become requests through
``request_fn(row)``; the default reads a ``messages`` column (``messages.to_plain_dicts`` format, images as
bytes) and optional ``yes``/``no``/``id``/``json_schema`` columns. A row whose request cannot be built gets
a ``bad_input`` error in its output columns; nothing raises for one bad row.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional

from docrerank.engines import build_engine
from docrerank.engines.base import (
    EngineConfig,
    GenerateRequest,
    GenerateResult,
    JudgeRequest,
    JudgeResult,
    SamplingParams,
    make_error,
)

TASKS = ("judge", "generate")


def to_python(value: Any) -> Any:
    """Numpy arrays / scalars from a Ray batch -> plain lists, dicts and Python scalars (recursively)."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value


def batch_rows(batch: dict) -> list[dict]:
    """A column batch (dict of arrays/lists) -> a list of row dicts."""
    cols = list(batch)
    n = len(batch[cols[0]]) if cols else 0
    return [{c: to_python(batch[c][i]) for c in cols} for i in range(n)]


def judge_request_from_row(row: dict) -> JudgeRequest:
    """Default row -> JudgeRequest: ``messages``, optional ``yes``, ``no``, ``id``."""
    if "messages" not in row:
        raise ValueError(f"row has no 'messages' column (columns: {sorted(row)}); pass request_fn")
    return JudgeRequest(row["messages"], yes=row.get("yes") or "Yes", no=row.get("no") or "No", id=row.get("id"))


def generate_request_from_row(row: dict, sampling: Optional[SamplingParams] = None,
                              json_schema: Optional[dict] = None) -> GenerateRequest:
    """Default row -> GenerateRequest: ``messages``, optional ``json_schema`` (dict or JSON text), ``id``."""
    if "messages" not in row:
        raise ValueError(f"row has no 'messages' column (columns: {sorted(row)}); pass request_fn")
    schema = row.get("json_schema") or json_schema
    if isinstance(schema, str):
        schema = json.loads(schema)
    return GenerateRequest(row["messages"], sampling=sampling or SamplingParams(), json_schema=schema, id=row.get("id"))


def judge_columns(results: list[Optional[JudgeResult]], errors: dict, prefix: str = "") -> dict:
    """Output columns of a judge batch: p_yes (NaN on error), judge_error, judge_method."""
    p, err, method = [], [], []
    for i, r in enumerate(results):
        e = errors.get(i) or (r.error if r else None)
        p.append(r.p_yes if r is not None and r.p_yes is not None and e is None else math.nan)
        err.append(e)
        method.append(r.method if r is not None else "")
    return {f"{prefix}p_yes": p, f"{prefix}judge_error": err, f"{prefix}judge_method": method}


def generate_columns(results: list[Optional[GenerateResult]], errors: dict, prefix: str = "") -> dict:
    """Output columns of a generate batch: text, texts, parsed_json (JSON text), gen_error, token counts."""
    cols: dict[str, list] = {k: [] for k in ("text", "texts", "parsed_json", "gen_error", "prompt_tokens",
                                             "completion_tokens")}
    for i, r in enumerate(results):
        e = errors.get(i) or (r.error if r else None)
        cols["text"].append(r.text if r else "")
        cols["texts"].append(list(r.texts) if r else [])
        cols["parsed_json"].append(json.dumps(r.parsed) if r is not None and r.parsed is not None else None)
        cols["gen_error"].append(e)
        cols["prompt_tokens"].append(r.prompt_tokens if r else 0)
        cols["completion_tokens"].append(r.completion_tokens if r else 0)
    return {prefix + k: v for k, v in cols.items()}


class EngineStage:
    """Callable class for ``map_batches``: one engine per actor, judge or generate over each batch."""

    def __init__(
        self,
        engine_config: dict,
        task: str = "judge",
        request_fn: Optional[Callable[[dict], Any]] = None,
        sampling: Optional[dict] = None,
        json_schema: Optional[dict] = None,
        prefix: str = "",
    ):
        if task not in TASKS:
            raise ValueError(f"task: got {task!r}, expected one of {TASKS}")
        self.cfg = EngineConfig.model_validate(engine_config)
        self.task, self.prefix = task, prefix
        if request_fn is None:
            params = SamplingParams(**(sampling or {}))
            request_fn = judge_request_from_row if task == "judge" else (
                lambda row: generate_request_from_row(row, params, json_schema))
        self.request_fn = request_fn
        self.engine = build_engine(self.cfg)

    def __call__(self, batch: dict) -> dict:
        rows = batch_rows(batch)
        requests, where, errors = [], [], {}
        for i, row in enumerate(rows):
            try:
                requests.append(self.request_fn(row))
                where.append(i)
            except (ValueError, TypeError, KeyError) as err:
                errors[i] = make_error("bad_input", str(err)[:300])
        answers = (self.engine.judge if self.task == "judge" else self.engine.generate)(requests) if requests else []
        results: list[Any] = [None] * len(rows)
        for i, r in zip(where, answers):
            results[i] = r
        cols = (judge_columns if self.task == "judge" else generate_columns)(results, errors, self.prefix)
        out = {k: batch[k] for k in batch}
        out.update(cols)
        return out


def engine_stage(
    ds: Any,
    cfg: EngineConfig,
    task: str = "judge",
    request_fn: Optional[Callable[[dict], Any]] = None,
    sampling: Optional[dict] = None,
    json_schema: Optional[dict] = None,
    prefix: str = "",
) -> Any:
    """``ds.map_batches(EngineStage, ...)`` with concurrency, GPUs, CPUs and batch size from ``cfg.ray``."""
    return ds.map_batches(
        EngineStage,
        fn_constructor_kwargs=dict(engine_config=cfg.model_dump(), task=task, request_fn=request_fn,
                                   sampling=sampling, json_schema=json_schema, prefix=prefix),
        batch_size=cfg.ray.batch_size,
        concurrency=cfg.ray.concurrency,
        num_gpus=cfg.ray.num_gpus or None,
        num_cpus=cfg.ray.num_cpus,
        batch_format="numpy",
    )
