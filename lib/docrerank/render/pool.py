"""A fixed pool of ingest workers on the Ray cluster: one actor per CPU, each with its isolated child
(:class:`docrerank.render.workers.IngestWorker`), fed by the driver with two calls in flight per actor.

Why plain actors and not a Ray Data ``map_batches``: an ingest call is a whole task (the child renders and writes its
shards) and returns a few bytes, so there is nothing for Ray Data to stream; its executor loop and helper actors
cost CPU the render processes need (measured in ``bench/bench_ingest.py``). The second call queued on each actor
means a worker never waits for the driver between two tasks. A worker process that dies (a lost node) is restarted
and its queued calls retried; every call is idempotent (shards under deterministic names, written atomically).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("docrerank.ingest")

IN_FLIGHT = 2  # calls queued per actor: one running, one waiting, so the child never idles between tasks
RESTARTS = 3  # a worker process that dies (node lost, killed) is restarted this often, its calls retried
WAIT_LOG_S = 60.0  # while no call finishes and workers are still starting, say so this often


class WorkerPool:
    """``size`` IngestWorker actors, started on construction (asynchronously); use as a context manager.

    Args:
        size: number of actors (one CPU each).
        worker_kwargs: keyword arguments of ``IngestWorker``.
    """

    def __init__(self, size: int, worker_kwargs: dict[str, Any]):
        import ray

        from docrerank.render.workers import IngestWorker

        if size < 1:
            raise ValueError(f"size: expected >= 1 workers, got {size}")
        remote = ray.remote(num_cpus=1, max_restarts=RESTARTS, max_task_retries=RESTARTS)(IngestWorker)
        self._spread = remote.options(scheduling_strategy="SPREAD")
        self._kwargs = worker_kwargs
        self.actors: list[Any] = []
        self._starting: dict[Any, Any] = {}  # ready() ref -> actor: done once the actor is up
        self._ready: list[Any] = []
        self.grow(size)

    def grow(self, n: int) -> None:
        """Ask for ``n`` more workers (pending ones are what an autoscaler adds nodes for); they get calls once up."""
        for _ in range(max(0, n)):
            actor = self._spread.remote(**self._kwargs, warm=True)
            self.actors.append(actor)
            self._starting[actor.ready.remote()] = actor

    def map(self, method: str, calls: Iterable[tuple]) -> Iterator[tuple[int, Any]]:
        """Run ``method(*args)`` for each ``args`` in ``calls`` on the actors; yield ``(index of the call, result)``
        as calls finish (not in order). Only actors that have started get calls, so a worker the cluster cannot
        place yet holds up nothing. An exception raised by a call (or by starting a worker) is raised here."""
        import ray

        todo = enumerate(calls)
        running: dict[Any, tuple[int, Any]] = {}
        exhausted = False

        def submit(actor) -> None:
            nonlocal exhausted
            nxt = None if exhausted else next(todo, None)
            if nxt is None:
                exhausted = True
            else:
                running[getattr(actor, method).remote(*nxt[1])] = (nxt[0], actor)

        for actor in self._ready:
            for _ in range(IN_FLIGHT):
                submit(actor)
        waited = 0.0
        while running or (not exhausted and self._starting):
            done, _ = ray.wait([*running, *self._starting], num_returns=1, timeout=WAIT_LOG_S)
            if not done:
                waited += WAIT_LOG_S
                log.info("waiting for ingest workers: %d of %d started after %.0fs", len(self._ready),
                         len(self.actors), waited)
                continue
            ref = done[0]
            if ref in self._starting:
                actor = self._starting.pop(ref)
                ray.get(ref)
                self._ready.append(actor)
                for _ in range(IN_FLIGHT):
                    submit(actor)
                continue
            index, actor = running.pop(ref)
            submit(actor)
            yield index, ray.get(ref)

    def close(self) -> None:
        """Stop the actors (their child processes go with them)."""
        import ray

        try:  # politely first: each started actor stops its child
            ray.get([actor.close.remote() for actor in self._ready], timeout=30)
        except Exception:  # noqa: BLE001 - a dead or stuck actor is killed below all the same
            pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self._ready, self._starting = [], [], {}

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
