"""A model pool's actor and the client the stages call (the job's side of a pool is ``engines.pool_ray``).

An actor (``EngineActor``) runs its engine on one thread and takes calls on an asyncio loop, so several calls are in
flight at once: those that arrive while the engine runs wait in the actor, and the next run takes all of them (same
kind, up to ``batches_in_flight``). Each actor counts requests and error kinds per stage. An exception inside the
engine becomes an ``engine_error`` result of that run's requests, except ``EngineDeadError`` (the engine's process
died): then the actor's process exits, Ray restarts the actor (a new engine) and sends the calls it had again. A stage's engine is a ``PoolClient``: its requests
split into calls of the stage's ``batch_size``, spread over the pool's actors, retried on another actor when one is
gone.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Sequence

from docrerank.core import faults

log = logging.getLogger(__name__)

EXIT_ENGINE_DEAD = 75  # an actor whose engine died exits with this code (Ray restarts it)
WATCH_S = 2.0  # how often an actor asks its engine whether it died (engines with ``dead_reason``)
REFRESH_S = 10.0  # how often a client asks its pool for the current actors
DEFAULT_CALL_TIMEOUT_S = 1800.0  # engine.ray.call_timeout_s's default


# --------------------------------------------------------------------------------------------- the actor
class EngineActor:
    """One engine of a pool, as a Ray actor (``ray.remote(EngineActor)``): ``call(kind, stage, requests)``."""

    def __init__(self, cfg, factory, pool: str, merge: int):
        import queue
        import threading

        from docrerank.engines.factory import construct

        t0 = time.perf_counter()
        self.engine = construct(cfg, factory)
        self.load_s = time.perf_counter() - t0
        self.pool, self.merge = pool, merge
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()  # the engine thread counts, the event loop reports
        self.counts: dict[str, Counter] = {}
        self.examples: dict[str, dict[str, str]] = {}
        self.busy_s, self.calls, self.runs, self.most_waiting = 0.0, 0, 0, 0
        self._members: list = []
        threading.Thread(target=self._loop, name=f"engine-{pool}", daemon=True).start()
        dead_reason = getattr(self.engine, "dead_reason", None)  # optional: engines whose process can die apart
        if dead_reason is not None:
            threading.Thread(target=self._watch, args=(dead_reason,), name=f"engine-watch-{pool}", daemon=True).start()

    async def info(self) -> dict:
        """Where the engine runs: pid, node id, GPU ids, engine class, seconds it took to load."""
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "engine": type(self.engine).__name__, "load_s": round(self.load_s, 2)}

    async def call(self, kind: str, stage: str, requests: list) -> list:
        """``generate`` or ``judge`` on ``requests`` for ``stage``; waits its turn with the other calls."""
        import asyncio
        import concurrent.futures

        if kind not in ("generate", "judge"):
            raise ValueError(f"call kind: got {kind!r}, expected 'generate' or 'judge'")
        faults.at_engine_call(stage)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((kind, stage, list(requests), fut))
        return await asyncio.wrap_future(fut)

    async def stats(self) -> dict:
        """Requests and error kinds per stage (with one example message per kind), calls, engine runs, busy time."""
        with self.lock:
            return {"counts": {s: dict(c) for s, c in self.counts.items()},
                    "examples": {s: dict(e) for s, e in self.examples.items()}, "calls": self.calls,
                    "runs": self.runs, "busy_s": self.busy_s, "most_waiting": self.most_waiting}

    async def members(self) -> list:
        """The pool's live actors (set by the driver), for clients to spread their calls over."""
        return self._members

    async def set_members(self, actors: list) -> None:
        """Record the pool's live actors."""
        self._members = list(actors)

    def shutdown(self) -> None:
        """Stop taking calls and release the engine (GPU memory, HTTP connections)."""
        self.queue.put(None)
        close = getattr(self.engine, "close", None)
        if close:
            close()

    def _watch(self, dead_reason) -> None:
        """End the actor when its engine died (``dead_reason()`` says why), even in the middle of a run that would
        wait for it forever (a vLLM engine core killed while a call waits on its outputs): Ray restarts the actor
        and retries its calls."""
        while True:
            time.sleep(WATCH_S)
            why = dead_reason()
            if why:
                self._die(why)

    def _die(self, why) -> None:
        # Nothing this engine answers can be trusted any more: end the process (not a clean exit, so Ray restarts
        # the actor with a new engine and retries the calls in flight, within max_restarts).
        log.error("pool %s: the engine died (%s); ending this actor so that Ray replaces it", self.pool, why)
        logging.shutdown()
        os._exit(EXIT_ENGINE_DEAD)

    def _loop(self) -> None:
        import queue

        held: deque = deque()  # calls of the other kind, taken off the queue while merging
        while True:
            first = held.popleft() if held else self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.merge:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                (batch if item[0] == first[0] else held).append(item)
            self.most_waiting = max(self.most_waiting, len(batch) + len(held) + self.queue.qsize())
            self._run(batch)

    def _run(self, batch: list) -> None:
        kind = batch[0][0]
        requests = [r for item in batch for r in item[2]]
        from docrerank.engines.base import EngineDeadError

        t0 = time.perf_counter()
        try:
            results = list(getattr(self.engine, kind)(requests))
            if len(results) != len(requests):
                raise RuntimeError(f"{type(self.engine).__name__}.{kind} returned {len(results)} results for "
                                   f"{len(requests)} requests")
        except EngineDeadError as err:
            self._die(err)
        except Exception as err:  # noqa: BLE001 - confined to this run's requests, counted as their error
            log.exception("pool %s: %s of %d requests failed", self.pool, kind, len(requests))
            results = [failed_result(kind, r, f"{type(err).__name__}: {err}") for r in requests]
        i, parts = 0, []
        with self.lock:
            self.busy_s += time.perf_counter() - t0
            self.runs += 1
            for _, stage, reqs, fut in batch:
                part = results[i:i + len(reqs)]
                i += len(reqs)
                parts.append((fut, part))
                self.calls += 1
                c = self.counts.setdefault(stage, Counter())
                for res in part:
                    c["requests"] += 1
                    if res.error:
                        k = res.error.split(":", 1)[0]
                        c[f"error:{k}"] += 1
                        self.examples.setdefault(stage, {}).setdefault(k, res.error[:300])
        for fut, part in parts:
            fut.set_result(part)


