"""Fault injection for tests, off unless ``DOCRERANK_FAULT_INJECT`` is set.

Entries are comma-separated ``kind:where:arg``:
  crash:NAME:PAGE      the isolated ingest child segfaults rendering page PAGE of a file named like NAME
  hang:NAME:PAGE       ... hangs instead
  sleep:STAGE:SECONDS  a build stage sleeps this long per batch (to kill a run mid-way)
  exit_once:STAGE:PATH a build stage's worker process exits the first time (PATH marks that it happened)
  kill_engine_once:STAGE:PATH  the model pool's actor kills its engine's processes (SIGKILL: vLLM's engine core)
                       on its first call of STAGE, before running it (PATH marks that it happened)
They exist so tests can prove that crashes, hangs and killed workers or drivers cost no data.
"""

from __future__ import annotations

import os
import signal
import time


def _entries():
    for item in filter(None, os.environ.get("DOCRERANK_FAULT_INJECT", "").split(",")):
        kind, where, arg = item.split(":", 2)
        yield kind, where, arg


def at_page(uri: str, page_numbers: list[int]) -> None:
    """Ingest hook: called in the isolated child before rendering ``page_numbers`` of ``uri``."""
    for kind, name, page in _entries():
        if kind in ("crash", "hang") and name in uri.rsplit("/", 1)[-1] and int(page) in page_numbers:
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(3600)


def at_stage(stage: str) -> None:
    """Build hook: called by a stage before it processes a batch."""
    for kind, name, arg in _entries():
        if name != stage:
            continue
        if kind == "sleep":
            time.sleep(float(arg))
        elif kind == "exit_once" and not os.path.exists(arg):
            with open(arg, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)


def at_engine_call(stage: str) -> None:
    """Model pool hook: called in the engine's actor before it runs a call of ``stage``."""
    for kind, name, arg in _entries():
        if kind == "kill_engine_once" and name == stage and not os.path.exists(arg):
            import psutil

            with open(arg, "w") as f:
                f.write(str(os.getpid()))
            for child in psutil.Process().children(recursive=True):
                child.kill()
