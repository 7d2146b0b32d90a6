"""torch.distributed helpers for training: a one-process group when none exists, this worker's rank and the
world size, and all-reduce of plain floats (identity with one process). torch is imported inside the functions.
"""

from __future__ import annotations

import os


def ensure_process_group(device: str) -> None:
    """A one-process torch.distributed group when none exists (DeepSpeed needs one; Ray Train makes its own)."""
    import torch.distributed as dist

    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine asserts it is set (launchers set it)
    if dist.is_initialized():
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or min) of ``values`` over all ranks; identity with one process."""
    if op not in ("sum", "min"):
        raise ValueError(f"all_reduce op: got {op!r}, expected 'sum' or 'min'")
    if world()[1] == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return t.cpu().tolist()
