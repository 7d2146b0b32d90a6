"""The ingest's workers: each drives one isolated child process (:mod:`docrerank.core.isolate`) and turns what
goes wrong in it into quarantine rows with a reason. No Ray here; ``docrerank.render.run`` places them on the cluster.

Rendering a task is one call: the child renders every page and writes the task's shards itself
(:func:`docrerank.render.child.render_task`). When that call crashes, hangs or hits the memory limit, the task is
rendered again one page per call, so only the page that did it is lost (quarantined as ``worker_crash``,
``timeout`` or ``memory_limit``), and the worker writes the shards from the rows it got back.
"""

from __future__ import annotations

import time

CHILD = "docrerank.render.child"


class IngestWorker:
    """Probes files and renders tasks in an isolated child; see the module docstring.

    Args:
        output: the job's output directory or URI (shards go under ``pages/`` and ``quarantine/``).
        passwords: ``Passwords`` as a dict; settings: ``RenderSettings`` as a dict.
        memory_mb: the child's address-space limit in MiB (0: none); timeout_s: the limit of one call.
        warm: start the child and load its libraries now rather than at the first call.
    """

    def __init__(self, output: str, passwords: dict, settings: dict, memory_mb: int, timeout_s: float,
                 warm: bool = False):
        from docrerank.core.isolate import IsolatedWorker

        self.output, self.passwords, self.settings, self.timeout_s = output, passwords, settings, timeout_s
        # Each new child loads its libraries before its first call, outside that call's timeout.
        self.worker = IsolatedWorker(memory_limit_mb=memory_mb, warmup=(f"{CHILD}:warm_up", ()))
        if warm:  # now (on a pool: while the driver still probes and plans), not at the first task
            try:
                self.worker.start()
            except Exception:  # noqa: BLE001 - only an optimisation: the first call starts a fresh child and says why
                self.worker.close(kill=True)

    def close(self) -> None:
        """Stop the child process."""
        self.worker.close()

    def ready(self) -> bool:
        """True: the worker is constructed (its child started, when ``warm``)."""
        return True

    # ------------------------------------------------------------------------------------------------ probe
    def probe(self, uris: list[str]) -> list[dict]:
        """``{"doc": documents row}`` or ``{"quarantine": row}`` for each URI, in order."""
        from docrerank.core.isolate import ChildCrashed, ChildTimeout, RemoteError
        from docrerank.render.document import quarantine_row

        out = []
        for uri in uris:
            try:
                res = self.worker.call(f"{CHILD}:probe_file", uri, self.passwords, self.settings, timeout=self.timeout_s)
            except ChildCrashed as e:
                res = {"quarantine": quarantine_row(uri, None, None, "probe", "worker_crash", str(e))}
            except ChildTimeout as e:
                res = {"quarantine": quarantine_row(uri, None, None, "probe", "timeout", str(e))}
            except RemoteError as e:
                reason = "memory_limit" if e.exc_type == "MemoryError" else "corrupt"
                res = {"quarantine": quarantine_row(uri, None, None, "probe", reason, str(e))}
            out.append(res)
        return out

    # ----------------------------------------------------------------------------------------------- render
    def render(self, task_id: str, items: list[dict]) -> dict:
        """Render one task (``items``: ``[{"doc": documents row, "pages": [...]}, ...]``) and write its shards;
        return its summary (``task_id``, ``pages``, ``quarantined`` by reason, ``image_bytes``, ``seconds``).

        Raises RuntimeError when the shards cannot be written (the output, not an input, is at fault)."""
        from docrerank.core.isolate import ChildCrashed, ChildTimeout, RemoteError

        t0 = time.perf_counter()
        try:
            summary = self.worker.call(f"{CHILD}:render_task", task_id, items, self.output, self.passwords,
                                       self.settings, timeout=self.timeout_s)
        except RemoteError as e:
            if e.exc_type == "ShardWriteError":
                raise RuntimeError(str(e)) from None
            summary = None
        except (ChildCrashed, ChildTimeout):
            summary = None
        if summary is None:  # the task failed as a whole: one page per call finds the page that did it
            summary = self._render_per_page(task_id, items)
        return {**summary, "seconds": time.perf_counter() - t0}

    def _render_per_page(self, task_id: str, items: list[dict]) -> dict:
        """Render ``items`` one page per call, rows sent back, and write the task's shards here."""
        from docrerank.render.child import write_task_shards

        rows, bad = [], []
        for item in items:
            for p in item["pages"]:
                r, b = self._page(item["doc"], p)
                rows += r
                bad += b
        return write_task_shards(self.output, task_id, rows, bad)

    def _page(self, doc: dict, page: int) -> tuple[list[dict], list[dict]]:
        """(page rows, quarantine rows) of one page; a failed call quarantines it with the reason."""
        from docrerank.core.isolate import ChildCrashed, ChildTimeout, RemoteError
        from docrerank.render.document import quarantine_row

        try:
            return self.worker.call(f"{CHILD}:render_pages", doc, [page], self.passwords, self.settings,
                                    timeout=self.timeout_s)
        except (ChildCrashed, ChildTimeout, RemoteError) as e:
            if isinstance(e, ChildCrashed):
                reason = "worker_crash"
            elif isinstance(e, ChildTimeout):
                reason = "timeout"
            else:
                reason = "memory_limit" if e.exc_type == "MemoryError" else "render_error"
            return [], [quarantine_row(doc["source_uri"], doc["doc_id"], page, "render", reason, f"page {page}: {e}")]
