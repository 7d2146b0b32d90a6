"""The run log: on the local default, what other libraries print goes to ``<output>/_logs/<job>-<time>.log``.

A job on the local default (no ``--address``, no ``RAY_ADDRESS``) shows a person only what they can act on: our
own logs (``docrerank.*``, INFO and up), progress bars and the job's tables. Everything else goes to the run log:

- other libraries' Python logs (Ray, Ray Data's non-interactive progress lines, transformers' load reports, bm25s, ...;
  errors of libraries that log through the root logger still reach the console too) and transformers' bars;
- what native code writes to the process's standard error (file descriptor 2): Ray's C++ core worker prints
  its errors there, e.g. Ray Data's "Actor ... has constructor arguments in the object store" on every actor pool;
- every line that Ray workers, actors and Ray's own processes print (Ray forwards them to the driver), and the
  raylet's error reports (a worker died); lines that report a crashed process are counted on the console, except
  a Ray worker's crash during its intended exit (a Ray fault after its tasks returned; noted in the run log).

``capture(job, output)`` (entered by ``runtime.run_job``) routes the Python logs for the duration of the job;
``route_ray_process`` / ``route_ray_workers`` (called by ``runtime.init_ray`` around starting a local Ray inside a
capture) add file descriptor 2 and the workers' lines until ``unroute_ray`` (``runtime.shutdown_ray``) or exit.
On a cluster nothing is routed: Ray's logs stay where Ray puts them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OURS = "docrerank"


class RunLog:
    """An append-only text file, opened on first write (a run whose libraries print nothing leaves no file)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ray_logs: Path | None = None  # the local Ray's log directory, once one is routed here
        self._fd: int | None = None
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The file's descriptor (opened, with its directory, on first use; appends only)."""
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            return self._fd

    def write(self, text: str) -> None:
        """Append ``text`` (one ``write`` call, so lines from threads and native code do not interleave)."""
        os.write(self.fileno(), text.encode("utf-8", "backslashreplace"))

    @property
    def written(self) -> bool:
        """Whether anything was written to the file."""
        return self.path.exists() and self.path.stat().st_size > 0

    def handler(self, level: int = logging.NOTSET) -> logging.Handler:
        """A logging handler writing records to this file in the jobs' format."""
        h = _RunLogHandler(self)
        h.setLevel(level)
        h.setFormatter(logging.Formatter(FORMAT))
        return h


class _RunLogHandler(logging.Handler):
    def __init__(self, run_log: RunLog):
        super().__init__()
        self.run_log = run_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_log.write(self.format(record) + "\n")
        except Exception:  # a logging handler must never raise into the code that logged
            self.handleError(record)


# Lines of a run log that mean a process died: routed like the rest, but never silently (``capture`` says so).
CRASH_MARKERS = ("Fatal Python error", "*** SIGSEGV", "*** SIGABRT", "*** SIGBUS", "Mutex corrupt",
                 "worker died or was killed", "Worker crashed")


_PID = re.compile(r"\bpid=(\d+)\)")


def crash_lines(path: Path) -> list[str]:
    """The lines of the run log at ``path`` that report a crashed process (a worker's abort, segfault, OOM kill)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return [ln.rstrip("\n") for ln in f if any(m in ln for m in CRASH_MARKERS)]


def crashed_while_exiting(pid: int, ray_logs: Path | None) -> bool:
    """Whether Ray worker ``pid`` crashed after it had begun an intended exit (its core worker log says so first).

    Ray 2.60's worker processes sometimes abort in a background thread while they shut down ("Mutex corrupt: ...",
    "Fatal Python error: Aborted"): an idle worker retired after its read tasks, an actor released when its dataset
    finished. Their tasks had returned by then, so nothing is lost."""
    if ray_logs is None:
        return False
    for log in ray_logs.glob(f"python-core-worker-*_{pid}.log"):
        exiting = False
        with open(log, encoding="utf-8", errors="replace") as f:
            for ln in f:
                if "Executing worker exit: INTENDED" in ln:
                    exiting = True
                elif exiting and ("SIGABRT received" in ln or "SIGSEGV received" in ln):
                    return True
    return False


def crashes(path: Path, ray_logs: Path | None) -> tuple[list[str], list[int]]:
    """(lines of the run log reporting crashes, pids of Ray workers whose crash came during their intended exit);
    the lines of those workers are not in the first list."""
    real, exiting, checked = [], set(), {}
    for ln in crash_lines(path):
        m = _PID.search(ln)
        pid = int(m.group(1)) if m else None
        if pid is not None and pid not in checked:
            checked[pid] = crashed_while_exiting(pid, ray_logs)
        if pid is not None and checked[pid]:
            exiting.add(pid)
        else:
            real.append(ln)
    return real, sorted(exiting)


def run_log_path(job: str, output: str | None, now: _dt.datetime | None = None) -> Path:
    """``<output>/_logs/<job>-<UTC time>.log`` for a local output; a temporary directory for a remote or no output."""
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    if output and "://" not in output:
        base = Path(output) / "_logs"
    else:
        base = Path(tempfile.gettempdir()) / "docrerank-logs"
    return base / f"{job}-{stamp}.log"


def is_ours(name: str) -> bool:
    """Whether a logger name belongs to this project (its records stay on the console)."""
    return name == OURS or name.startswith(OURS + ".")


class _ConsoleFilter(logging.Filter):
    """On the console handler: our records, and other libraries' errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_ours(record.name) or record.levelno >= logging.ERROR


