"""An hf engine inside a Ray actor: stages chained by class (``core.raydata.ChainStage``) on a local Ray (2 CPUs).

The stage class below is shaped like the pipelines' stages: it builds its engine once per actor and turns each batch's
rows into requests and results into columns. ``ray_local`` is the session fixture of ``conftest.py``.
"""

from __future__ import annotations

import io
import sys

import pytest

from docrerank.core.raydata import ChainStage, batch_format_of, batch_rows, rows_to_columns
from docrerank.engines import GenerateRequest, JudgeRequest, SamplingParams, build_engine, error_kind, user

PROMPT = "Can this page answer the question? Yes or No. "


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 84), (seed * 40 % 255, 30, 60)).save(buf, format="PNG")
    return buf.getvalue()


def to_request(row: dict, task: str):
    """A row's request: pipelines build requests from their own columns."""
    msgs = [user(row["page"], PROMPT + row["query"])]
    if task == "judge":
        return JudgeRequest(msgs, id=row["id"])
    return GenerateRequest(msgs, SamplingParams(max_tokens=6), id=row["id"])


class EngineStage:
    """One engine per actor; judge or generate every row of a batch, results added as columns."""

    def __init__(self, engine: dict, task: str):
        self.engine, self.task = build_engine(engine), task

    def __call__(self, batch) -> dict:
        rows = batch_rows(batch)
        reqs = [to_request(r, self.task) for r in rows]
        if self.task == "judge":
            for row, res in zip(rows, self.engine.judge(reqs)):
                row.update(p_yes=res.p_yes, judge_error=res.error, judge_method=res.method)
        else:
            for row, res in zip(rows, self.engine.generate(reqs)):
                row.update(text=res.text, gen_error=res.error, completion_tokens=res.completion_tokens)
        return rows_to_columns(rows)


def test_batch_rows_converts_numpy():
    import numpy as np

    rows = batch_rows({"a": np.array([1, 2]), "b": np.array([np.array([1.5]), np.array([2.5])], dtype=object)})
    assert rows == [{"a": 1, "b": [1.5]}, {"a": 2, "b": [2.5]}]


@pytest.mark.slow
def test_hf_engine_judges_and_generates_in_a_ray_actor(ray_local, tmp_path):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    ray = ray_local
    # The stage class lives in this test module, which Ray workers cannot import: send it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    engine = {"backend": "hf", "model": str(make_tiny_qwen2_vl(tmp_path / "vl")), "batch_size": 4,
              "hf": {"device": "cpu", "local_files_only": True}}
    rows = [{"id": f"{p}:{q}", "page": png(p), "query": q}
            for p in (1, 2) for q in ("What is the revenue?", "Which year?", "Who?")]
    rows.append({"id": "junk", "page": b"not an image", "query": "Who?"})
    stages = [(EngineStage, {"engine": engine, "task": "judge"}), (EngineStage, {"engine": engine, "task": "generate"})]
    out = ray.data.from_items(rows).map_batches(
        ChainStage, fn_constructor_kwargs={"stages": stages}, batch_size=len(rows), concurrency=1, num_cpus=1,
        batch_format=batch_format_of(stages)).take_all()
    by_id = {r["id"]: r for r in out}
    assert sorted(by_id) == sorted(r["id"] for r in rows)
    # one undecodable page fails its own requests, not the batch
    junk = by_id.pop("junk")
    assert error_kind(junk["judge_error"]) == "bad_input" and error_kind(junk["gen_error"]) == "bad_input"
    assert all(r["judge_error"] is None and r["judge_method"] == "logits" and 0 < r["p_yes"] < 1
               for r in by_id.values())
    assert len({round(r["p_yes"], 6) for r in by_id.values()}) == 6
    assert all(0 < r["completion_tokens"] <= 6 for r in by_id.values())

    # the actor's answers are the in-process engine's
    local = build_engine(engine)
    ok = [r for r in rows if r["id"] != "junk"]
    judged = local.judge([to_request(r, "judge") for r in ok])
    generated = local.generate([to_request(r, "generate") for r in ok])
    for row, j, g in zip(ok, judged, generated):
        assert by_id[row["id"]]["p_yes"] == pytest.approx(j.p_yes, abs=2e-5)
        assert by_id[row["id"]]["text"] == g.text
