"""The deterministic mix of several example sets: which groups each source holds (scanning, with filters on the
negatives), how many each contributes, the interleaved read tasks of the whole stream and the realised mix a run
reports (``<output>/mix.json``). Pure Python + pyarrow, no Ray.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Optional

from docrerank.core import storage


# ------------------------------------------------------------------------------------------ scanning
@dataclass
class Chunk:
    """Consecutive groups of one file: what one read task loads (only the row groups holding them).

    ``negative_kinds[i]`` (when scanned) is the comma-joined kinds of group i's negatives, e.g.
    ``"generated,generated,generated"``: what the realised mix counts without reading the examples again.
    """

    uri: str
    row_groups: list[int]
    group_ids: list[str]
    negative_kinds: list[str] | None = None


@dataclass(frozen=True)
class GroupFilter:
    """Which groups of a source to keep, judged on their negatives (rows with label 0); every set filter must hold.

    ``kinds``: some negative has one of these kinds; ``attributes``: some negative has one of these attributes;
    ``exclude_attributes``: no negative has one of these attributes (a null attribute matches neither list).
    """

    kinds: tuple[str, ...] | None = None
    attributes: tuple[str, ...] | None = None
    exclude_attributes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, source) -> GroupFilter | None:
        """The filter of a ``DataSource`` (None when it sets none)."""
        if not source.filtered:
            return None
        return cls(*(None if v is None else tuple(v)
                     for v in (source.kinds, source.attributes, source.exclude_attributes)))

    @property
    def columns(self) -> list[str]:
        """Example columns the filter reads besides group_id and label."""
        return (["kind"] if self.kinds else []) + (["attribute"] if self.attributes or self.exclude_attributes else [])

    def keep(self, kinds: list[str | None], attributes: list[str | None]) -> bool:
        """Whether a group whose negatives have these kinds and attributes passes."""
        if self.kinds and not any(k in self.kinds for k in kinds):
            return False
        if self.attributes and not any(a in self.attributes for a in attributes):
            return False
        return not (self.exclude_attributes and any(a in self.exclude_attributes for a in attributes))

    def describe(self) -> str:
        """The set filters, e.g. ``kinds=['mined']`` (for error messages)."""
        return ", ".join(f"{k}={list(v)}" for k, v in vars(self).items() if v is not None)


def scan_file(fs, path: str, uri: str, chunk_groups: int, group_filter: GroupFilter | None = None) -> list[Chunk]:
    """Chunks of ``chunk_groups`` groups (in file order) of one examples file, only the groups ``group_filter``
    keeps. Reads the group_id, label and kind columns (and attribute when a filter needs it)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, filesystem=fs)
    names = pf.schema_arrow.names
    missing = [c for c in ("group_id", "query", "label") if c not in names]
    if group_filter is not None:
        missing += [c for c in group_filter.columns if c not in names]
    if missing:
        raise ValueError(f"{uri}: not an examples file, missing column(s) {missing}")
    starts, start = [], 0
    for i in range(pf.num_row_groups):
        starts.append(start)
        start += pf.metadata.row_group(i).num_rows
    cols = ["group_id", "label"] + [c for c in ("kind", "attribute") if c in names and
                                    (c == "kind" or (group_filter is not None and c in group_filter.columns))]
    table = pf.read(columns=cols).to_pydict()
    n = len(table["group_id"])
    kinds = table.get("kind") or [None] * n
    attrs = table.get("attribute") or [None] * n
    rows_of: dict[str, list[int]] = {}
    for i, g in enumerate(table["group_id"]):
        rows_of.setdefault(g, []).append(i)
    groups, neg_kinds = [], []
    for g, rows in rows_of.items():
        negs = [i for i in rows if int(table["label"][i]) == 0]
        if group_filter is not None and not group_filter.keep([kinds[i] for i in negs], [attrs[i] for i in negs]):
            continue
        groups.append(g)
        neg_kinds.append(",".join(kinds[i] or "unknown" for i in negs))
    chunks = []
    for s in range(0, len(groups), chunk_groups):
        part = groups[s:s + chunk_groups]
        rgs = sorted({bisect.bisect_right(starts, r) - 1 for g in part for r in rows_of[g]})
        chunks.append(Chunk(uri, rgs, part, neg_kinds[s:s + chunk_groups]))
    return chunks


