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
    from docrerank.ingest.config import IngestConfig

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


def test_the_lock_is_reentrant_within_a_process_and_released_after_a_failure(tmp_path):
    """The pipeline holds outputs its steps write again (build, mine and analyse share out/local)."""
    from docrerank.core import lock, runtime
    from docrerank.ingest.config import IngestConfig

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
    rerun.check_rerun(loc, "rerank", other, recorded)  # no scores/ yet: nothing to mix with
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(rerun.RerunRefused, match=r"reranker.path: \"m1\" then, \"m2\" now"):
        rerun.check_rerun(loc, "rerank", other, recorded)
    rerun.check_rerun(loc, "rerank", other.model_copy(update={"resume": False}), recorded)  # redoes everything
    # a key only one of the two runs knows (a field added in a newer version) is not a change
    older = json.loads(json.dumps(recorded))
    del older["config"]["keep_columns"]
    rerun.check_rerun(loc, "rerank", cfg.model_copy(update={"keep_columns": ["x"]}), older)
    assert rerun.changed_settings({"a": {"b": 1, "ray": {"n": 1}}}, {"a": {"b": 2, "ray": {"n": 5}}}, ("*.ray.*",)) \
        == [("a.b", 1, 2)]
