"""The DeepSpeed config, built by a pure function from the training config (no DeepSpeed import here)."""

from __future__ import annotations

from typing import Any


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> bf16 on GPU, fp32 on CPU; an explicit half precision on CPU is refused."""
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if device == "cpu" and precision == "fp16":
        raise ValueError("deepspeed.precision: fp16 needs a GPU, got device cpu (use fp32 or bf16)")
    return precision


def warmup_steps_for(warmup_steps: int, total_steps: int) -> int:
    """Warm-up clamped to the run: at most half of it, so a short run still decays."""
    return max(0, min(warmup_steps, total_steps // 2))


def build_deepspeed_config(
    *,
    stage: int,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    total_steps: int,
    device: str,
    precision: str = "auto",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    grad_clip: float = 1.0,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    bucket_size: int = 200_000_000,
    torch_adam: bool | None = None,
) -> dict[str, Any]:
    """A DeepSpeed config dict: ZeRO ``stage``, AdamW, precision, clipping, batch sizes.

    ``micro_batch_size`` is the nominal number of examples per worker and micro-batch (DeepSpeed uses it for
    bookkeeping only; batches are assembled from whole groups by the caller). ``torch_adam``: torch's AdamW instead
    of DeepSpeed's (``choose_adam`` decides it on the worker); default, on CPU only (DeepSpeed's fused Adam is a
    CUDA kernel). On CPU precision is fp32. The learning-rate schedule (linear warm-up
    then linear decay, ``lr_multiplier``) is handed to ``deepspeed.initialize`` as a client scheduler built by
    ``make_scheduler``: DeepSpeed's own WarmupDecayLR runs the first two updates at the minimum learning rate
    and needs at least two warm-up steps, which wastes the start of short runs.
    """
    if stage not in (2, 3):
        raise ValueError(f"stage: got {stage!r}, expected 2 or 3")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: got {device!r}, expected 'cpu' or 'cuda'")
    for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum),
                        ("world_size", world_size), ("total_steps", total_steps)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if offload_params and stage != 3:
        raise ValueError(f"offload_params needs stage 3, got stage {stage}")
    precision = resolve_precision(precision, device)
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": device == "cuda",
        "contiguous_gradients": True,
        "reduce_bucket_size": bucket_size,
    }
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=bucket_size, reduce_scatter=True)
    else:
        zero.update(
            stage3_prefetch_bucket_size=bucket_size,
            stage3_param_persistence_threshold=100_000,
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "cuda"}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": device == "cuda"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(betas),
                "eps": eps,
                "weight_decay": weight_decay,
                # Fused Adam is a CUDA kernel; on CPU (and with CPU offload DeepSpeed picks its own) use torch's.
                "torch_adam": device == "cpu" if torch_adam is None else (torch_adam or device == "cpu"),
            },
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if device == "cpu":
        # torch's fused CPU AdamW kernel: one pass over the flat ZeRO partition instead of ~10 whole-tensor ops with
        # temporaries (0.2 -> ~0.05 s per step for MiniLM's 22M weights, bench/bench_train_loop.py)
        config["optimizer"]["params"]["fused"] = True
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def choose_adam(requested: str, device: str, offload_optimizer: bool, prebuilt: bool, can_compile: bool) -> tuple[bool, str]:
    """(use torch AdamW, why) for ``deepspeed.optimizer`` = ``requested`` ("auto", "fused", "torch"); ``prebuilt``:
    DeepSpeed was installed with the op compiled (``fused_adam``, or ``cpu_adam`` with ``offload_optimizer``),
    ``can_compile``: the worker can JIT-compile it (nvcc and ninja for fused_adam, a C++ compiler for cpu_adam).
    ValueError for ``fused`` when the op can be neither loaded nor built."""
    if requested not in ("auto", "fused", "torch"):
        raise ValueError(f"deepspeed.optimizer: got {requested!r}, expected 'auto', 'fused' or 'torch'")
    op = "cpu_adam" if offload_optimizer else "fused_adam"
    if device == "cpu":
        return True, "torch AdamW (CPU run)"
    if requested == "torch":
        return True, "torch AdamW (deepspeed.optimizer=torch)"
    if prebuilt:
        return False, f"DeepSpeed {op} (prebuilt op)"
    if can_compile:
        return False, f"DeepSpeed {op} (JIT-compiled on this worker: no prebuilt op)"
    if requested == "fused":
        raise ValueError(f"deepspeed.optimizer=fused: DeepSpeed's {op} op is not prebuilt and cannot be compiled "
                         "here (no nvcc/ninja); use an image with DeepSpeed's ops prebuilt or deepspeed.optimizer=auto")
    return True, f"torch AdamW (DeepSpeed's {op} op is not prebuilt and cannot be compiled here)"


def cuda_majors_match(nvcc: tuple[int, int] | None, torch_cuda: str | None) -> bool:
    """Whether a CUDA op compiled with ``nvcc`` (``(major, minor)`` of the toolkit) can load into a torch built with
    CUDA ``torch_cuda`` ("13.0"; None for a CPU build): DeepSpeed refuses a different major (12 vs 13)."""
    if nvcc is None or not torch_cuda:
        return False
    return int(nvcc[0]) == int(str(torch_cuda).split(".")[0])


def from_train_config(cfg, *, world_size: int, total_steps: int, device: str,
                      torch_adam: bool | None = None) -> dict[str, Any]:
    """``build_deepspeed_config`` from a ``TrainConfig`` (nominal group size: 1 positive + 3 negatives)."""
    return build_deepspeed_config(
        stage=cfg.deepspeed.stage,
        micro_batch_size=cfg.data.groups_per_device * 4,
        grad_accum=cfg.optim.grad_accum,
        world_size=world_size,
        total_steps=total_steps,
        device=device,
        precision=cfg.deepspeed.precision,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        grad_clip=cfg.optim.grad_clip,
        offload_optimizer=cfg.deepspeed.offload_optimizer,
        offload_params=cfg.deepspeed.offload_params,
        bucket_size=cfg.deepspeed.bucket_size,
        torch_adam=torch_adam,
    )


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning rate / peak for 0-based optimizer ``step``: linear warm-up ((step + 1) / warmup_steps, so the first
    update already moves), then linear decay towards ``min_ratio`` at ``total_steps`` (never 0 inside the run)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    frac = max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * frac


def make_scheduler(optimizer, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int):
    """A torch LambdaLR with ``lr_multiplier`` (warm-up clamped by ``warmup_steps_for``); the optimizer's lr must
    be the peak ``lr``. Used by DeepSpeed (as a client scheduler, saved in its checkpoints) and the plain loop."""
    import torch

    warm = warmup_steps_for(warmup_steps, total_steps)
    ratio = min_lr / lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, warmup_steps=warm, total_steps=total_steps, min_ratio=ratio))