def scan_source(uri: str, chunk_groups: int, group_filter: GroupFilter | None = None,
                name: str | None = None) -> list[Chunk]:
    """Every chunk of an examples directory (or single file), in file order, only the groups ``group_filter``
    keeps; ValueError naming the source when it holds no (matching) group."""
    loc = storage.resolve(uri)
    files = [loc.path] if loc.path.endswith(".parquet") else storage.list_files(loc, suffixes=(".parquet",))
    chunks = [c for f in files for c in scan_file(loc.fs, f, storage.uri_of(loc, f), chunk_groups, group_filter)]
    label = f"data source {name!r} ({uri})" if name and name != uri else f"data source {uri!r}"
    if not files:
        raise ValueError(f"{label}: no examples Parquet files found; write them first (jobs.build_dataset writes "
                         "<output>/examples/, jobs.mine_negatives <output>/mined/)")
    if not chunks:
        why = f"no group matches the filter {group_filter.describe()}" if group_filter else "no groups"
        raise ValueError(f"{label}: {why} in {len(files)} file(s)")
    return chunks


# ------------------------------------------------------------------------------------------- mixing
def _largest_remainder(shares: list[float], total: int) -> list[int]:
    """Integers proportional to ``shares`` summing to ``total`` (largest-remainder rounding, ties to the first)."""
    quotas = [q * total for q in shares]
    out = [int(x + 1e-9) for x in quotas]
    order = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - out[i]), i))
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out


def mix_counts(sizes: list[int], weights: list[float], num_groups: int | None,
               counts: list[int | None] | None = None) -> list[int]:
    """Groups per epoch taken from each source.

    A source with a count (``counts[i]`` not None) takes exactly that many (repeating when it holds fewer). The
    others share by ``weights``: ``num_groups`` minus the counts when ``num_groups`` is given (repeating groups as
    needed), else as many as possible without repeats. Every source gets at least one group.
    """
    counts = counts if counts is not None else [None] * len(sizes)
    if len(sizes) != len(weights) or len(sizes) != len(counts) or not sizes:
        raise ValueError(f"mix: expected one weight per source, got {len(weights)} weights and {len(counts)} counts "
                         f"for {len(sizes)} sources")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"mix: every source needs groups, got sizes {sizes}")
    fixed = sum(c for c in counts if c is not None)
    free = [i for i, c in enumerate(counts) if c is None]
    out = [c if c is not None else 0 for c in counts]
    if not free:
        if num_groups is not None and num_groups != fixed:
            raise ValueError(f"mix: every source has a count, so num_groups must be their sum {fixed}, got {num_groups}")
        return out
    w = [weights[i] for i in free]
    p = [x / sum(w) for x in w]
    if num_groups is not None:
        total = num_groups - fixed
        if total < len(free):
            raise ValueError(f"mix: num_groups={num_groups} leaves {total} groups for {len(free)} weighted "
                             f"source(s) after the counts ({fixed})")
        shares = _largest_remainder(p, total)
    else:
        total = int(min(sizes[i] / q for i, q in zip(free, p)) + 1e-9)
        shares = [min(c, sizes[i]) for c, i in zip(_largest_remainder(p, total), free)]
    for i, c in zip(free, shares):
        out[i] = max(1, c)
    return out


def _source_stream(chunks: list[Chunk], count: int, rng: random.Random) -> list[Chunk]:
    """``count`` groups of one source as chunk pieces: chunk order and groups within chunks shuffled; cycles
    (reshuffled) when ``count`` exceeds the source."""
    out, left = [], count
    while left > 0:
        order = list(range(len(chunks)))
        rng.shuffle(order)
        for k in order:
            c = chunks[k]
            idx = list(range(len(c.group_ids)))
            rng.shuffle(idx)
            idx = idx[:left]
            kinds = None if c.negative_kinds is None else [c.negative_kinds[i] for i in idx]
            out.append(Chunk(c.uri, c.row_groups, [c.group_ids[i] for i in idx], kinds))
            left -= len(idx)
            if left == 0:
                break
    return out


def plan_mix(sources: list[tuple[str, float, list[Chunk]]], num_groups: Optional[int] = None, epochs: int = 1,
             seed: int = 0, counts: list[int | None] | None = None) -> list[dict[str, Any]]:
    """Read tasks of the whole training stream, in order: sources interleaved by their share, each epoch
    reshuffled. ``sources`` are (name, weight, chunks); ``counts`` (one per source, None = by weight) and
    ``num_groups`` set the groups per epoch as ``mix_counts`` says.

    Each task is ``{"uri", "row_groups", "group_ids", "seq_start", "source", "negative_kinds"}``; its groups get
    the seqs ``seq_start, seq_start + 1, ...`` in ``group_ids`` order; ``negative_kinds`` is None for chunks that
    were not scanned. Deterministic for the same inputs and seed.
    """
    sizes = [sum(len(c.group_ids) for c in chunks) for _, _, chunks in sources]
    counts = mix_counts(sizes, [w for _, w, _ in sources], num_groups, counts)
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
                          "seq_start": seq, "source": sources[i][0], "negative_kinds": piece.negative_kinds})
            seq += len(piece.group_ids)
            taken[i] += len(piece.group_ids)
            pos[i] += 1
    return tasks


