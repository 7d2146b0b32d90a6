"""Examples Parquet -> packed groups: the columns training reads, the packed-group schema and ``Group``.

A group (1 positive + k negatives) is packed into ONE row (list columns, each distinct page image stored once),
so no streaming split can cut it. Each packed group carries ``seq``, its position in the mixed stream: the data
position of a run is the set of ``seq`` trained, which makes resuming exact. Pure Python + pyarrow, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from docrerank.core import storage
from docrerank.data.mix import scan_source

# Only these are read: example sets written with more columns (an old ``weight``, ``attribute``) load the same.
EXAMPLE_COLUMNS = ["group_id", "query", "page_id", "image", "image_format", "text", "label", "kind"]


def packed_schema():
    """Arrow schema of packed groups: one row per group."""
    import pyarrow as pa

    return pa.schema([
        ("seq", pa.int64()), ("source", pa.string()), ("group_id", pa.string()),
        ("queries", pa.list_(pa.string())), ("page_index", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int8())), ("kinds", pa.list_(pa.string())),
        ("page_ids", pa.list_(pa.string())), ("images", pa.list_(pa.binary())),
        ("image_formats", pa.list_(pa.string())), ("texts", pa.list_(pa.string())),
    ])


@dataclass
class Group:
    """One positive and its negatives; ``page_index[i]`` is example i's page in ``page_ids``/``images``/``texts``."""

    group_id: str
    queries: list[str]
    page_index: list[int]
    labels: list[int]
    page_ids: list[str]
    images: list[Optional[bytes]]
    texts: list[str]
    kinds: list[str] = field(default_factory=list)
    seq: int = -1
    source: str = ""

    @classmethod
    def from_row(cls, row: dict) -> Group:
        """The group of one packed row (``packed_schema()``)."""
        return cls(group_id=row["group_id"], queries=list(row["queries"]), page_index=list(row["page_index"]),
                   labels=[int(x) for x in row["labels"]], page_ids=list(row["page_ids"]),
                   images=list(row["images"]), texts=list(row["texts"]), kinds=list(row["kinds"]),
                   seq=int(row["seq"]), source=row["source"])


def pack_rows(rows: list[dict], where: str = "") -> dict:
    """Packed-group fields (no seq/source) from the example rows of one group; ValueError unless 1 positive + k>=1
    negatives."""
    gid = rows[0]["group_id"]
    labels = [int(r["label"]) for r in rows]
    if sum(labels) != 1 or len(rows) < 2:
        raise ValueError(f"group {gid!r}{where}: expected 1 positive and at least 1 negative, got "
                         f"{sum(labels)} positive(s) in {len(rows)} rows")
    page_pos: dict[str, int] = {}
    out: dict[str, list] = {k: [] for k in ("page_ids", "images", "image_formats", "texts", "page_index")}
    for r in rows:
        pid = r["page_id"]
        if pid not in page_pos:
            page_pos[pid] = len(out["page_ids"])
            out["page_ids"].append(pid)
            out["images"].append(r.get("image"))
            out["image_formats"].append(r.get("image_format") or "")
            out["texts"].append(r.get("text") or "")
        out["page_index"].append(page_pos[pid])
    return {"group_id": gid, "queries": [r["query"] for r in rows], "labels": labels,
            "kinds": [r.get("kind") or "" for r in rows], **out}


def read_task(task: dict):
    """Packed groups (``packed_schema()``) of one read task (``{"uri", "row_groups", "group_ids", "seq_start",
    "source"}``, as ``mix.plan_mix`` makes them), in the task's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loc = storage.resolve(task["uri"])
    pf = pq.ParquetFile(loc.path, filesystem=loc.fs)
    cols = [c for c in EXAMPLE_COLUMNS if c in pf.schema_arrow.names]
    table = pf.read_row_groups(list(task["row_groups"]), columns=cols)
    wanted = list(task["group_ids"])
    keep = set(wanted)
    rows_of: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        if r["group_id"] in keep:
            rows_of.setdefault(r["group_id"], []).append(r)
    out = []
    for k, gid in enumerate(wanted):
        if gid not in rows_of:
            raise ValueError(f"{task['uri']}: group {gid!r} not found in row groups {task['row_groups']}")
        packed = pack_rows(rows_of[gid], where=f" in {task['uri']}")
        out.append({"seq": task["seq_start"] + k, "source": task["source"], **packed})
    return pa.Table.from_pylist(out, schema=packed_schema())


def read_groups(uri: str, max_groups: Optional[int] = None, chunk_groups: int = 64) -> list[Group]:
    """Groups of an examples directory in file order (validation sets, tests, runs without Ray)."""
    groups: list[Group] = []
    for chunk in scan_source(uri, chunk_groups):
        task = {"uri": chunk.uri, "row_groups": chunk.row_groups, "group_ids": chunk.group_ids,
                "seq_start": len(groups), "source": uri}
        groups += [Group.from_row(r) for r in read_task(task).to_pylist()]
        if max_groups is not None and len(groups) >= max_groups:
            return groups[:max_groups]
    return groups


def iter_plan(tasks: list[dict[str, Any]]) -> Iterator[Group]:
    """The groups of a plan, in order, read task by task (runs without Ray)."""
    for task in tasks:
        for row in read_task(task).to_pylist():
            yield Group.from_row(row)