class _RunLogFilter(logging.Filter):
    """On the run log's root handler: every record that is not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_ours(record.name)


# Libraries whose console handler is routed whatever stream it holds: it may hold a stream that replaced stderr when
# the library was first imported (a notebook's, a test runner's capture), which is still the console.
CONSOLE_LIBRARIES = ("transformers", "datasets", "sentence_transformers", "huggingface_hub", "ray")


def _writes_to_stderr(h: logging.Handler, logger: str = "") -> bool:
    if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler):
        return False
    if logger.split(".")[0] in CONSOLE_LIBRARIES and getattr(h, "stream", None) is not sys.stdout:
        return True
    return getattr(h, "stream", None) in (sys.stderr, sys.__stderr__) or type(h).__name__ == "PlainRayHandler"


class _Routing:
    """What ``capture`` changed, to undo it."""

    def __init__(self, run_log: RunLog):
        self.run_log = run_log
        self.swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
        self.console: list[tuple[logging.Handler, logging.Filter]] = []
        self.root_handler: logging.Handler | None = None
        self.hf_bars_were_on: bool | None = None

    def route_loggers(self) -> None:
        """Send other libraries' console handlers to the run log (idempotent: call again after new imports)."""
        done = {id(new) for _, _, new in self.swapped}
        for name, lg in list(logging.Logger.manager.loggerDict.items()):
            if not isinstance(lg, logging.Logger) or is_ours(name):
                continue
            for h in list(lg.handlers):
                if id(h) in done or not _writes_to_stderr(h, name):
                    continue
                new = self.run_log.handler(h.level)
                lg.removeHandler(h)
                lg.addHandler(new)
                self.swapped.append((lg, h, new))

    def start(self) -> None:
        root = logging.getLogger()
        for h in root.handlers:
            if _writes_to_stderr(h):
                f = _ConsoleFilter()
                h.addFilter(f)
                self.console.append((h, f))
        self.root_handler = self.run_log.handler()
        self.root_handler.addFilter(_RunLogFilter())
        root.addHandler(self.root_handler)
        if importlib.util.find_spec("transformers") is not None:
            # Importing transformers' logging creates its console handler, so it can be routed before any model loads.
            try:
                from transformers.utils import logging as hf_logging
            except ImportError:  # a broken install fails where the job uses it, with its own error
                hf_logging = None
            if hf_logging is not None:
                self.hf_bars_were_on = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()
        self.route_loggers()

    def stop(self) -> None:
        for lg, old, new in reversed(self.swapped):
            if _ray_routing is not None and (lg.name == "ray" or lg.name.startswith("ray.")):
                _ray_routing.setdefault("swapped", []).append((lg, old, new))  # Ray's logs follow Ray's routing
                continue
            lg.removeHandler(new)
            lg.addHandler(old)
        self.swapped.clear()
        for h, f in self.console:
            h.removeFilter(f)
        self.console.clear()
        if self.root_handler is not None:
            logging.getLogger().removeHandler(self.root_handler)
            self.root_handler = None
        if self.hf_bars_were_on:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()


_active: _Routing | None = None


def active() -> RunLog | None:
    """The run log of the capture in progress, or None."""
    return _active.run_log if _active is not None else None