def realised_mix(tasks: list[dict[str, Any]], limit: int | None = None) -> dict[str, Any]:
    """What a plan trains, per source and in total: groups, distinct groups, share of the groups, examples
    (1 positive + the negatives of each group) and negatives by kind; ``planned_groups``: all groups of the plan.

    ``limit``: count only the first ``limit`` groups of the stream (the ones a run of fixed steps consumes; with
    several workers, which groups each consumes last is approximate). Examples and negatives are counted from the
    scan (``negative_kinds``); tasks without it count groups only (``examples`` None).
    """
    per: dict[str, dict[str, Any]] = {}
    seen: dict[str, set] = {}
    planned = sum(len(t["group_ids"]) for t in tasks)
    left = planned if limit is None else min(limit, planned)
    for t in tasks:
        if left <= 0:
            break
        ids = t["group_ids"][:left]
        left -= len(ids)
        rec = per.setdefault(t["source"], {"groups": 0, "distinct_groups": 0, "share": 0.0, "examples": 0,
                                           "negatives": {}})
        rec["groups"] += len(ids)
        seen.setdefault(t["source"], set()).update((t["uri"], g) for g in ids)
        kinds = t.get("negative_kinds")
        if kinds is None:
            rec["examples"] = None
            continue
        for k in kinds[:len(ids)]:
            negs = [x for x in k.split(",") if x]
            if rec["examples"] is not None:
                rec["examples"] += 1 + len(negs)
            for x in negs:
                rec["negatives"][x] = rec["negatives"].get(x, 0) + 1
    total_groups = sum(r["groups"] for r in per.values())
    total = {"groups": total_groups, "distinct_groups": 0, "share": 1.0, "examples": 0, "negatives": {}}
    for name, rec in per.items():
        rec["distinct_groups"] = len(seen[name])
        rec["share"] = round(rec["groups"] / total_groups, 4) if total_groups else 0.0
        rec["negatives"] = dict(sorted(rec["negatives"].items()))
        total["distinct_groups"] += rec["distinct_groups"]
        total["examples"] = None if rec["examples"] is None or total["examples"] is None else \
            total["examples"] + rec["examples"]
        for k, v in rec["negatives"].items():
            total["negatives"][k] = total["negatives"].get(k, 0) + v
    total["negatives"] = dict(sorted(total["negatives"].items()))
    return {"planned_groups": planned, "sources": per, "total": total}


def record_mix(tasks: list[dict[str, Any]], output: str, limit: int | None = None) -> dict[str, Any]:
    """``realised_mix`` of a run's plan, logged and written to ``<output>/mix.json``; returns it."""
    import logging

    from docrerank.core import runtime

    mix = realised_mix(tasks, limit)
    logging.getLogger("docrerank.train").info("realised mix (%d of %d planned groups):\n%s",
                                              mix["total"]["groups"], mix["planned_groups"], format_mix(mix))
    runtime.write_json(storage.resolve(output).join("mix.json"), mix)
    return mix


def format_mix(mix: dict[str, Any]) -> str:
    """The realised mix as a table: one row per source and a total row."""
    from docrerank.core.runtime import format_table

    kinds = sorted(mix["total"]["negatives"])
    rows = [[name, r["groups"], r["distinct_groups"], f"{100 * r['share']:.1f}%", r["examples"],
             *[r["negatives"].get(k, 0) for k in kinds]]
            for name, r in list(mix["sources"].items()) + [("total", mix["total"])]]
    return format_table(["mix source", "groups", "distinct", "share", "examples", *[f"neg {k}" for k in kinds]], rows)


def plan_from_config(data_cfg, epochs: int, seed: int) -> list[dict[str, Any]]:
    """``plan_mix`` of a ``DataConfig``'s sources, each scanned once (group_id, label and kind columns, plus
    attribute when a source filters on it) and narrowed to the groups its filters keep."""
    sources = [(s.label, s.mix_weight, scan_source(s.path, data_cfg.chunk_groups, GroupFilter.of(s), s.label))
               for s in data_cfg.sources]
    names = [n for n, _, _ in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data.sources: names must be unique, got {names}")
    return plan_mix(sources, data_cfg.num_groups, epochs, seed, counts=[s.count for s in data_cfg.sources])
