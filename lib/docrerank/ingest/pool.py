"""A fixed pool of ingest workers on the Ray cluster: one actor per CPU, each with its isolated child
(:class:`docrerank.ingest.workers.IngestWorker`), fed by the driver with two calls in flight per actor.

Why plain actors and not a Ray Data ``map_batches``: an ingest call is a whole task (the child renders and writes its
shards) and returns a few bytes, so there is nothing for Ray Data to stream; its executor loop and helper actors
cost CPU the render processes need (measured in ``bench/bench_ingest.py``). The second call queued on each actor
means a worker never waits for the driver between two tasks. A worker process that dies (a lost node) is restarted
and its queued calls retried; every call is idempotent (shards under deterministic names, written atomically).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

IN_FLIGHT = 2  # calls queued per actor: one running, one waiting, so the child never idles between tasks
RESTARTS = 3  # a worker process that dies (node lost, killed) is restarted this often, its calls retried


class WorkerPool:
    """``size`` IngestWorker actors, started on construction (asynchronously); use as a context manager.

    Args:
        size: number of actors (one CPU each).
        worker_kwargs: keyword arguments of ``IngestWorker``.
    """

    def __init__(self, size: int, worker_kwargs: dict[str, Any]):
        import ray

        from docrerank.ingest.workers import IngestWorker

        if size < 1:
            raise ValueError(f"size: expected >= 1 workers, got {size}")
        remote = ray.remote(num_cpus=1, max_restarts=RESTARTS, max_task_retries=RESTARTS)(IngestWorker)
        spread = remote.options(scheduling_strategy="SPREAD")
        self.actors = [spread.remote(**worker_kwargs, warm=True) for _ in range(size)]

    def map(self, method: str, calls: Iterable[tuple]) -> Iterator[tuple[int, Any]]:
        """Run ``method(*args)`` for each ``args`` in ``calls`` on the actors; yield ``(index of the call, result)``
        as calls finish (not in order). An exception raised by a call is raised here."""
        import ray

        todo = enumerate(calls)
        pending: dict[Any, tuple[int, Any]] = {}

        def submit(actor) -> None:
            nxt = next(todo, None)
            if nxt is not None:
                pending[getattr(actor, method).remote(*nxt[1])] = (nxt[0], actor)

        for _ in range(IN_FLIGHT):
            for actor in self.actors:
                submit(actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            submit(actor)
            yield index, ray.get(done[0])

    def close(self) -> None:
        """Stop the actors (their child processes go with them)."""
        import ray

        try:  # politely first: each actor stops its child
            ray.get([actor.close.remote() for actor in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - a dead or stuck actor is killed below all the same
            pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
