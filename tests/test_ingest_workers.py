"""The ingest worker without Ray: a task is one call to the isolated child, which writes the shards; a task that
fails is rendered one page per call so only the bad page is lost; an unwritable output fails loudly."""

from dataclasses import asdict

import pyarrow.parquet as pq
import pytest

from conftest import make_pdf
from docrerank.render.document import Passwords, RenderSettings
from docrerank.render.workers import IngestWorker

TASK = "docrerank.render.child:render_task"
PAGES = "docrerank.render.child:render_pages"


@pytest.fixture
def worker_for(tmp_path):
    made = []

    def make(output):
        w = IngestWorker(output=str(output), passwords=asdict(Passwords()), settings=asdict(RenderSettings(dpi=36)),
                         memory_mb=2048, timeout_s=60.0)
        calls = []
        real = w.worker.call
        w.worker.call = lambda target, *a, **kw: calls.append(target) or real(target, *a, **kw)
        made.append(w)
        return w, calls

    yield make
    for w in made:
        w.close()


def _task(worker, docs):
    """Probe ``docs`` with the worker and pack all their pages into one task."""
    rows = [r["doc"] for r in worker.probe([str(d) for d in docs])]
    return [{"doc": r, "pages": list(range(1, r["num_pages"] + 1))} for r in rows]


def test_a_task_is_one_call_and_the_child_writes_its_shards(tmp_path, worker_for):
    a = make_pdf(tmp_path / "a.pdf", [(612, 792, f"alpha page {i}") for i in range(1, 4)])
    b = make_pdf(tmp_path / "b.pdf", [(300, 300, "beta")])
    out = tmp_path / "out"
    w, calls = worker_for(out)
    items = _task(w, [a, b])
    calls.clear()
    summary = w.render("t1", items)
    assert calls == [TASK]  # the images never came back over the pipe: no per-page calls
    assert summary["pages"] == 4 and summary["quarantined"] == {} and summary["image_bytes"] > 0
    table = pq.read_table(out / "pages" / "part-t1.parquet")
    got = sorted(zip(table.column("source_uri").to_pylist(), table.column("page_number").to_pylist()))
    assert got == sorted([(str(a), 1), (str(a), 2), (str(a), 3), (str(b), 1)])
    assert sum(len(x) for x in table.column("image").to_pylist()) == summary["image_bytes"]
    assert "alpha page 2" in table.column("text").to_pylist()[got.index((str(a), 2))]
    assert not (out / "quarantine").exists()


def test_a_crashing_page_costs_only_itself(tmp_path, worker_for):
    # conftest's fault injection: the child segfaults on page 2 of files named __crash_me__
    bad = make_pdf(tmp_path / "__crash_me__.pdf", [(612, 792, f"p{i}") for i in range(1, 4)])
    good = make_pdf(tmp_path / "good.pdf", [(612, 792, "fine")])
    out = tmp_path / "out"
    w, calls = worker_for(out)
    items = _task(w, [bad, good])
    calls.clear()
    summary = w.render("t2", items)
    assert calls == [TASK] + [PAGES] * 4 and w.worker.restarts == 2  # the task, then page by page
    assert summary["pages"] == 3 and summary["quarantined"] == {"worker_crash": 1}
    pages = pq.read_table(out / "pages" / "part-t2.parquet").select(["source_uri", "page_number"]).to_pylist()
    assert sorted((r["source_uri"].rsplit("/", 1)[1], r["page_number"]) for r in pages) == [
        ("__crash_me__.pdf", 1), ("__crash_me__.pdf", 3), ("good.pdf", 1)]
    q = pq.read_table(out / "quarantine" / "part-t2.parquet").to_pylist()
    assert [(r["page_number"], r["error"], r["stage"]) for r in q] == [(2, "worker_crash", "render")]


def test_an_unwritable_output_fails_loudly(tmp_path, worker_for):
    a = make_pdf(tmp_path / "a.pdf", [(612, 792, "a")])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    w, _ = worker_for(blocker / "out")
    with pytest.raises(RuntimeError, match="writing shard part-t4.parquet"):
        w.render("t4", _task(w, [a]))
