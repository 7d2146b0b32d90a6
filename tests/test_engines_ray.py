"""The Ray Data stage on a local Ray (2 CPUs): engines as map_batches actors, one bad row never fails a batch.

``ray_local`` is the session fixture of ``conftest.py`` (``ray.init(num_cpus=2)``).
"""

from __future__ import annotations

import io
import math

import pytest

from docrerank.engines import EngineConfig, system, user
from docrerank.engines.messages import to_plain_dicts
from docrerank.engines.ray_stage import EngineStage, batch_rows, engine_stage
from docrerank.testing.openai_server import FakeOpenAIServer

SCHEMA = {"type": "object", "required": ["queries"]}


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 84), (seed * 40 % 255, 30, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_stage_call_without_ray():
    # The actor class is plain Python: a batch in, the same batch plus result columns out.
    with FakeOpenAIServer() as srv:
        stage = EngineStage({"backend": "http", "model": "m", "http": {"base_url": srv.url, "max_retries": 0}})
        batch = {"messages": [to_plain_dicts([user("q p=0.25")]), [], to_plain_dicts([user("q p=0.5")])],
                 "id": ["a", "b", "c"]}
        out = stage(batch)
    assert out["id"] == ["a", "b", "c"]
    assert out["p_yes"][0] == pytest.approx(0.25) and out["p_yes"][2] == pytest.approx(0.5)
    assert math.isnan(out["p_yes"][1]) and out["judge_error"][1].startswith("bad_input")
    assert out["judge_error"][0] is None and out["judge_method"][0] == "logprobs"
    with pytest.raises(ValueError, match="task"):
        EngineStage({"backend": "http", "model": "m"}, task="classify")


def test_batch_rows_converts_numpy():
    import numpy as np

    rows = batch_rows({"a": np.array([1, 2]), "b": np.array([np.array([1.5]), np.array([2.5])], dtype=object)})
    assert rows == [{"a": 1, "b": [1.5]}, {"a": 2, "b": [2.5]}]


def test_judge_and_generate_stages_on_local_ray(ray_local):
    ray = ray_local
    rows = [{"id": f"r{i}", "messages": to_plain_dicts([system("Check pages."), user(png(i), f"Answer? p=0.{i + 1}")])}
            for i in range(6)]
    with FakeOpenAIServer() as srv:
        cfg = EngineConfig(backend="http", model="m", http={"base_url": srv.url, "max_retries": 0},
                           ray={"concurrency": 1, "batch_size": 4, "num_cpus": 1})
        judged = engine_stage(ray.data.from_items(rows), cfg, task="judge").take_all()
        generated = engine_stage(ray.data.from_items(rows[:3]), cfg, task="generate", sampling={"max_tokens": 32},
                                 json_schema=SCHEMA).take_all()
    by_id = {r["id"]: r for r in judged}
    assert len(by_id) == 6
    for i in range(6):
        assert by_id[f"r{i}"]["p_yes"] == pytest.approx((i + 1) / 10)
        assert by_id[f"r{i}"]["judge_error"] is None
    assert all(r["gen_error"] is None for r in generated)
    assert {r["parsed_json"] for r in generated} == {'[{"queries": ["what is the revenue in 2021"]}]'}
    assert all(r["prompt_tokens"] > 0 for r in generated)


def test_hf_engine_in_a_ray_actor(ray_local, tmp_path):
    from docrerank.testing.tiny_models import make_tiny_qwen2_vl

    ray = ray_local
    path = make_tiny_qwen2_vl(tmp_path / "vl")
    rows = [{"page": png(p), "query": q} for p in (1, 2) for q in ("What is the revenue?", "Which year?", "Who?")]

    def to_request(row):  # pipelines build requests from their own columns
        from docrerank.engines import JudgeRequest, user as u

        return JudgeRequest([u(row["page"], "Can this page answer the question? Yes or No. " + row["query"])])

    cfg = EngineConfig(backend="hf", model=str(path), hf={"device": "cpu", "local_files_only": True},
                       ray={"concurrency": 1, "batch_size": 6, "num_cpus": 1})
    out = engine_stage(ray.data.from_items(rows), cfg, task="judge", request_fn=to_request).take_all()
    assert len(out) == 6 and all(r["judge_error"] is None and 0 < r["p_yes"] < 1 for r in out)
    assert all(r["judge_method"] == "logits" for r in out)
    assert len({round(r["p_yes"], 6) for r in out}) == 6
