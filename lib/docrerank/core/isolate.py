"""Run fragile native code (PDF parsers) in a child process that may crash, hang or blow its memory.

A worker keeps one long-lived child (``python -m docrerank.core.isolate``) and sends it calls over pipes as
length-prefixed pickles. The child has an address-space limit, so a decompression bomb fails with an
error instead of taking the machine down; a segfault or a hang costs only the call in flight: the parent
sees :class:`ChildCrashed` or :class:`ChildTimeout` and starts a fresh child for the next call.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("!Q")


class ChildCrashed(RuntimeError):
    """The child process died during a call (signal or exit); ``returncode`` says how."""

    def __init__(self, returncode: int | None):
        self.returncode = returncode
        how = f"signal {-returncode}" if returncode is not None and returncode < 0 else f"exit {returncode}"
        super().__init__(f"isolated worker process died ({how})")


class ChildTimeout(RuntimeError):
    """The call did not finish within its timeout; the child was killed."""


class RemoteError(RuntimeError):
    """The called function raised in the child; ``exc_type`` names the original exception class."""

    def __init__(self, exc_type: str, message: str):
        self.exc_type = exc_type
        super().__init__(f"{exc_type}: {message}")


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _send(f, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(data)))
    f.write(data)
    f.flush()


class IsolatedWorker:
    """A restartable child process that runs ``module:function`` calls.

    Args:
        memory_limit_mb: address-space limit of the child (RLIMIT_AS); 0 disables it.
        env: extra environment variables for the child.
        warmup: ``(target, args)`` called in every new child before its first call (imports, say), under
            ``startup_timeout`` rather than that call's timeout: starting a child is not the input's fault.
        startup_timeout: seconds a new child may take to start and warm up.
    """

    def __init__(self, memory_limit_mb: int = 4096, env: dict[str, str] | None = None,
                 warmup: tuple[str, tuple] | None = None, startup_timeout: float = 300.0):
        if memory_limit_mb < 0:
            raise ValueError(f"memory_limit_mb: expected >= 0, got {memory_limit_mb}")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout: expected > 0 seconds, got {startup_timeout}")
        self.memory_limit_mb = memory_limit_mb
        self._env = env or {}
        self._warmup = warmup
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self.restarts = 0  # children lost to a crash or timeout

    def _start(self) -> subprocess.Popen:
        lib_dir = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, **self._env)
        env["PYTHONPATH"] = os.pathsep.join([lib_dir, *filter(None, [env.get("PYTHONPATH")])])
        env["DOCRERANK_CHILD_MEMORY_MB"] = str(self.memory_limit_mb)
        return subprocess.Popen(
            [sys.executable, "-m", "docrerank.core.isolate"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )

    def start(self) -> None:
        """Start the child now (and run the warm-up) unless it is running; raises as :meth:`call` does."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
            if self._warmup is not None:
                target, args = self._warmup
                self._call(target, args, self.startup_timeout)

    def call(self, target: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``target`` ("package.module:function") with ``args`` in the child and return its result.

        Raises RemoteError if the function raised, ChildCrashed if the child died, ChildTimeout after
        ``timeout`` seconds (the child is then killed). After a crash or timeout the next call starts
        a fresh child; starting it (and its warm-up) does not count against ``timeout``.
        """
        self.start()
        return self._call(target, args, timeout)

    def _call(self, target: str, args: tuple, timeout: float | None) -> Any:
        proc = self._proc
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            _send(proc.stdin, (target, args))
            fd = proc.stdout.fileno()
            (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
            ok, payload = pickle.loads(_read_exact(fd, n, deadline))
        except TimeoutError:
            self.restarts += 1
            self.close(kill=True)
            raise ChildTimeout(f"{target} did not finish within {timeout:g}s") from None
        except (EOFError, BrokenPipeError, OSError):
            code = proc.wait(timeout=10)
            self._proc = None
            self.restarts += 1
            raise ChildCrashed(code) from None
        if ok:
            return payload
        raise RemoteError(*payload)

    def close(self, kill: bool = False) -> None:
        """Stop the child (politely by closing its input, or with SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __del__(self):  # best effort: never leave children behind
        try:
            self.close(kill=True)
        except Exception:
            pass


def _child_main() -> None:
    limit_mb = int(os.environ.get("DOCRERANK_CHILD_MEMORY_MB", "0"))
    if limit_mb > 0 and sys.platform.startswith("linux"):
        import resource

        lim = limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    cache: dict[str, Any] = {}
    while True:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (n,) = _HEADER.unpack(header)
        target, args = pickle.loads(inp.read(n))
        try:
            fn = cache.get(target)
            if fn is None:
                mod, name = target.split(":")
                fn = cache[target] = getattr(importlib.import_module(mod), name)
            result = (True, fn(*args))
        except MemoryError as e:
            result = (False, ("MemoryError", str(e) or "memory limit reached"))
        except Exception as e:  # the parent decides what an error means
            result = (False, (type(e).__name__, str(e)))
        try:
            _send(out, result)
        except MemoryError:
            _send(out, (False, ("MemoryError", "result too large for the memory limit")))


if __name__ == "__main__":
    _child_main()
