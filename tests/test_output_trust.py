"""Outputs a user can trust: one writer per output directory (a lock that a crashed run does not leave behind), and a
rerun that refuses to mix settings into a finished output instead of skipping everything and rewriting its card."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _holder(out: Path) -> subprocess.Popen:
    """Another process holding ``out``'s lock, as a running job does."""
    code = ("import sys, time; from docrerank.core import lock; lock.acquire(sys.argv[1], 'build_dataset'); "
            "print('held', flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO / "lib")))
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_into_a_held_output_stops_naming_the_first(tmp_path, capsys):
    from docrerank.core import runtime
    from docrerank.render.config import IngestConfig

    out = tmp_path / "out"
    cfg = IngestConfig(input="a", output=str(out))
    ran = []
    p = _holder(out)
    try:
        assert runtime.run_job("ingest", cfg, lambda: ran.append(1) or {"x": 1}) is None
        err = capsys.readouterr().err.strip()
        assert not ran and len(err.splitlines()) == 1
        assert err.startswith(f"ingest cannot start: {out} is being written by another run: build_dataset, "
                              f"pid {p.pid} on {socket.gethostname()}, started ")
        assert "wait for it to finish, or write to another output" in err
        assert not (out / "_meta").exists()  # nothing written by the refused run
    finally:
        p.send_signal(signal.SIGKILL)  # a run that crashes: its lock goes with it
        p.wait()
    assert runtime.run_job("ingest", cfg, lambda: ran.append(1) or {"x": 1}) == {"x": 1} and ran == [1]
    # released at the end: another process takes it at once
    p = _holder(out)
    p.kill()
    p.wait()


def test_a_pipeline_holds_every_step_output_from_the_start(tmp_path, capsys):
    from jobs.pipeline import main

    first, out = tmp_path / "local", tmp_path / "mined"
    p = _holder(out)
    try:
        args = ["--config", str(REPO / "jobs/configs/pipeline_local.yaml"), "steps=[build, mine]",
                f"build.output={first}", f"mine.input={first}", f"mine.output={out}"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"pipeline failed: {out} is being written by another run: build_dataset, pid {p.pid}" in err
        assert not (first / "pages").exists()  # stopped before the first step ran
    finally:
        p.kill()
        p.wait()


def test_the_lock_is_reentrant_within_a_process_and_released_after_a_failure(tmp_path):
    """The pipeline holds outputs its steps write again (build, mine and analyse share out/local)."""
    from docrerank.core import lock, runtime
    from docrerank.render.config import IngestConfig

    out = tmp_path / "out"
    cfg = IngestConfig(input="a", output=str(out))
    inner = runtime.run_job("ingest", cfg, lambda: runtime.run_job("ingest", cfg, lambda: {"inner": 1}))
    assert inner == {"inner": 1}

    def fails():
        raise ValueError("bad input")

    assert runtime.run_job("ingest", cfg, fails) is None
    with pytest.raises(SystemExit):
        runtime.run_job("ingest", cfg, lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    assert not lock._held  # every path gave it back
    p = _holder(out)
    p.kill()
    p.wait()


def test_on_an_object_store_the_lock_is_a_file_with_a_heartbeat():
    """s3://, gs://: no lock primitive; a lock file whose heartbeat is fresh holds the output, a stale one (a run
    that crashed more than STALE_S ago) does not. pyarrow's in-memory filesystem stands in for the bucket."""
    from docrerank.core import lock, storage

    loc = storage.resolve("mock:///bucket/out")
    first = lock._acquire_object(loc, lock.holder_info("build_dataset"))
    with pytest.raises(lock.OutputLocked, match=r"mock:///bucket/out is being written by another run: build_dataset"):
        lock._acquire_object(loc, lock.holder_info("mine_negatives"))
    first()  # released: the file is gone
    assert not storage.exists(loc.join(lock.OBJECT_LOCK_FILE))
    crashed = {**lock.holder_info("build_dataset"), "heartbeat": time.time() - lock.STALE_S - 1}
    storage.write_bytes_atomic(loc.join(lock.OBJECT_LOCK_FILE), json.dumps(crashed).encode())
    release = lock._acquire_object(loc, lock.holder_info("build_dataset"))  # stale: taken over
    release()


# ------------------------------------------------------------------------------------------------ reruns
def _finished_build(tmp_path: Path, **settings) -> tuple[Path, dict]:
    """An output holding a finished build's page_status shard and its _meta record (as run_job writes them)."""
    import pyarrow.parquet as pq

    from docrerank.build.config import BuildConfig
    from docrerank.core import runtime
    from docrerank.core.schema import page_status_schema

    out = tmp_path / "out"
    cfg = BuildConfig.model_validate({"output": str(out), "input": "sample:", "positives": {"engine": "given"},
                                      **settings})
    (out / "page_status").mkdir(parents=True)
    pq.write_table(page_status_schema().empty_table(), out / "page_status" / "part-1.parquet")
    meta = runtime.run_metadata("build_dataset", cfg)
    meta["finished"] = "2026-12-07T10:00:00+00:00"
    runtime.write_run_metadata(runtime.storage.resolve(str(out)), meta)
    return out, meta


def test_a_rerun_with_a_data_setting_changed_is_refused_naming_it(tmp_path, capsys):
    from docrerank.build.config import BuildConfig
    from docrerank.core import runtime

    out, meta = _finished_build(tmp_path, select={"k": 3})
    ran = []
    cfg = BuildConfig.model_validate({"output": str(out), "input": "sample:", "positives": {"engine": "given"},
                                      "select": {"k": 1}, "num_workers": 2, "limit_pages": 5})
    assert runtime.run_job("build_dataset", cfg, lambda: ran.append(1) or {"x": 1}) is None
    err = capsys.readouterr().err.strip()
    assert not ran and len(err.splitlines()) == 1
    assert (f"build_dataset cannot start: {out} holds 1 finished page_status shard(s) of an earlier build_dataset "
            f"run (2026-12-07T10:00:00+00:00) made with other settings (select.k: 3 then, 1 now).") in err
    assert "num_workers" not in err and "limit_pages" not in err  # run-only settings may change
    assert "Write to a new output, run with the earlier settings to finish it, or remove" in err
    assert json.loads((out / "_meta" / "build_dataset.json").read_text()) == json.loads(json.dumps(meta))

    # the earlier settings (with run-only ones changed, and another input: more documents) resume
    same = cfg.model_copy(update={"select": cfg.select.model_copy(update={"k": 3}), "input": "sample:2"})
    assert runtime.run_job("build_dataset", same, lambda: ran.append(1) or {"x": 1}) == {"x": 1} and ran == [1]


def test_settings_changed_before_anything_finished_or_without_resuming_are_fine(tmp_path):
    from docrerank.core import rerun, runtime, storage
    from docrerank.rerank.config import RerankConfig

    out = tmp_path / "scores_out"
    cfg = RerankConfig(input="pairs", output=str(out), reranker={"path": "m1"})
    recorded = runtime.run_metadata("rerank", cfg)
    other = cfg.model_copy(update={"reranker": cfg.reranker.model_copy(update={"path": "m2"})})
    loc = storage.resolve(str(out))
    def now(c):
        return runtime.run_metadata("rerank", c)["config"]

    rerun.check_rerun(loc, "rerank", other, recorded, now(other))  # no scores/ yet: nothing to mix with
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(rerun.RerunRefused, match=r"reranker.path: \"m1\" then, \"m2\" now"):
        rerun.check_rerun(loc, "rerank", other, recorded, now(other))
    no_resume = other.model_copy(update={"resume": False})
    rerun.check_rerun(loc, "rerank", no_resume, recorded, now(no_resume))
    # a key only one of the two runs knows (a field added in a newer version) is not a change
    older = json.loads(json.dumps(recorded))
    del older["config"]["keep_columns"]
    newer = cfg.model_copy(update={"keep_columns": ["x"]})
    rerun.check_rerun(loc, "rerank", newer, older, now(newer))
    assert rerun.changed_settings({"a": {"b": 1, "ray": {"n": 1}}}, {"a": {"b": 2, "ray": {"n": 5}}}, ("*.ray.*",)) \
        == [("a.b", 1, 2)]


# ------------------------------------------------------------------------------------------- positives files
def test_a_malformed_positives_file_is_named_with_its_line_before_ray_starts(tmp_path):
    bad = tmp_path / "questions.jsonl"
    bad.write_text('{"question": "What was revenue in 2021?", "doc": "a.pdf", "page_number": 1}\n\n'
                   '{"question": "What was revenue in 2022?", "doc": "a.pdf", "page_number": 2},\n')
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'lib'}{os.pathsep}{REPO}")
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "jobs.build_dataset", "--config", "jobs/configs/build_local.yaml",
                        f"output={out}", f"positives_file={bad}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"positives_file {bad}, line 3: not valid JSON (Extra data at column" in p.stderr
    assert "Started a local Ray" not in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()  # stopped before the ingest and before Ray

    from docrerank.build.sources import read_positives

    bad.write_text('{"question": "q", "doc": "a.pdf", "page_number": 1}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=rf"positives_file {bad}, line 2: expected a JSON object, got list"):
        read_positives(str(bad))
    bad.write_text('{"question": "q", "doc": "a.pdf", "page_number": 1}\n{"doc": "a.pdf", "page_number": 2}\n')
    with pytest.raises(ValueError, match=rf"positives_file {bad}, line 2: needs a non-empty 'question'"):
        read_positives(str(bad))


def test_a_question_about_a_duplicate_file_goes_to_the_copy_kept_and_the_rest_are_reported(tmp_path, caplog):
    """The ingest keeps one copy of identical files (the other is quarantined as ``duplicate`` with the same document
    id): a question naming the other file's name gets the kept copy's page. Questions about pages the build does not
    have are left out with the reason of each, not only counted."""
    import logging

    import pyarrow as pa

    from docrerank.build.sources import load_given
    from docrerank.core import storage
    from docrerank.core.schema import page_id_of, pages_schema, quarantine_schema

    out = storage.resolve(str(tmp_path / "ingest"))
    pages = [{"page_id": page_id_of("d1", n), "doc_id": "d1", "source_uri": "/in/report.pdf", "page_number": n,
              "num_pages": 2, "width": 10, "height": 10, "dpi": 72.0, "image": b"x", "image_format": "png",
              "text": ""} for n in (1, 2)]
    storage.write_table_atomic(out.join("pages", "part-0.parquet"), pa.Table.from_pylist(pages, pages_schema()))
    quarantine = [
        {"source_uri": "/in/report_copy.pdf", "doc_id": "d1", "page_number": None, "stage": "probe",
         "error": "duplicate", "message": "same bytes as /in/report.pdf"},
        {"source_uri": "/in/board.pdf", "doc_id": "d2", "page_number": None, "stage": "probe", "error": "encrypted",
         "message": "needs a password"}]
    storage.write_table_atomic(out.join("quarantine", "probe-0.parquet"),
                               pa.Table.from_pylist(quarantine, quarantine_schema()))
    qfile = tmp_path / "q.jsonl"
    qs = [("report.pdf", 1), ("report_copy.pdf", 2), ("board.pdf", 1), ("report.pdf", 9), ("other.pdf", 1)]
    qfile.write_text("".join(json.dumps({"question": f"q{i}", "doc": d, "page_number": n}) + "\n"
                             for i, (d, n) in enumerate(qs)))
    with caplog.at_level(logging.INFO, logger="docrerank.build"):
        given = load_given(str(qfile), out.join("pages"))
    assert {pid: [g.question for g in gs] for pid, gs in given.items()} == {
        page_id_of("d1", 1): ["q0"], page_id_of("d1", 2): ["q1"]}
    text = caplog.text
    assert "1 questions about files quarantined as duplicates go to the same pages of the copy kept" in text
    assert f"positives_file {qfile}: 3 of 5 questions are about pages the build does not have, left out: " in text
    assert "line 3: board.pdf page 1 was quarantined (encrypted)" in text
    assert "line 4: report.pdf has no page 9 in the pages table" in text
    assert "line 5: other.pdf is not in the pages table" in text