def actor_name(handle) -> str:
    """"actor <id>" of a Ray actor handle (the id the dashboard and ``ray list actors`` show)."""
    aid = getattr(handle, "_actor_id", None)
    return f"actor {aid.hex()}" if aid is not None else f"actor {handle!r}"


def last_line(err: BaseException) -> str:
    """The last line of an error's text (for a Ray error wrapping a traceback: the original exception)."""
    import re

    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if x.strip()]
    return lines[-1] if lines else type(err).__name__


def failed_result(kind: str, request, message: str):
    """The result of ``request`` when the engine call failed as a whole (error kind ``engine_error``)."""
    from docrerank.engines.requests import GenerateResult, JudgeResult, make_error

    error = make_error("engine_error", message[:300])
    if kind == "judge":
        return JudgeResult(error=error, id=request.id)
    return GenerateResult(errors=[error], error=error, id=request.id)


# --------------------------------------------------------------------------------------------- the client
@dataclass
class PoolHandles:
    """What the stages need to reach the pools (picklable: it travels to every Ray Data worker)."""

    pool_of: dict
    """stage -> pool name."""
    actors: dict
    """pool name -> its live actor handles at the start of the run (clients refresh them)."""
    batch_size: dict
    """stage -> requests per call."""
    call_timeout_s: dict = field(default_factory=dict)
    """pool name -> how long a call may go unanswered before its actor is taken for wedged (default 1800 s)."""

    def client(self, stage: str) -> "PoolClient":
        """The engine ``stage`` calls."""
        if stage not in self.pool_of:
            raise KeyError(f"no model pool serves stage {stage!r}; served: {sorted(self.pool_of)}")
        return PoolClient(self, stage)


