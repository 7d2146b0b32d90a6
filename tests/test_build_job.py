"""The dataset build end to end on a local Ray: the local default, outputs, query-page input, faults, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from docrerank.build.run import run_build
from docrerank.core.config import load_config
from docrerank.build.config import BuildConfig

pytestmark = pytest.mark.slow  # the dataset build end to end on Ray, with killed drivers and workers (minutes)

REPO = Path(__file__).resolve().parent.parent


def _cfg(out, *extra):
    return load_config(BuildConfig, REPO / "jobs/configs/build_local.yaml", [f"output={out}", "input=sample:2", *extra])


def _table(out, name, columns=None):
    return pads.dataset(str(Path(out) / name), format="parquet").to_table(columns=columns)


def _rows(out, name, columns):
    return sorted(tuple(r.values()) for r in _table(out, name, columns).to_pylist())


@pytest.fixture(scope="module")
def built(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "out"
    return out, run_build(_cfg(out))


def test_local_default_outputs(built):
    out, stats = built
    assert "weight" not in _table(out, "examples").column_names  # the loss weighs positives (loss.positive_weight)
    ex = _table(out, "examples").to_pylist() + _table(out, "examples_heldout").to_pylist()
    held_docs = {r["page_id"].split("-p")[0] for r in _table(out, "examples_heldout", ["page_id"]).to_pylist()}
    train_docs = {r["page_id"].split("-p")[0] for r in _table(out, "examples", ["page_id"]).to_pylist()}
    assert held_docs and train_docs and not held_docs & train_docs  # split by document, never by page
    assert stats["heldout_groups"] == 4 * len(held_docs)
    groups = {}
    for r in ex:
        groups.setdefault(r["group_id"], []).append(r)
    assert len(groups) == stats["groups"] == 2 * 3 * 4  # 2 companies x 3 years x 4 given questions
    for rows in groups.values():
        pos = [r for r in rows if r["label"] == 1]
        negs = [r for r in rows if r["label"] == 0]
        # 1 to k: with two companies in the corpus, "Where is X headquartered?" has one company to swap to
        assert len(pos) == 1 and 1 <= len(negs) <= 3 and len({r["page_id"] for r in rows}) == 1
        assert pos[0]["kind"] == "positive" and all(r["kind"] == "generated" for r in negs)
        assert all(n["query"] != pos[0]["query"] and n["attribute"] for n in negs)
        assert rows[0]["image"][:4] == b"\x89PNG"
    q = _table(out, "queries").to_pylist()
    assert {r["verdict"] for r in q} == {"kept", "rejected"} and all(r["reason"] for r in q if r["verdict"] == "rejected")
    assert all(r["prompt_version"] for r in q if r["role"] == "negative")
    assert stats["negatives"]["kept"] == len(ex) - len(groups)
    exp = _table(out, "export")
    assert exp.column_names == ["image", "positive_queries", "negative_queries", "answer"]
    lens = [len(n) for row in exp.column("negative_queries").to_pylist() for n in row]
    assert all(1 <= n <= 3 for n in lens) and sum(n == 3 for n in lens) >= len(lens) / 2
    card = (out / "card.md").read_text()
    assert "## Funnel" in card and "negative:" in card
    assert json.loads((out / "stats.json").read_text())["ingest"]["balanced"]
    assert stats["sources"]["pages"] == str(out / "pages")  # where jobs.mine_negatives will look


def test_negatives_are_hard_and_not_answerable(built):
    """Negatives look like their positive (same template, one attribute changed) yet the page lacks them."""
    from docrerank.lexical.text import char_similarity

    out, _ = built
    ex = _table(out, "examples", ["group_id", "query", "label", "text"]).to_pylist()
    pos = {r["group_id"]: r for r in ex if r["label"] == 1}
    sims = [char_similarity(r["query"], pos[r["group_id"]]["query"]) for r in ex if r["label"] == 0]
    assert min(sims) >= 0.5 and sum(sims) / len(sims) >= 0.7  # hard: same form, most words shared
    # ground truth: a year negative never names a year that the page's text shows
    for r in ex:
        if r["label"] == 0:
            for tok in r["query"].replace("?", "").split():
                if tok.isdigit() and len(tok) == 4 and tok not in pos[r["group_id"]]["query"]:
                    assert tok not in r["text"]


def test_rerun_is_a_no_op(built):
    out, stats = built
    before = _rows(out, "queries", ["query_id", "verdict", "reason"])
    again = run_build(_cfg(out))
    assert again["this_run"]["pages"] == 0 and again["this_run"]["resumed_pages"] == stats["pages"]["processed"]
    assert _rows(out, "queries", ["query_id", "verdict", "reason"]) == before


def test_query_page_set_input_starts_at_negatives(built, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, _ = built
    pages = _table(src, "pages", ["image", "text", "page_id"]).to_pylist()[:6]
    qp = tmp_path / "qp.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": p["image"], "text": p["text"],
                                          "positive_queries": ["What was the revenue of Norvalis Energy in 2021?"],
                                          "answer": ["x"]} for p in pages]), qp)
    out = tmp_path / "out"
    stats = run_build(load_config(BuildConfig, None, [f"output={out}", f"query_pages={qp}", "verify.max_positives=1"]))
    assert stats["pages"]["processed"] == 6 and stats["positives"]["by_origin"] == {"given": 6}
    assert _table(out, "pages").num_rows == 6  # the set's pages are written as a pages table too
    assert stats["sources"]["pages"] == str(out / "pages")


def _run_job(out, env_extra, wait_for=None):
    env = dict(os.environ, **env_extra)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.build_dataset", "--config", "jobs/configs/build_local.yaml",
           f"output={out}", "input=sample:2", "pages_per_batch=2", "num_workers=1"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    if wait_for is None:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
        return
    deadline = time.time() + 300
    while time.time() < deadline and not wait_for():
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-run
    p.wait()


def test_killed_driver_then_rerun_equals_uninterrupted(built, tmp_path):
    ref, _ = built
    out = tmp_path / "out"
    status = out / "page_status"
    _run_job(out, {"DOCRERANK_FAULT_INJECT": "sleep:select:0.5"},
             wait_for=lambda: status.is_dir() and len(list(status.glob("*.parquet"))) >= 2)
    done_before = len(_table(out, "page_status"))
    assert 0 < done_before < 24
    _run_job(out, {})
    cols = ["query_id", "text", "role", "verdict", "reason", "attribute"]
    assert _rows(out, "queries", cols) == _rows(ref, "queries", cols)
    assert _rows(out, "examples", ["group_id", "query", "label"]) == _rows(ref, "examples", ["group_id", "query", "label"])


def test_ctrl_c_then_rerun_equals_uninterrupted(built, tmp_path):
    """Ctrl-C (SIGINT to the driver) mid-run: exit status 130 and one line saying the same command resumes, no
    KeyboardInterrupt traceback; the same command then finishes the build to the uninterrupted output."""
    ref, _ = built
    out = tmp_path / "out"
    status = out / "page_status"
    env = dict(os.environ, DOCRERANK_FAULT_INJECT="sleep:select:0.5")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.build_dataset", "--config", "jobs/configs/build_local.yaml",
           f"output={out}", "input=sample:2", "pages_per_batch=2", "num_workers=1"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (status.is_dir() and len(list(status.glob("*.parquet"))) >= 2):
            time.sleep(0.5)
        p.send_signal(signal.SIGINT)  # the driver only, as a terminal's Ctrl-C reaches the foreground job
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    err = err.decode()
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "build_dataset interrupted: what finished is kept; resume with the same command" in err
    assert 0 < len(_table(out, "page_status")) < 24
    _run_job(out, {})
    assert _rows(out, "examples", ["group_id", "query", "label"]) == _rows(ref, "examples", ["group_id", "query", "label"])


def test_killed_worker_is_absorbed_by_retries(built, tmp_path):
    ref, _ = built
    out = tmp_path / "out"
    marker = tmp_path / "exited"
    _run_job(out, {"DOCRERANK_FAULT_INJECT": f"exit_once:negatives:{marker}"})
    assert marker.exists()  # a worker really died
    assert _rows(out, "examples", ["group_id", "query", "label"]) == _rows(ref, "examples", ["group_id", "query", "label"])
