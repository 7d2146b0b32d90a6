"""Checkpoints off the training thread's critical path: the engine's state is snapshotted in memory (a copy of every
tensor, ~0.15 s for MiniLM's 347 MiB of ZeRO-2 state on one CPU core) where training stops for it, and written to
disk later, in Ray Train's checkpoint upload thread, while training goes on.

    writes = snapshot_checkpoint(engine, directory, tag)   # training thread: DeepSpeed's files, state in memory
    write_snapshot(writes)                                 # any thread: the same files DeepSpeed would have written

``snapshot_checkpoint`` runs the engine's own ``save_checkpoint`` (a DeepSpeed engine or ``step.PlainEngine``) with a
checkpoint engine whose ``save`` copies the state instead of writing it, so the files, their names and their
contents are exactly DeepSpeed's and ``engine.load_checkpoint`` reads them as before. torch.save releases the GIL
while it writes tensor data, so the write does not hold back the training thread (bench/bench_train_loop.py).

torch and DeepSpeed are imported inside the functions that use them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def clone_state(obj: Any) -> Any:
    """``obj`` with every tensor copied (detached, same device and dtype) inside dicts, lists and tuples; other values
    are kept as they are (numbers, strings, configs: nothing the next step changes in place)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, clone_state(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [clone_state(v) for v in obj]
    if isinstance(obj, tuple):
        items = [clone_state(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def _snapshot_engine(writes: list):
    """A DeepSpeed checkpoint engine whose ``save`` appends ``(path, copy of the state)`` to ``writes``."""
    try:
        from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine
    except ImportError:  # PlainEngine without DeepSpeed installed: the same interface, duck-typed
        CheckpointEngine = object  # type: ignore[assignment,misc]

    class SnapshotEngine(CheckpointEngine):  # type: ignore[misc,valid-type]
        def __init__(self):
            self.name = "DocrerankSnapshot"

        def create(self, info) -> None:
            pass

        def save(self, state_dict, path: str) -> None:
            writes.append((str(path), clone_state(state_dict)))

        def makedirs(self, path, exist_ok=False) -> None:
            os.makedirs(path, exist_ok=exist_ok)

        def load(self, path: str, map_location=None):
            raise RuntimeError("the snapshot checkpoint engine only saves")

        def commit(self, info) -> bool:
            return True

        def is_data_parallel_writer(self, dp_rank) -> bool:
            return dp_rank == 0

        def is_decoupled(self) -> bool:
            return False

        def preserves_storage_sharing(self) -> bool:
            return True

    return SnapshotEngine()


def snapshot_checkpoint(engine, directory: str, tag: str) -> list[tuple[str, Any]]:
    """Run ``engine.save_checkpoint(directory, tag)`` (a collective under DeepSpeed: every rank calls it) with the
    state copied into memory instead of written: the small files (DeepSpeed's ``latest``, its recovery script, the
    directories) are in ``directory`` when this returns, the state files are the returned ``(path, state)`` pairs
    for ``write_snapshot``."""
    writes: list[tuple[str, Any]] = []
    before = engine.checkpoint_engine
    engine.checkpoint_engine = _snapshot_engine(writes)
    try:
        engine.save_checkpoint(directory, tag=tag, exclude_frozen_parameters=True)
    finally:
        engine.checkpoint_engine = before
    return writes


def write_snapshot(writes: list[tuple[str, Any]]) -> None:
    """Write the state files ``snapshot_checkpoint`` returned, as DeepSpeed's torch checkpoint engine does (torch.save,
    zip serialization), each to a temporary name first; empties ``writes`` (the copies are freed as they go)."""
    import torch

    while writes:
        path, state = writes.pop(0)
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        del state
        os.replace(tmp, path)


def move_tree(src: str, dest: str) -> None:
    """Move every file under ``src`` to the same relative path under ``dest`` (created; files already there are
    replaced, other files kept: ranks merge their files into one checkpoint) and remove ``src``. Both on one local
    filesystem: renames, no copy."""
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = os.path.normpath(os.path.join(dest, rel))
        os.makedirs(target, exist_ok=True)
        for f in files:
            os.replace(os.path.join(root, f), os.path.join(target, f))
    shutil.rmtree(src, ignore_errors=True)


def same_filesystem(a: str, b: str) -> bool:
    """Whether two existing local paths are on one filesystem (a rename between them does not copy)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def is_local(fs) -> bool:
    """Whether a pyarrow filesystem is the local one."""
    import pyarrow.fs

    return isinstance(fs, pyarrow.fs.LocalFileSystem)


def clear_dir(path: str | Path) -> None:
    """Remove a local directory if it exists (leftovers of a run that stopped mid-write)."""
    shutil.rmtree(path, ignore_errors=True)
