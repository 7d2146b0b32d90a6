"""Examples Parquet -> whole groups -> micro-batches; the deterministic mix plan of several example sets.

A group (1 positive + k negatives) is packed into ONE row (list columns, each distinct page image stored once),
so no streaming split can cut it. Each packed group carries ``seq``, its position in the mixed stream: the data
position of a run is the set of ``seq`` trained, which makes resuming exact. Pure Python + pyarrow, no Ray.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

from docrerank import storage

EXAMPLE_COLUMNS = ["group_id", "query", "page_id", "image", "image_format", "text", "label", "kind", "weight"]


def packed_schema():
    """Arrow schema of packed groups: one row per group."""
    import pyarrow as pa

    return pa.schema([
        ("seq", pa.int64()), ("source", pa.string()), ("group_id", pa.string()),
        ("queries", pa.list_(pa.string())), ("page_index", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int8())), ("kinds", pa.list_(pa.string())), ("weights", pa.list_(pa.float32())),
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
    weights: list[float]
    page_ids: list[str]
    images: list[Optional[bytes]]
    texts: list[str]
    kinds: list[str] = field(default_factory=list)
    seq: int = -1
    source: str = ""

    @classmethod
    def from_row(cls, row: dict) -> "Group":
        return cls(group_id=row["group_id"], queries=list(row["queries"]), page_index=list(row["page_index"]),
                   labels=[int(x) for x in row["labels"]], weights=[float(x) for x in row["weights"]],
                   page_ids=list(row["page_ids"]), images=list(row["images"]), texts=list(row["texts"]),
                   kinds=list(row["kinds"]), seq=int(row["seq"]), source=row["source"])


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
    w = [1.0 if r.get("weight") is None else float(r["weight"]) for r in rows]
    return {"group_id": gid, "queries": [r["query"] for r in rows], "labels": labels, "weights": w,
            "kinds": [r.get("kind") or "" for r in rows], **out}


# ------------------------------------------------------------------------------------------ scanning
@dataclass
class Chunk:
    """Consecutive groups of one file: what one read task loads (only the row groups holding them)."""

    uri: str
    row_groups: list[int]
    group_ids: list[str]


def scan_file(fs, path: str, uri: str, chunk_groups: int) -> list[Chunk]:
    """Chunks of ``chunk_groups`` groups (in file order) from the group_id column of one examples file."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, filesystem=fs)
    missing = [c for c in ("group_id", "query", "label") if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{uri}: not an examples file, missing column(s) {missing}")
    starts, start = [], 0
    for i in range(pf.num_row_groups):
        starts.append(start)
        start += pf.metadata.row_group(i).num_rows
    ids = pf.read(columns=["group_id"]).column("group_id").to_pylist()
    rows_of: dict[str, list[int]] = {}
    for i, g in enumerate(ids):
        rows_of.setdefault(g, []).append(i)
    groups = list(rows_of)
    chunks = []
    for s in range(0, len(groups), chunk_groups):
        part = groups[s:s + chunk_groups]
        rgs = sorted({bisect.bisect_right(starts, r) - 1 for g in part for r in rows_of[g]})
        chunks.append(Chunk(uri, rgs, part))
    return chunks


def scan_source(uri: str, chunk_groups: int) -> list[Chunk]:
    """Every chunk of an examples directory (or single file), in file order; ValueError when it holds none."""
    loc = storage.resolve(uri)
    files = [loc.path] if loc.path.endswith(".parquet") else storage.list_files(loc, suffixes=(".parquet",))
    chunks = [c for f in files for c in scan_file(loc.fs, f, storage.uri_of(loc, f), chunk_groups)]
    if not chunks:
        raise ValueError(f"data source {uri!r}: no examples Parquet files found")
    return chunks


# ------------------------------------------------------------------------------------------- mixing
def mix_counts(sizes: list[int], weights: list[float], num_groups: Optional[int]) -> list[int]:
    """Groups taken from each source: proportional to ``weights``; by default as many as possible without repeats."""
    if len(sizes) != len(weights) or not sizes:
        raise ValueError(f"mix: expected one weight per source, got {len(weights)} for {len(sizes)}")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"mix: every source needs groups, got sizes {sizes}")
    p = [w / sum(weights) for w in weights]
    total = num_groups if num_groups is not None else int(min(n / q for n, q in zip(sizes, p)) + 1e-9)
    counts = [int(round(q * total)) for q in p]
    if num_groups is None:
        counts = [min(c, n) for c, n in zip(counts, sizes)]
    return [max(1, c) for c in counts]


def _source_stream(chunks: list[Chunk], count: int, rng: random.Random) -> list[Chunk]:
    """``count`` groups of one source as chunk pieces: chunk order and groups within chunks shuffled; cycles
    (reshuffled) when ``count`` exceeds the source."""
    out, left = [], count
    while left > 0:
        order = list(range(len(chunks)))
        rng.shuffle(order)
        for k in order:
            ids = list(chunks[k].group_ids)
            rng.shuffle(ids)
            ids = ids[:left]
            out.append(Chunk(chunks[k].uri, chunks[k].row_groups, ids))
            left -= len(ids)
            if left == 0:
                break
    return out


