"""The ingest job end to end on a local Ray: generated corpora with every kind of bad input, resume,
and the real PDFs of ../shared when present."""

import io
import json
import shutil

import pyarrow.dataset as pads
import pytest

from conftest import make_pdf
from docrerank.core.config import load_config
from docrerank.render.config import IngestConfig
from docrerank.render.run import run_ingest


def _cfg(inp, out, *extra):
    return load_config(IngestConfig, None, [f"input={inp}", f"output={out}", "num_workers=2", *extra])


def _table(out, name):
    return pads.dataset(str(out / name), format="parquet").to_table()


def _reasons(out):
    q = _table(out, "quarantine").to_pylist()
    return {(r["source_uri"].rsplit("/", 1)[1], r["page_number"]): r["error"] for r in q}


REASONS = {
    ("locked_bad.pdf", None): "encrypted",
    ("empty.pdf", None): "empty",
    ("junk.pdf", None): "not_a_document",
    ("memo_copy.pdf", None): "duplicate",
    ("__crash_me__.pdf", 2): "worker_crash",
    ("__hang_me__.pdf", 1): "timeout",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    make_pdf(d / "book.pdf", [(612, 792, f"Chapter page {i}") for i in range(1, 41)])
    make_pdf(d / "memo.pdf", [(612, 792, "Memo: revenue 2021")])
    make_pdf(d / "slides.pdf", [(960, 540, "Slide one"), (960, 540, "Slide two")])
    make_pdf(d / "locked_ok.pdf", [(612, 792, "unlocked text")], password="s3cret")
    make_pdf(d / "locked_bad.pdf", [(612, 792, "never seen")], password="other")
    make_pdf(d / "__crash_me__.pdf", [(612, 792, "p1"), (612, 792, "p2"), (612, 792, "p3")])
    make_pdf(d / "__hang_me__.pdf", [(612, 792, "p1"), (612, 792, "p2")])
    (d / "empty.pdf").write_bytes(b"")
    (d / "junk.pdf").write_bytes(b"this is not a pdf at all\n" * 20)
    shutil.copy(d / "memo.pdf", d / "memo_copy.pdf")
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), "white").save(buf, "PNG")
    (d / "scan.png").write_bytes(buf.getvalue())
    return d


@pytest.mark.slow
def test_job_renders_quarantines_and_balances(ray_local, corpus, tmp_path, capsys):
    from jobs.ingest import main

    out = tmp_path / "out"
    assert main([f"input={corpus}", f"output={out}", "num_workers=2", "pages_per_task=8", "task_timeout_s=5",
                 "password_map={'locked_ok.pdf': s3cret}"]) == 0
    printed = capsys.readouterr().out
    assert f"ingest summary for {out}" in printed and "books balance" in printed
    assert "this run: 48 pages rendered in" in printed and str(out / "ingest_stats.json") in printed
    stats = json.loads((out / "ingest_stats.json").read_text())
    assert stats["balanced"] and stats["documents"]["input"] == 11
    assert _reasons(out) == REASONS
    pages = _table(out, "pages")
    got = {(r["source_uri"].rsplit("/", 1)[1], r["page_number"]) for r in pages.select(["source_uri", "page_number"]).to_pylist()}
    assert ("__crash_me__.pdf", 1) in got and ("__crash_me__.pdf", 3) in got and ("__hang_me__.pdf", 2) in got
    assert sum(1 for n, _ in got if n == "book.pdf") == 40
    assert pages.num_rows == len(set(pages.column("page_id").to_pylist())) == 40 + 1 + 2 + 1 + 2 + 1 + 1
    texts = {r["source_uri"].rsplit("/", 1)[1]: r["text"] for r in pages.select(["source_uri", "text"]).to_pylist()}
    assert "unlocked text" in texts["locked_ok.pdf"]
    # the 40-page book was split into bounded tasks
    assert stats["this_run"]["tasks"] >= 40 // 8
    assert stats["pages"] == {"expected": 50, "written": 48, "quarantined": 2,
                              "quarantined_by_reason": {"timeout": 1, "worker_crash": 1}}
    meta = json.loads((out / "_meta" / "ingest.json").read_text())
    assert meta["config"]["password_map"] == "***" and "s3cret" not in (out / "_meta" / "ingest.json").read_text()
    assert meta["docrerank_version"] and "git_commit" in meta and meta["summary"]["balanced"]