@contextlib.contextmanager
def capture(job: str, output: str | None) -> Iterator[RunLog | None]:
    """Within the block, other libraries' logs go to the run log of ``job`` (see the module docstring); yields it.

    Does nothing (yields None) where ``RAY_ADDRESS`` names a cluster; a capture inside another one yields the outer
    run log (the pipeline's steps share one). On leaving, says where the run log is when anything went to it.
    """
    global _active
    if _active is not None:
        yield _active.run_log
        return
    if os.environ.get("RAY_ADDRESS"):
        yield None
        return
    routing = _Routing(RunLog(run_log_path(job, output)))
    _active = routing
    routing.start()
    try:
        yield routing.run_log
    finally:
        routing.stop()
        _active = None
        if routing.run_log.written:
            rl = routing.run_log
            real, exiting = crashes(rl.path, rl.ray_logs)
            if exiting:
                rl.write(f"note: Ray worker process(es) {exiting} crashed during their intended exit, after their "
                         "tasks had returned (a fault of Ray's, see crashed_while_exiting): nothing was lost\n")
            if real:
                print(f"{job}: {len(real)} lines of the run log report crashed processes, first: "
                      f"{real[0].strip()[:200]!r}", file=sys.stderr)
            print(f"{job}: logs of Ray, its workers and other libraries: {rl.path}", file=sys.stderr)


def release() -> None:
    """Give the console back the libraries' logs (a job that joins a cluster after all)."""
    if _active is not None:
        _active.stop()


# ----------------------------------------------------------------------------------------- a local Ray
_ray_routing: dict | None = None


def route_ray_process(run_log: RunLog) -> None:
    """Before a local Ray starts: file descriptor 2 (native code, Ray's C++ core) to the run log, Python's
    ``sys.stderr`` to the console (our logs, progress bars, tracebacks), and Ray's Python loggers to the run log."""
    global _ray_routing
    if _ray_routing is not None:
        return
    state: dict = {"run_log": run_log}
    try:
        is_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr (a test's capture): leave fd 2 alone
        is_fd2 = False
    if is_fd2:
        old = sys.stderr
        old.flush()
        console = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                            errors="backslashreplace")
        state.update(saved_fd=os.dup(2), old_stderr=old, console=console, repointed=[])
        os.dup2(run_log.fileno(), 2)
        sys.stderr = console
        for lg in [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                            if isinstance(v, logging.Logger)]:
            for h in lg.handlers:
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old:
                    h.setStream(console)
                    state["repointed"].append(h)
    if _active is not None:
        _active.route_loggers()
    _ray_routing = state


def route_ray_workers(run_log: RunLog) -> bool:
    """After a local Ray started: the lines its workers and processes print go to the run log, not the console.
    Returns False where this Ray has no forwarding hook to replace (its lines then stay on the console)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if not hasattr(dispatcher, "remove_handler") or not hasattr(dispatcher, "add_handler"):
        return False

    def to_run_log(data: dict) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({who + ' ' if who else ''}pid={data.get('pid')}) "
        lines = data.get("lines") or []
        if data.get("pid") == "autoscaler":  # its status table every few seconds; Ray prints only its events
            lines = [ln for ln in lines if ":event_summary:" in ln]
        if lines:
            run_log.write("".join(prefix + line + "\n" for line in lines))

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("docrerank_run_log", to_run_log)
    if _ray_routing is not None:
        _ray_routing["dispatcher"] = dispatcher
    # The driver's error listener prints what the raylet reports (a worker died, a task was OOM-killed) through
    # this function, to stdout: to the run log too (``capture`` then names the crash on the console).
    import ray._private.worker as ray_worker

    try:  # where Ray's processes keep their own logs (to tell a worker's crash at exit from one during a task)
        run_log.ray_logs = Path(ray_worker._global_node.get_logs_dir_path())
    except (AttributeError, TypeError):
        pass
    if hasattr(ray_worker, "print_to_stdstream") and _ray_routing is not None:
        _ray_routing["print_to_stdstream"] = ray_worker.print_to_stdstream
        ray_worker.print_to_stdstream = lambda data, ignore_prefix=False: to_run_log(data)
    return True


def unroute_ray() -> None:
    """Undo ``route_ray_process`` and ``route_ray_workers`` (after ``ray.shutdown``)."""
    global _ray_routing
    state, _ray_routing = _ray_routing, None
    if state is None:
        return
    for lg, old, new in reversed(state.get("swapped", [])):
        lg.removeHandler(new)
        lg.addHandler(old)
    if "dispatcher" in state:
        state["dispatcher"].remove_handler("docrerank_run_log")
    if "print_to_stdstream" in state:
        import ray._private.worker as ray_worker

        ray_worker.print_to_stdstream = state["print_to_stdstream"]
    if "saved_fd" in state:
        state["console"].flush()
        os.dup2(state["saved_fd"], 2)
        os.close(state["saved_fd"])
        sys.stderr = state["old_stderr"]
        for h in state["repointed"]:
            h.setStream(state["old_stderr"])
        state["console"].close()
