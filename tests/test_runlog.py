"""A quiet run: on the local default, only our logs, progress and tables reach the console; what Ray, its workers,
native code and other libraries print goes to the run log under ``<output>/_logs/``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from docrerank.core import runlog

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def console(capsys):
    """A console handler on the root logger, as ``runtime.setup_logging`` installs, writing to the test's stderr
    (created in the test's call phase, when ``sys.stderr`` is capsys's stream)."""
    root = logging.getLogger()
    level = root.level
    added = []

    def make() -> logging.Handler:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(runlog.FORMAT))
        root.addHandler(h)
        root.setLevel(logging.INFO)
        added.append(h)
        return h

    yield make
    for h in added:
        root.removeHandler(h)
    root.setLevel(level)


def test_run_log_path_is_under_the_output_or_a_temp_dir(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert runlog.run_log_path("build_dataset", str(tmp_path), now) == tmp_path / "_logs" / "build_dataset-20260102T030405Z.log"
    remote = runlog.run_log_path("ingest", "s3://bucket/out", now)
    assert remote.name == "ingest-20260102T030405Z.log" and "s3:" not in str(remote)


def test_capture_routes_other_libraries_and_keeps_ours(console, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    console()
    lib = logging.getLogger("somelib")  # a library with its own console handler, like Ray's and transformers' loggers
    own = logging.StreamHandler(sys.stderr)
    lib.addHandler(own)
    lib.propagate = False
    try:
        with runlog.capture("probe", str(tmp_path)) as rl:
            logging.getLogger("docrerank.probe").info("ours at info")
            logging.getLogger("other.lib").info("their chatter")
            logging.getLogger("other.lib").error("their error")
            lib.warning("somelib warning")
            from transformers.utils import logging as hf_logging

            hf_logging.get_logger("transformers.modeling_utils").warning("BertModel LOAD REPORT: classifier MISSING")
            assert not hf_logging.is_progress_bar_enabled()
        err = capsys.readouterr().err
        text = rl.path.read_text()
        assert "ours at info" in err and "ours at info" not in text
        assert "their chatter" in text and "their chatter" not in err
        assert "their error" in text and "their error" in err  # errors of root-logging libraries stay visible
        assert "somelib warning" in text and "somelib warning" not in err
        assert "LOAD REPORT" in text and "LOAD REPORT" not in err
        assert f"logs of Ray, its workers and other libraries: {rl.path}" in err
        assert rl.path.parent == tmp_path / "_logs"
        # everything is given back on leaving
        assert lib.handlers == [own] and hf_logging.is_progress_bar_enabled()
        lib.warning("after")
        logging.getLogger("other.lib").warning("after too")
        err = capsys.readouterr().err
        assert "after" in err and "after too" in err and "after" not in rl.path.read_text()
    finally:
        lib.removeHandler(own)
        lib.propagate = True


def test_capture_writes_nothing_when_nothing_is_routed_and_nests(console, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    console()
    with runlog.capture("outer", str(tmp_path)) as outer:
        with runlog.capture("inner", str(tmp_path / "x")) as inner:
            assert inner is outer and runlog.active() is outer
        logging.getLogger("docrerank.probe").warning("only ours")
    assert not outer.path.exists() and "logs of Ray" not in capsys.readouterr().err
    assert runlog.active() is None


def test_no_capture_on_a_cluster(console, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    console()
    with runlog.capture("probe", str(tmp_path)) as rl:
        logging.getLogger("other.lib").warning("shown as usual")
    assert rl is None and "shown as usual" in capsys.readouterr().err and not (tmp_path / "_logs").exists()


def test_crashes_during_an_intended_exit_are_told_apart(tmp_path):
    # Two Ray workers abort: 123 while exiting on purpose (Ray's "Mutex corrupt" at shutdown, seen on this
    # machine after _read_files tasks), 456 in the middle of its work.
    log = tmp_path / "run.log"
    log.write_text("(MapBatches(_read_files) pid=123) [mutex.cc : 1957] RAW: Lock: Mutex corrupt: waiting writer\n"
                   "(MapBatches(_read_files) pid=123) Fatal Python error: Aborted\n"
                   "(pid=456) Fatal Python error: Segmentation fault\n"
                   "(pid=789) all good\n")
    ray_logs = tmp_path / "logs"
    ray_logs.mkdir()
    (ray_logs / "python-core-worker-aa_123.log").write_text(
        "[... I 123 130] core_worker_shutdown_executor.cc:152: Executing worker exit: INTENDED_SYSTEM_EXIT - Worker "
        "exited because it was idle for a long time\n[... E 123 140] logging.cc:474: *** SIGABRT received at time=1\n")
    (ray_logs / "python-core-worker-bb_456.log").write_text("[... E 456 460] logging.cc:474: *** SIGSEGV received at time=1\n")
    real, exiting = runlog.crashes(log, ray_logs)
    assert exiting == [123] and real == ["(pid=456) Fatal Python error: Segmentation fault"]
    real, exiting = runlog.crashes(log, None)  # without Ray's logs nothing is excused
    assert exiting == [] and len(real) == 3


# A job on the local default in a fresh process: a local Ray whose workers print, a Ray Data actor pool (Ray's C++
# core prints an error line for each on this Ray version), a library warning, and our own log line.
SCRIPT = textwrap.dedent("""
    import logging, os, sys
    from docrerank.core import runtime

    class Cfg:
        output = sys.argv[1]
        def model_dump(self, mode=None):
            return {"output": self.output}

    class Double:
        def __call__(self, batch):
            print("hello from a worker", flush=True)
            batch["id"] = batch["id"] * 2
            return batch

    def work():
        import ray, ray.data
        runtime.init_ray(None, num_cpus=2)
        runtime.configure_ray_data()

        @ray.remote
        def task():
            print("printed by a task", file=sys.stderr, flush=True)
            return 1

        assert ray.get(task.remote()) == 1

        @ray.remote(max_retries=0)
        def crash():
            os.abort()

        try:
            ray.get(crash.remote())
        except ray.exceptions.RayError:
            pass
        n = ray.data.range(4).map_batches(Double, compute=ray.data.ActorPoolStrategy(size=1), batch_size=2).count()
        logging.getLogger("docrerank.probe").info("ours: %d rows", n)
        logging.getLogger("somelib").warning("a library warning")
        import time; time.sleep(3)  # Ray forwards worker lines about once a second
        return {"rows": n}

    runtime.setup_logging()
    assert runtime.run_job("probe", Cfg(), work) == {"rows": 4}
    print("the job's table")
""")


@pytest.mark.slow
def test_a_local_job_prints_only_ours_and_routes_ray(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"))
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    console = r.stdout + r.stderr
    [log] = list((out / "_logs").glob("probe-*.log"))
    text = log.read_text()
    assert r.stdout == "the job's table\n"
    assert "ours: 4 rows" in r.stderr and f"logs of Ray, its workers and other libraries: {log}" in r.stderr
    for noise in ("hello from a worker", "printed by a task", "a library warning", "Started a local Ray instance"):
        assert noise in text and noise not in console, noise
    ours = "\n".join(ln for ln in console.splitlines() if "report crashed processes" not in ln)
    for ray_only in ("Token authentication", "core_worker.cc", "(pid=", "ray.data", "worker died"):
        assert ray_only not in ours, ray_only
    # A crashed worker is in the run log, and the console says so (routing never hides a real fault).
    crashes = runlog.crash_lines(log)
    assert crashes and f"probe: {len(crashes)} lines of the run log report crashed processes" in r.stderr
    # The console holds this process's own lines and nothing else.
    assert len(console.splitlines()) == 4, console
