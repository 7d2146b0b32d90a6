"""What runs inside the isolated child process (:mod:`docrerank.core.isolate`): probe a file, render a task and
write its shards, or render some pages and hand the rows back. Plain data in, plain data out.

A whole render task runs in one call and the child writes the task's shards itself, so page images never cross the
pipe between processes and the worker has nothing left to do between two tasks. When that call fails (a crash, a
hang, the memory limit), the worker renders the task's pages one call per page with :func:`render_pages` to find the
page that did it, and writes the shards from the rows it got back (``docrerank.render.workers``).
"""

from __future__ import annotations

from collections import Counter

from docrerank.render.document import (
    IngestError,
    Passwords,
    RenderSettings,
    doc_id_of,
    probe_document,
    quarantine_row,
    render_document_pages,
)


class ShardWriteError(RuntimeError):
    """Writing a task's shards failed for a reason other than memory: the output is unusable, not the input."""


def warm_up() -> None:
    """Import what rendering and writing need, so a worker's first task does not wait for it."""
    import pyarrow.fs  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pymupdf  # noqa: F401


def probe_file(source_uri: str, passwords: dict, settings: dict) -> dict:
    """Read and probe one file: ``{"doc": row}`` or ``{"quarantine": row}``."""
    from docrerank.core import storage

    pw, st = Passwords(**passwords), RenderSettings(**settings)
    try:
        data = storage.read_bytes(storage.resolve(source_uri))
    except Exception as e:
        return {"quarantine": quarantine_row(source_uri, None, None, "probe", "unreadable", f"{type(e).__name__}: {e}")}
    try:
        return {"doc": probe_document(data, source_uri, pw, st)}
    except IngestError as e:
        return {"quarantine": quarantine_row(source_uri, doc_id_of(data), None, "probe", e.reason, str(e))}


def render_pages(doc_row: dict, page_numbers: list[int], passwords: dict, settings: dict) -> tuple[list[dict], list[dict]]:
    """Read one file and render some of its pages: (page rows, quarantine rows)."""
    from docrerank.core import faults, storage

    uri = doc_row["source_uri"]
    faults.at_page(uri, page_numbers)
    try:
        data = storage.read_bytes(storage.resolve(uri))
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        return [], [quarantine_row(uri, doc_row["doc_id"], p, "render", "unreadable", msg) for p in page_numbers]
    return render_document_pages(data, doc_row, page_numbers, Passwords(**passwords), RenderSettings(**settings))


def write_task_shards(output: str, task_id: str, rows: list[dict], bad: list[dict]) -> dict:
    """Write task ``task_id``'s ``pages/`` shard (and ``quarantine/`` shard when ``bad``), the pages shard last;
    return the task's summary (pages, quarantined by reason, image bytes)."""
    import pyarrow as pa

    from docrerank.core import storage
    from docrerank.core.raydata import write_shards
    from docrerank.core.schema import pages_schema, quarantine_schema

    tables = {"pages": pa.Table.from_pylist(rows, schema=pages_schema())}
    if bad:
        tables["quarantine"] = pa.Table.from_pylist(bad, schema=quarantine_schema())
    write_shards(storage.resolve(output), f"part-{task_id}.parquet", tables, marker="pages")  # pages last: done
    return {"task_id": task_id, "pages": len(rows), "quarantined": dict(Counter(q["error"] for q in bad)),
            "image_bytes": sum(len(r["image"]) for r in rows)}


def render_task(task_id: str, items: list[dict], output: str, passwords: dict, settings: dict) -> dict:
    """Render every item (``{"doc": documents row, "pages": [...]}``) of one task and write its shards; return the
    summary of :func:`write_task_shards`. A failed write raises ShardWriteError (MemoryError as itself)."""
    rows, bad = [], []
    for item in items:
        r, b = render_pages(item["doc"], item["pages"], passwords, settings)
        rows += r
        bad += b
    try:
        return write_task_shards(output, task_id, rows, bad)
    except MemoryError:
        raise
    except Exception as e:
        raise ShardWriteError(f"writing shard part-{task_id}.parquet under {output}: {type(e).__name__}: {e}") from None
