"""The build with real model calls: tiny random-weight Qwen2-VL (positives, verification) and a tiny causal LM
(negatives) through the hf engine, on a local Ray. Random weights write junk: the point is that every call
really runs, junk is rejected with a reason and counted, and every page still ends with a status."""

import json

import pyarrow.dataset as pads
import pytest

from docrerank.build.run import run_build
from docrerank.core.config import load_config
from docrerank.build.config import BuildConfig

pytestmark = pytest.mark.slow  # the build with real (tiny) model calls on Ray


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("transformers")
    from docrerank.models.tiny import make_tiny_causal_lm, make_tiny_qwen2_vl

    d = tmp_path_factory.mktemp("models")
    return str(make_tiny_qwen2_vl(d / "vlm")), str(make_tiny_causal_lm(d / "lm"))


def _engine(path, **kw):
    # random weights write junk, so every positives request fails: the failed-requests rule is off here
    return {"backend": "hf", "model": path, "max_pixels": 200_704, "ray": {"num_cpus": 0.2, "max_error_share": 1}, **kw}


def test_build_with_tiny_models(ray_local, models, tmp_path):
    vlm, lm = models
    out = tmp_path / "out"
    overrides = [
        f"output={out}", "input=sample:1", "ingest.render.max_pixels=200704",
        "ingest.password_map={'confidential_*.pdf': sample}",
        f"positives.engine={json.dumps(_engine(vlm))}", "positives.num_candidates=2", "positives.max_tokens=24",
        f"verify.engine={json.dumps(_engine(vlm))}", "verify.threshold=0.001", "verify.prefilter=none",
        "verify.reverify_given=true",
        f"negatives.engine={json.dumps(_engine(lm))}", "negatives.max_tokens=24", "negatives.mode=general",
    ]
    stats = run_build(load_config(BuildConfig, None, overrides))
    status = pads.dataset(str(out / "page_status")).to_table().to_pylist()
    assert len(status) == stats["pages"]["processed"] == 13  # 3 reports x 4 pages + the 1-page encrypted pack
    # the page without given questions went to the VLM, whose random output is rejected, with the reason
    board = [s for s in status if any(e.startswith("positives: ") for e in json.loads(s["errors"]))]
    assert len(board) == 1 and all(s["status"] == "no_positive" for s in board)
    m = stats["stages"]
    assert m["positives"]["requests"] == pytest.approx(1) and m["positives"]["prompt_tokens"] > 100
    # given positives were judged by the VLM with both prompts: real probabilities from the logits
    q = pads.dataset(str(out / "queries")).to_table().to_pylist()
    pos = [r for r in q if r["role"] == "positive"]
    assert len(pos) == 12 and all(0 < r["p_answerable_a"] < 1 and 0 < r["p_answerable_b"] < 1 for r in pos)
    assert m["verify_positives"]["requests"] == pytest.approx(24)
    # the causal LM was asked for negatives of every kept positive; junk became counted errors, not crashes
    # (threshold 0.001: every positive passes verification; it is dropped later only if no negative survives)
    kept = [r for r in pos if r["verdict"] == "kept" or r["reason"].startswith("too_few_negatives")]
    assert len(kept) == 12 and m["negatives"]["requests"] == pytest.approx(len(kept))
    errs = sum(v for k, v in m["negatives"].items() if k.startswith("error:"))
    negs = [r for r in q if r["role"] == "negative"]
    assert errs + len({r["parent_id"] for r in negs}) >= len(kept)
    for r in negs:  # whatever did parse went through dedup and the verifier like any candidate
        assert r["verdict"] in ("kept", "rejected") and r["prompt_version"] == "negatives-general-v1"
