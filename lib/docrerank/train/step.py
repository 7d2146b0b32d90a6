"""The training step and loop, usable without Ray: a DeepSpeed engine or a plain torch AdamW engine with the same
interface, one optimizer step over whole-group micro-batches, validation, and the metrics log.

    engine = make_engine(scorer, cfg, total_steps=..., device="cpu")
    stats = train_step(engine, [prepare(scorer, collate_groups(groups))], cfg.loss)

torch and DeepSpeed are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from docrerank.data.collate import Batch, collate_groups, iter_group_batches
from docrerank.data.examples import Group
from docrerank.train import deepspeed_config as dsc
from docrerank.train.config import LossConfig, TrainConfig
from docrerank.train.dist import all_reduce, ensure_process_group, world
from docrerank.train.loss import compute_loss, example_weights, pairwise_counts

if TYPE_CHECKING:
    import torch

log = logging.getLogger("docrerank.train")


@dataclass
class Prepared:
    """A micro-batch ready for the model: inputs on the CPU plus labels and group index."""

    inputs: dict
    labels: torch.Tensor
    group_index: torch.Tensor
    tokens: int
    seqs: list
    flops: float = 0.0  # model FLOPs of its training step (forward + backward), 0 when the scorer does not count

    @property
    def examples(self) -> int:
        """Examples in the micro-batch."""
        return len(self.labels)


def prepare(scorer, batch: Batch) -> Prepared:
    """Encode a batch with the scorer's ``encode`` (tokenize, preprocess images) on the CPU."""
    inputs = scorer.encode(batch)
    counter = getattr(scorer, "model_flops", None)
    return Prepared(inputs=inputs, labels=batch.labels, group_index=batch.group_index,
                    tokens=int(sum(v.sum() for k, v in inputs.items() if k.endswith("attention_mask"))),
                    seqs=list(batch.seqs), flops=counter(inputs)["total"] if counter is not None else 0.0)