class PoolClient:
    """The ``Engine`` a stage gets (``generate``, ``judge``, ``close``): its requests split into calls of the
    stage's ``batch_size``, all sent at once to the pool's actors (the one with the fewest of this client's calls
    first), results returned in request order."""

    def __init__(self, handles: PoolHandles, stage: str):
        self.stage, self.pool = stage, handles.pool_of[stage]
        self.batch_size = handles.batch_size[stage]
        self.call_timeout_s = handles.call_timeout_s.get(self.pool, DEFAULT_CALL_TIMEOUT_S)
        self._set(handles.actors[self.pool])
        self.rng = random.Random(os.getpid() ^ id(self))
        self.refreshed = time.monotonic()

    def _set(self, actors: Sequence) -> None:
        if not actors:
            raise RuntimeError(f"model pool {self.pool}: no live actor to call")
        self.actors, self.load = list(actors), [0] * len(actors)
        self.dead: set = set()  # failed a call after Ray's restarts; skipped until the next refresh

    def generate(self, requests) -> list:
        """Generate through the pool."""
        return self._call("generate", list(requests))

    def judge(self, requests) -> list:
        """Judge through the pool."""
        return self._call("judge", list(requests))

    def close(self) -> None:
        """Nothing to release: the pool owns the engines."""

    def _refresh(self) -> None:
        import ray

        if time.monotonic() - self.refreshed < REFRESH_S:
            return
        self.refreshed = time.monotonic()
        live = [a for i, a in enumerate(self.actors) if i not in self.dead] or self.actors
        try:
            current = ray.get(self.rng.choice(live).members.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - keep the actors known; a dead one is skipped on its first failure
            return
        if current:
            self._set(current)

    def _pick(self, avoid: set) -> int:
        choices = [i for i in range(len(self.actors)) if i not in avoid] or list(range(len(self.actors)))
        least = min(self.load[i] for i in choices)
        return self.rng.choice([i for i in choices if self.load[i] == least])

    def _call(self, kind: str, requests: list) -> list:
        import ray

        if not requests:
            return []
        self._refresh()
        chunks = [requests[i:i + self.batch_size] for i in range(0, len(requests), self.batch_size)]
        out: list = [None] * len(chunks)
        pending: dict = {}

        def send(i: int, failed: set) -> None:
            a = self._pick(failed | self.dead)
            self.load[a] += 1
            pending[self.actors[a].call.remote(kind, self.stage, chunks[i])] = (i, a, failed, time.monotonic())

        def retry(i: int, a: int, failed: set, why: str, err: BaseException | None = None) -> None:
            failed = failed | {a}
            self.dead.add(a)
            if len(failed | self.dead) >= len(self.actors):
                raise RuntimeError(f"model pool {self.pool}: every actor failed a call of stage {self.stage} "
                                   f"({len(self.actors)} tried); the last, {actor_name(self.actors[a])}: {why}") from err
            log.warning("pool %s: %s: %s; retrying the call on another actor", self.pool, actor_name(self.actors[a]),
                        why)
            send(i, failed)

        for i in range(len(chunks)):
            send(i, set())
        while pending:
            oldest = min(sent for *_, sent in pending.values())
            left = max(0.0, oldest + self.call_timeout_s - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:  # the oldest call is overdue: its actor is wedged (alive, never answering)
                ref = min(pending, key=lambda r: pending[r][3])
                i, a, failed, _ = pending.pop(ref)
                self.load[a] -= 1
                ray.cancel(ref, force=False)
                retry(i, a, failed, f"no answer to a call of stage {self.stage} within "
                                    f"engine.ray.call_timeout_s={self.call_timeout_s:g} s (a wedged engine?)")
                continue
            ref = done[0]
            i, a, failed, _ = pending.pop(ref)
            self.load[a] -= 1
            try:
                out[i] = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # gone even after Ray's restarts: another actor takes it
                retry(i, a, failed, str(err), err)
        return [r for part in out for r in part]