@pytest.mark.slow
def test_resume_skips_done_work_and_never_duplicates(ray_local, corpus, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(corpus, out, "pages_per_task=8", "task_timeout_s=5", "password_map={'locked_ok.pdf': s3cret}",
               "probe_local_max=0")  # the workers probe, not the driver
    first = run_ingest(cfg)
    assert first["balanced"] and _reasons(out) == REASONS and first["this_run"]["documents_opened"] == 7
    assert not (out / "_meta").exists()  # the library records nothing: the job does (runtime.run_job)
    ids = sorted(_table(out, "pages").column("page_id").to_pylist())
    again = run_ingest(cfg)
    assert again["this_run"]["tasks"] == 0 and again["this_run"]["new_inputs"] == 0
    # simulate a run killed mid-way: one task's pages shard is lost, and a stray quarantine shard is left
    quarantined = _table(out, "quarantine").num_rows
    shard = sorted((out / "pages").glob("part-*.parquet"))[0]
    lost = pads.dataset(str(shard), format="parquet").count_rows()
    shard.unlink()
    (out / "quarantine" / shard.name).write_bytes(next((out / "quarantine").glob("probe-*.parquet")).read_bytes())
    third = run_ingest(cfg)
    assert third["balanced"] and third["this_run"]["pages_rendered"] == lost > 0
    assert sorted(_table(out, "pages").column("page_id").to_pylist()) == ids
    assert _table(out, "quarantine").num_rows == quarantined  # the stray shard was removed, nothing doubled
    with pytest.raises(ValueError, match="resume=false"):
        run_ingest(_cfg(corpus, out, "resume=false"))


@pytest.mark.slow
def test_real_pdfs(ray_local, shared_pdfs, tmp_path):
    out = tmp_path / "out"
    stats = run_ingest(_cfg(shared_pdfs, out, "passwords=[test]"))
    assert stats["balanced"]
    reasons = _reasons(out)
    assert reasons[("bad__empty_0bytes.pdf", None)] == "empty"
    assert reasons[("bad__invalid_not_pdf.pdf", None)] == "corrupt"
    assert reasons[("bad__poppler-67295-0.pdf", None)] == "corrupt"
    assert reasons[("bad__pages_tree_cycle.pdf", 2)] == "corrupt"
    assert len(reasons) == 4, reasons  # everything else renders, encrypted one included (password given)
    pages = _table(out, "pages").select(["source_uri", "page_number", "width", "height", "text"]).to_pylist()
    by = {}
    for r in pages:
        by.setdefault(r["source_uri"].rsplit("/", 1)[1], []).append(r)
    assert len(by["enc__rc4_pw_test.pdf"]) == 4 and any(r["text"].strip() for r in by["enc__rc4_pw_test.pdf"])
    assert len(by["report_fin__10Q_NVDA_2023Q1.pdf"]) == 49
    assert all(r["width"] * r["height"] <= 802_816 for r in pages)
    poster = by["large__poster_18000x36000.pdf"][0]
    assert abs(poster["height"] / poster["width"] - 2) < 0.01
    readable = {p.name for p in shared_pdfs.glob("*.pdf")} - {"bad__empty_0bytes.pdf", "bad__invalid_not_pdf.pdf", "bad__poppler-67295-0.pdf"}
    assert set(by) == readable


def test_the_pool_feeds_only_workers_that_started(ray_local, corpus, tmp_path):
    from dataclasses import asdict

    from docrerank.render.pool import WorkerPool
    from docrerank.render.document import Passwords, RenderSettings

    kwargs = {"output": str(tmp_path), "passwords": asdict(Passwords()), "settings": asdict(RenderSettings()),
              "memory_mb": 2048, "timeout_s": 60.0}
    pool = WorkerPool(3, kwargs)  # the test cluster has 2 CPUs: the third worker cannot be placed
    try:
        files = ["memo.pdf", "slides.pdf", "book.pdf", "empty.pdf", "junk.pdf"]
        got = dict(pool.map("probe", [([str(corpus / f)],) for f in files]))
        assert sorted(got) == [0, 1, 2, 3, 4]  # done, though one worker never started
        assert 1 <= len(pool._ready) <= 2 and len(pool._starting) >= 1
        assert [got[k][0]["doc"]["num_pages"] for k in range(3)] == [1, 2, 40]
        assert [got[k][0]["quarantine"]["error"] for k in (3, 4)] == ["empty", "not_a_document"]
    finally:
        pool.close()


def test_ingest_asks_an_autoscaling_cluster_for_the_planned_workers(ray_local, corpus, tmp_path):
    """An autoscale-from-zero cluster has no CPU now (the head has CPU: 0): the ingest asks for a worker per task up
    to what the autoscaler can add, not for the CPUs present (which gave one worker)."""
    from dataclasses import asdict

    from docrerank.core.plan import Resources
    from docrerank.render.pool import WorkerPool
    from docrerank.render.document import Passwords, RenderSettings
    from docrerank.render.run import UNKNOWN_GROWTH_WORKERS, planned_workers

    from_zero = Resources(cpus=0, gpus=0, source="test", max_cpus=320, max_gpus=16)
    assert planned_workers(from_zero, tasks=50) == 50 and planned_workers(from_zero, tasks=1000) == 320
    assert planned_workers(Resources(0, 0, "test", grows=True), 1000) == UNKNOWN_GROWTH_WORKERS
    assert planned_workers(Resources(2, 0, "test"), 50) == 2  # a fixed cluster: its CPUs
    assert planned_workers(Resources(0, 0, "test"), 0) == 1

    kwargs = {"output": str(tmp_path), "passwords": asdict(Passwords()), "settings": asdict(RenderSettings()),
              "memory_mb": 2048, "timeout_s": 60.0}
    pool = WorkerPool(1, kwargs)
    try:
        pool.grow(1)  # the planned workers join the pool as the cluster places them
        assert len(pool.actors) == 2
        files = ["memo.pdf", "slides.pdf", "empty.pdf"]
        got = dict(pool.map("probe", [([str(corpus / f)],) for f in files]))
        assert sorted(got) == [0, 1, 2] and len(pool._ready) + len(pool._starting) == 2  # the 2nd: up or pending
    finally:
        pool.close()
