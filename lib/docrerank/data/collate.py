"""Whole groups -> micro-batches: ``Batch`` (flat examples, each distinct page once) and the grouping of a group
stream into batches. A group is never split across batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from docrerank.data.examples import Group


@dataclass
class Batch:
    """Flat examples of whole groups: example i asks ``queries[i]`` of page ``page_of[i]``."""

    queries: list[str]
    page_of: list[int]
    page_ids: list[str]
    images: list[Optional[bytes]]
    texts: list[str]
    labels: Any  # LongTensor (N,)
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
    queries, page_of, labels, gidx = [], [], [], []
    page_ids: list[str] = []
    images: list[Optional[bytes]] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for g_i, g in enumerate(groups):
        for q, p, lab in zip(g.queries, g.page_index, g.labels):
            pid = g.page_ids[p]
            if pid not in seen:
                seen[pid] = len(page_ids)
                page_ids.append(pid)
                images.append(g.images[p])
                texts.append(g.texts[p])
            queries.append(q)
            page_of.append(seen[pid])
            labels.append(lab)
            gidx.append(g_i)
    return Batch(queries=queries, page_of=page_of, page_ids=page_ids, images=images, texts=texts,
                 labels=torch.tensor(labels, dtype=torch.long), group_index=torch.tensor(gidx, dtype=torch.long),
                 seqs=[g.seq for g in groups], group_ids=[g.group_id for g in groups])


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
