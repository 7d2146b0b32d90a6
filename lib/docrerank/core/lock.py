"""One writer per output directory: a lock a job holds while it writes, that a crashed run does not leave behind.

Two runs into one output (two terminals, a pipeline and a hand-run job, a retried ``ray job submit``) would mix
their shards and print funnels that are not what is on disk. ``run_job`` takes ``<output>/_lock`` before it writes
anything and the second run stops with one line naming the first::

    out/local is being written by another run: build_dataset, pid 4242 on host-a, started 2026-12-07T18:01:02+00:00
    (python -m jobs.build_dataset --config ...); wait for it to finish, or write to another output

Local paths (and network filesystems with POSIX locks): an exclusive ``fcntl.flock`` on ``<output>/_lock``. The
kernel drops it when the holding process ends, however it ends (Ctrl-C, SIGKILL, a crash, a reboot), so a lock
is never stale: the file stays, with the last holder's pid, host and start time for the message.

Object stores (``s3://``, ``gs://``, ...) have no lock primitive that pyarrow's filesystems expose: the lock is the
file ``<output>/_lock.json`` with the holder's pid, host, start time and a heartbeat the holder rewrites every
``HEARTBEAT_S``; a run finds it held when the heartbeat is younger than ``STALE_S`` (a crashed run's lock expires
after that), and otherwise writes its own and reads it back. Two runs starting within the same second can both
pass that check: on object stores the lock catches a second run started while one is running, not a race.

A process may take the lock of an output it already holds (the pipeline's steps write into outputs it holds).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from docrerank.core import storage

LOCK_FILE = "_lock"
OBJECT_LOCK_FILE = "_lock.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class OutputLocked(RuntimeError):
    """Another run holds the output; the message names it."""


@dataclass
class _Held:
    count: int
    release: Callable[[], None]
    info: dict = field(default_factory=dict)


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def holder_info(job: str, command: str = "") -> dict:
    """Who is taking the lock: job, pid, host, start time, command line (``command``: secrets already redacted;
    default the interpreter's name only)."""
    return {"job": job, "pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or os.path.basename(sys.executable), "token": uuid.uuid4().hex}


def describe(uri: str, info: dict) -> str:
    """The one-line refusal naming the run that holds ``uri``."""
    if not info:
        return f"{uri} is being written by another run; wait for it to finish, or write to another output"
    return (f"{uri} is being written by another run: {info.get('job', '?')}, pid {info.get('pid', '?')} on "
            f"{info.get('host', '?')}, started {info.get('started', '?')} ({info.get('command', '')}); wait for it to "
            "finish, or write to another output")


def _key(loc: storage.Location) -> str:
    return loc.uri if "://" in loc.uri else os.path.realpath(loc.path)


def acquire(output: str, job: str, command: str = "") -> None:
    """Take the lock of ``output`` (created if missing) for this process; raise OutputLocked naming the holder.
    ``command``: the command line to show another run (secrets redacted)."""
    loc = storage.resolve(output)
    key = _key(loc)
    with _guard:
        if key in _held:
            _held[key].count += 1
            return
        info = holder_info(job, command)
        release = _acquire_local(loc, info) if "://" not in loc.uri else _acquire_object(loc, info)
        _held[key] = _Held(1, release, info)


def release(output: str) -> None:
    """Give back one hold of ``output``'s lock (the last one releases it)."""
    key = _key(storage.resolve(output))
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count == 0:
            del _held[key]
            held.release()


class held:
    """``with held(output, job):`` the lock for the block."""

    def __init__(self, output: str, job: str):
        self.output, self.job = output, job

    def __enter__(self):
        acquire(self.output, self.job)
        return self

    def __exit__(self, *exc):
        release(self.output)
        return False


def _acquire_local(loc: storage.Location, info: dict):
    import fcntl

    os.makedirs(loc.path, exist_ok=True)
    path = os.path.join(loc.path, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            other = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except ValueError:
            other = {}
        os.close(fd)
        raise OutputLocked(describe(loc.uri, other)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({k: v for k, v in info.items() if k != "token"}) + "\n").encode(), 0)

    def release() -> None:
        os.close(fd)  # closing the descriptor drops the lock; the file keeps the last holder for the message

    return release


def _read_object(loc: storage.Location) -> dict | None:
    try:
        return json.loads(storage.read_bytes(loc))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _fresh(info: dict | None, now: float) -> bool:
    return bool(info) and now - float(info.get("heartbeat", 0)) < STALE_S


def _acquire_object(loc: storage.Location, info: dict):
    lock = loc.join(OBJECT_LOCK_FILE)
    other = _read_object(lock)
    if _fresh(other, time.time()):
        raise OutputLocked(describe(loc.uri, other))
    stop = threading.Event()

    def write() -> None:
        storage.write_bytes_atomic(lock, json.dumps({**info, "heartbeat": time.time()}).encode())

    write()
    mine = _read_object(lock)
    if not mine or mine.get("token") != info["token"]:  # another run wrote its lock at the same moment
        raise OutputLocked(describe(loc.uri, mine or {}))

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                write()
            except Exception:  # noqa: BLE001 - a missed heartbeat only shortens the lock's life
                pass

    thread = threading.Thread(target=beat, name="docrerank-output-lock", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        thread.join(timeout=5)
        current = _read_object(lock)
        if current and current.get("token") == info["token"]:
            lock.fs.delete_file(lock.path)

    return release