def plan_mix(sources: list[tuple[str, float, list[Chunk]]], num_groups: Optional[int] = None, epochs: int = 1,
             seed: int = 0) -> list[dict[str, Any]]:
    """Read tasks of the whole training stream, in order: sources interleaved by weight, each epoch reshuffled.

    Each task is ``{"uri", "row_groups", "group_ids", "seq_start", "source"}``; its groups get the seqs
    ``seq_start, seq_start + 1, ...`` in ``group_ids`` order. Deterministic for the same inputs and seed.
    """
    sizes = [sum(len(c.group_ids) for c in chunks) for _, _, chunks in sources]
    counts = mix_counts(sizes, [w for _, w, _ in sources], num_groups)
    tasks, seq = [], 0
    for epoch in range(epochs):
        streams = [_source_stream(chunks, n, random.Random(f"{seed}/{epoch}/{name}"))
                   for (name, _, chunks), n in zip(sources, counts)]
        taken, pos = [0] * len(sources), [0] * len(sources)
        while True:
            live = [i for i in range(len(sources)) if pos[i] < len(streams[i])]
            if not live:
                break
            # Deficit round-robin: the source furthest behind its share goes next.
            i = min(live, key=lambda j: ((taken[j] + len(streams[j][pos[j]].group_ids)) / counts[j], j))
            piece = streams[i][pos[i]]
            tasks.append({"uri": piece.uri, "row_groups": piece.row_groups, "group_ids": piece.group_ids,
                          "seq_start": seq, "source": sources[i][0]})
            seq += len(piece.group_ids)
            taken[i] += len(piece.group_ids)
            pos[i] += 1
    return tasks


def read_task(task: dict):
    """Packed groups (``packed_schema()``) of one read task, in the task's order."""
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


# ------------------------------------------------------------------------------------------ batching
@dataclass
class Batch:
    """Flat examples of whole groups: example i asks ``queries[i]`` of page ``page_of[i]``."""

    queries: list[str]
    page_of: list[int]
    page_ids: list[str]
    images: list[Optional[bytes]]
    texts: list[str]
    labels: Any  # LongTensor (N,)
    weights: Any  # FloatTensor (N,)
    group_index: Any  # LongTensor (N,): 0..G-1
    seqs: list[int]
    group_ids: list[str]

    def __len__(self) -> int:
        return len(self.queries)


def collate_groups(groups: list[Group]) -> Batch:
    """One batch from whole groups; a page shared by several groups of the batch is stored once."""
    import torch

    if not groups:
        raise ValueError("collate_groups: expected at least one group, got none")
    queries, page_of, labels, weights, gidx = [], [], [], [], []
    page_ids: list[str] = []
    images: list[Optional[bytes]] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for g_i, g in enumerate(groups):
        for q, p, lab, w in zip(g.queries, g.page_index, g.labels, g.weights):
            pid = g.page_ids[p]
            if pid not in seen:
                seen[pid] = len(page_ids)
                page_ids.append(pid)
                images.append(g.images[p])
                texts.append(g.texts[p])
            queries.append(q)
            page_of.append(seen[pid])
            labels.append(lab)
            weights.append(w)
            gidx.append(g_i)
    return Batch(queries=queries, page_of=page_of, page_ids=page_ids, images=images, texts=texts,
                 labels=torch.tensor(labels, dtype=torch.long), weights=torch.tensor(weights, dtype=torch.float32),
                 group_index=torch.tensor(gidx, dtype=torch.long), seqs=[g.seq for g in groups],
                 group_ids=[g.group_id for g in groups])


def iter_group_batches(groups: Iterable[Group], groups_per_batch: int,
                       drop_last: bool = False) -> Iterator[list[Group]]:
    """Lists of ``groups_per_batch`` whole groups (the last one shorter unless ``drop_last``)."""
    buf: list[Group] = []
    for g in groups:
        buf.append(g)
        if len(buf) == groups_per_batch:
            yield buf
            buf = []
    if buf and not drop_last:
        yield buf


@dataclass
class DataPosition:
    """Which groups of the stream (by ``seq``) a run has trained: every seq below ``watermark`` plus ``extra``.

    Workers consume the stream nearly in order, so ``extra`` stays small; a resumed run skips exactly these.
    """

    watermark: int = 0
    extra: set = field(default_factory=set)

    def add(self, seqs: Iterable[int]) -> None:
        self.extra.update(int(s) for s in seqs)
        while self.watermark in self.extra:
            self.extra.remove(self.watermark)
            self.watermark += 1
        self.extra = {s for s in self.extra if s >= self.watermark}

    def done(self, seq: int) -> bool:
        return seq < self.watermark or seq in self.extra

    @property
    def size(self) -> int:
        """Groups trained."""
        return self.watermark + len(self.extra)

    def to_json(self) -> dict:
        return {"watermark": self.watermark, "extra": sorted(self.extra)}

    @classmethod
    def from_json(cls, data: dict) -> "DataPosition":
        return cls(int(data["watermark"]), set(int(s) for s in data.get("extra", [])))


def plan_from_config(data_cfg, epochs: int, seed: int) -> list[dict[str, Any]]:
    """``plan_mix`` of a ``DataConfig``'s sources (scanned once, only their group_id columns read)."""
    sources = [(s.name or s.path, s.weight, scan_source(s.path, data_cfg.chunk_groups)) for s in data_cfg.sources]
    names = [n for n, _, _ in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data.sources: names must be unique, got {names}")
    return plan_mix(sources, data_cfg.num_groups, epochs, seed)


def iter_plan(tasks: list[dict[str, Any]]) -> Iterator[Group]:
    """The groups of a plan, in order, read task by task (runs without Ray)."""
    for task in tasks:
        for row in read_task(task).to_pylist():
            yield Group.from_row(row)