class PlainEngine:
    """DeepSpeed-engine-shaped plain torch loop: AdamW, the same warm-up/decay schedule, accumulation, clipping."""

    def __init__(self, module: torch.nn.Module, cfg: TrainConfig, total_steps: int, device: str):
        import torch

        self.module = module.to(device)
        o = cfg.optim
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay, fused=device == "cpu" or None)
        self.lr_scheduler = dsc.make_scheduler(self.optimizer, lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
                                               total_steps=total_steps)
        self.grad_accum, self.grad_clip, self.params = o.grad_accum, o.grad_clip, params
        self.micro_steps = self.global_steps = 0
        self._grad_norm: Optional[float] = None
        self.checkpoint_engine: Any = None  # as DeepSpeed's: what writes a state file (None: torch.save)

    def __call__(self, **inputs):
        return self.module(**inputs)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def eval(self):
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum == 0

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            import torch

            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))
            self._grad_norm = float(norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_steps += 1
        self.micro_steps += 1

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_global_grad_norm(self) -> Optional[float]:
        return self._grad_norm

    def save_checkpoint(self, save_dir: str, tag: str, **_: Any) -> None:
        import torch

        state = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
        Path(save_dir, tag).mkdir(parents=True, exist_ok=True)
        save = torch.save if self.checkpoint_engine is None else self.checkpoint_engine.save
        save({"module": state, "optimizer": self.optimizer.state_dict(),
              "scheduler": self.lr_scheduler.state_dict(), "steps": (self.micro_steps, self.global_steps)},
             str(Path(save_dir, tag, "plain_state.pt")))

    def load_checkpoint(self, load_dir: str, tag: str, **_: Any) -> tuple:
        import torch

        state = torch.load(Path(load_dir, tag, "plain_state.pt"), map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["module"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.micro_steps, self.global_steps = state["steps"]
        return load_dir, {}


def adam_ops(offload_optimizer: bool) -> tuple[bool, bool]:
    """(prebuilt, can compile) of the DeepSpeed Adam op a GPU run would use: ``cpu_adam`` with optimizer offload,
    else ``fused_adam``. Prebuilt: compiled into the installed DeepSpeed for this accelerator; can compile: its
    builder is compatible and the toolchain is there (nvcc and ninja for CUDA ops, ninja for CPU ops)."""
    import shutil

    import torch
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops
    from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder

    builder = CPUAdamBuilder() if offload_optimizer else FusedAdamBuilder()
    prebuilt = bool(installed_ops.get(builder.name)) and accelerator_name == get_accelerator()._name
    can = shutil.which("ninja") is not None
    try:
        can = can and builder.is_compatible(verbose=False)
        if can and not offload_optimizer:
            from deepspeed.ops.op_builder import builder as op_builder

            nvcc = op_builder.installed_cuda_version()  # raises without a runnable nvcc
            if not dsc.cuda_majors_match(nvcc, torch.version.cuda):
                # DeepSpeed refuses to JIT-load an op whose nvcc major differs from torch's CUDA: the job would fail
                log.warning("optimizer: nvcc is CUDA %s.%s but torch was built with CUDA %s: DeepSpeed's %s cannot be "
                            "compiled here (use an image whose CUDA toolkit matches torch: cluster/Dockerfile)",
                            nvcc[0], nvcc[1], torch.version.cuda, builder.name)
                can = False
    except Exception:  # noqa: BLE001 - any failure means "cannot compile here"
        can = False
    return prebuilt, can


def make_engine(scorer: torch.nn.Module, cfg: TrainConfig, total_steps: int, device: str):
    """A DeepSpeed engine (ZeRO stage of ``cfg.deepspeed``) or, DeepSpeed disabled, a ``PlainEngine``. On GPU the
    Adam implementation is decided here (``deepspeed_config.choose_adam``) and logged."""
    if not cfg.deepspeed.enabled:
        return PlainEngine(scorer, cfg, total_steps, device)
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ensure_process_group(device)
    import deepspeed

    prebuilt, can = adam_ops(cfg.deepspeed.offload_optimizer) if device == "cuda" else (False, False)
    torch_adam, why = dsc.choose_adam(cfg.deepspeed.optimizer, device, cfg.deepspeed.offload_optimizer, prebuilt, can)
    log.info("optimizer: %s", why)
    ds_config = dsc.from_train_config(cfg, world_size=world()[1], total_steps=total_steps, device=device,
                                      torch_adam=torch_adam)
    params = [p for p in scorer.parameters() if p.requires_grad]
    o = cfg.optim

    def scheduler(optimizer):
        return dsc.make_scheduler(optimizer, lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
                                  total_steps=total_steps)

    engine, *_ = deepspeed.initialize(model=scorer, model_parameters=params, config=ds_config, lr_scheduler=scheduler)
    return engine


def worker_threads(cfg: TrainConfig) -> int:
    """torch threads of a CPU worker: ``scaling.threads``, or ``scaling.cpus_per_worker`` rounded up (at least 1)."""
    return cfg.scaling.threads or max(1, math.ceil(cfg.scaling.cpus_per_worker))


def set_worker_threads(cfg: TrainConfig, device: str) -> int:
    """Apply ``worker_threads`` to torch in this process (CPU only: on GPU torch's default is left alone); returns
    the previous thread count, for a caller that shares its process to restore."""
    import torch

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(worker_threads(cfg))
    return before


def _to(inputs: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def micro_loss(engine, mb: Prepared, loss_cfg: LossConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, scores) of one micro-batch."""
    scores = engine(**_to(mb.inputs, device))
    labels, gidx = mb.labels.to(scores.device), mb.group_index.to(scores.device)
    w = example_weights(labels, loss_cfg.positive_weight)
    return compute_loss(loss_cfg.kind, scores, labels, gidx, w), scores


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated (cuda) or peak resident memory of the process (cpu), MiB."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_step(engine, micro_batches: list[Prepared], loss_cfg: LossConfig, device: str = "cpu") -> dict[str, float]:
    """One optimizer step over ``micro_batches`` (the gradient accumulation of one worker); metrics summed over
    workers: loss (mean), lr (the one applied), grad_norm, examples, tokens, samples/s, tokens/s, model FLOPs
    (``train/flops.py``) and TFLOP/s, on a GPU of known peak the MFU, memory, and rank 0's torch threads.

    The loss is read back once per step, after the last micro-batch (a GPU does not wait on the host between
    micro-batches)."""
    import torch

    engine.train()
    t0 = time.perf_counter()
    lr = float(engine.get_lr()[0])
    losses, n, tokens, model_flops = [], 0, 0, 0.0
    for mb in micro_batches:
        loss, _ = micro_loss(engine, mb, loss_cfg, device)
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach() * mb.examples)
        n += mb.examples
        tokens += mb.tokens
        model_flops += mb.flops
    loss_sum = float(torch.stack(losses).sum()) if losses else 0.0
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    loss_sum, n, tokens, model_flops = all_reduce([loss_sum, n, tokens, model_flops])  # type: ignore[assignment]  # sums come back as floats
    dt_max = -all_reduce([-dt], "min")[0]  # the slowest worker sets the pace
    norm = engine.get_global_grad_norm()
    out = {"loss": loss_sum / max(n, 1), "lr": lr, "grad_norm": float(norm) if norm is not None else math.nan,
           "examples": int(n), "tokens": int(tokens), "step_s": dt_max, "samples_per_s": n / dt_max,
           "tokens_per_s": tokens / dt_max, "memory_mb": peak_memory_mb(device), "threads": torch.get_num_threads()}
    if model_flops:
        out["model_flops"] = model_flops
        out["model_tflops_per_s"] = model_flops / dt_max / 1e12
        if device == "cuda":
            from docrerank.models.flops import mfu

            achieved = mfu(model_flops, dt_max, torch.cuda.get_device_name(), devices=world()[1])
            if achieved is not None:
                out["mfu"] = achieved
    return out


def evaluate(engine, scorer, groups: list[Group], groups_per_batch: int, loss_cfg: LossConfig,
             device: str = "cpu") -> dict[str, float]:
    """Pairwise accuracy and loss on validation groups, split over workers (each runs the same number of
    forward passes, as ZeRO-3 needs)."""
    import torch

    rank, size = world()
    mine = groups[rank::size]
    n_batches = math.ceil(math.ceil(len(groups) / size) / groups_per_batch)
    batches = list(iter_group_batches(mine, groups_per_batch))
    engine.eval()
    correct = pairs = loss_sum = n = 0.0
    with torch.no_grad():
        for i in range(n_batches):
            real = i < len(batches)
            mb = prepare(scorer, collate_groups(batches[i] if real else groups[:groups_per_batch]))
            loss, scores = micro_loss(engine, mb, loss_cfg, device)
            if real:  # padding batches only keep the ranks in step
                c, p = pairwise_counts(scores.cpu(), mb.labels, mb.group_index)
                correct, pairs = correct + c, pairs + p
                loss_sum, n = loss_sum + float(loss) * mb.examples, n + mb.examples
    correct, pairs, loss_sum, n = all_reduce([correct, pairs, loss_sum, n])
    engine.train()
    return {"val_pairwise_accuracy": correct / max(pairs, 1), "val_loss": loss_sum / max(n, 1), "val_pairs": pairs}


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` ahead (overlaps batch encoding with the step)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for item in items:
                q.put(item)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            q.put(err)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def step_batches(scorer, groups: Iterable[Group], groups_per_batch: int, grad_accum: int) -> Iterator[list[Prepared]]:
    """Encoded micro-batches of whole groups, ``grad_accum`` per optimizer step (an incomplete step at the end is
    yielded short, for the caller to drop)."""
    step: list[Prepared] = []
    for gs in iter_group_batches(groups, groups_per_batch):
        step.append(prepare(scorer, collate_groups(gs)))
        if len(step) == grad_accum:
            yield step
            step = []
    if step:
        yield step


class MetricsLog:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars under ``directory``."""

    def __init__(self, directory: str, tensorboard: bool = True):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / "metrics.jsonl"
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(directory) / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(rec, default=float) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}" if not k.startswith("val_") else f"val/{k[4:]}", v, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class NullLog:
    """The log of workers other than rank 0: does nothing."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def train_loop(engine, scorer, steps: Iterable[list[Prepared]], cfg: TrainConfig, *, total_steps: int,
               device: str, log=None, start_step: int = 0, val_groups: Optional[list[Group]] = None,
               sync_continue: Callable[[bool], bool] = lambda ok: ok,
               after_step: Optional[Callable[[int, dict, list[Prepared]], None]] = None,
               validator: Optional[Callable[[int], dict]] = None) -> int:
    """Optimizer steps from ``start_step`` until ``total_steps`` or the data ends; returns the last step.

    ``sync_continue`` lets distributed workers agree to stop together when one runs out of data;
    ``after_step(step, metrics, micro_batches)`` is where checkpoints and data positions hook in;
    ``validator(step)`` (ranking validation, ``train/validate.py``) runs before the first step and with the
    validation, its metrics logged with the step's.
    """
    log = log or NullLog()
    step = start_step
    it = iter(steps)
    if validator is not None and start_step == 0:
        log.log(0, validator(0))
    while step < total_steps:
        # An exhausted iterator gives [], so every worker calls sync_continue the same number of times.
        micro = next(it, [])
        if not sync_continue(len(micro) == cfg.optim.grad_accum):
            break
        metrics = train_step(engine, micro, cfg.loss, device)
        step += 1
        if val_groups and cfg.data.val_every_steps and step % cfg.data.val_every_steps == 0:
            metrics.update(evaluate(engine, scorer, val_groups, cfg.data.groups_per_device, cfg.loss, device))
        if validator is not None and cfg.data.val_every_steps and step % cfg.data.val_every_steps == 0:
            metrics.update(validator(step))
        if step % cfg.log_every_steps == 0 or step == total_steps:
            log.log(step, metrics)
        if after_step is not None:
            after_step(step, metrics, micro)
    return step


def total_steps_for(total_groups: int, cfg: TrainConfig, world_size: int) -> int:
    """Optimizer steps of a run: whole steps of ``groups_per_device * grad_accum * world_size`` groups, capped by
    ``optim.max_steps``; ValueError when the data cannot fill one step."""
    per_step = cfg.data.groups_per_device * cfg.optim.grad_accum * world_size
    steps = total_groups // per_step
    if cfg.optim.max_steps:
        steps = min(steps, cfg.optim.max_steps)
    if steps < 1:
        raise ValueError(f"data: {total_groups} groups cannot fill one optimizer step of {per_step} groups "
                         f"(groups_per_device x grad_accum x workers); add data or lower data.groups_per_device")
    return steps
