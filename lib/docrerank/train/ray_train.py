"""Ray Train glue: the mixed example stream as a Ray Dataset of packed groups, a ``TorchTrainer`` whose workers run
``step.train_loop`` under DeepSpeed, checkpoints with the data position, resume and worker-failure recovery.

Checkpoints live in ``<output>/checkpoints/<name>/`` (any pyarrow filesystem). Each holds the DeepSpeed state
(trainable weights and optimizer shards of every rank) and ``train_state.json`` (step and data position: the
set of group seqs trained). A replaced worker, or the same command run again with the same output and name,
restarts from the latest checkpoint and skips exactly the groups already trained.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from docrerank.core import storage
from docrerank.data.examples import Group, packed_schema, read_groups, read_task
from docrerank.data.mix import plan_from_config, record_mix, scan_source
from docrerank.train.checkpoint import (
    clear_dir,
    is_local,
    move_tree,
    same_filesystem,
    snapshot_checkpoint,
    write_snapshot,
)
from docrerank.train.config import TrainConfig
from docrerank.train.dist import all_reduce
from docrerank.train.export import export_model, upload_dir
from docrerank.train.step import (
    MetricsLog,
    NullLog,
    evaluate,
    make_engine,
    prefetch,
    set_worker_threads,
    step_batches,
    total_steps_for,
    train_loop,
)
from docrerank.train.validate import best_or_last, final_ranking, make_validator

log = logging.getLogger("docrerank.train")

FAULT_ENV = "DOCRERANK_TRAIN_FAULT"  # tests: "RANK:STEP,..." kills that worker once, after that step
CKPT_TAG = "state"
STAGING_DIR = ".staging"  # in the run's checkpoint directory: checkpoints being written (local storage)


@dataclass
class DataPosition:
    """Which groups of the stream (by ``seq``) a run has trained: every seq below ``watermark`` plus ``extra``.

    Workers consume the stream nearly in order, so ``extra`` stays small; a resumed run skips exactly these.
    """

    watermark: int = 0
    extra: set = field(default_factory=set)

    def add(self, seqs: Iterable[int]) -> None:
        """Mark ``seqs`` trained (the watermark moves past every seq now contiguous)."""
        self.extra.update(int(s) for s in seqs)
        while self.watermark in self.extra:
            self.extra.remove(self.watermark)
            self.watermark += 1
        self.extra = {s for s in self.extra if s >= self.watermark}

    def done(self, seq: int) -> bool:
        """Whether group ``seq`` was trained."""
        return seq < self.watermark or seq in self.extra

    @property
    def size(self) -> int:
        """Groups trained."""
        return self.watermark + len(self.extra)

    def to_json(self) -> dict:
        """The position as JSON (saved in ``train_state.json``)."""
        return {"watermark": self.watermark, "extra": sorted(self.extra)}

    @classmethod
    def from_json(cls, data: dict) -> DataPosition:
        """The position ``to_json`` wrote."""
        return cls(int(data["watermark"]), set(int(s) for s in data.get("extra", [])))


def _read_tasks(batch) -> Any:
    """Ray Data UDF: a batch of read tasks -> their packed groups (one row per group)."""
    import pyarrow as pa

    tables = [read_task(t) for t in batch.to_pylist()]
    return pa.concat_tables(tables) if tables else packed_schema().empty_table()


class IdleLoopThrottle:
    """Ray Data execution callback (``DataContext.custom_execution_callback_classes``): when a scheduling step of the
    streaming executor returned at once (no read task in flight, so no ``ray.wait`` to block on: the reads are done or
    held back until the trainer takes more), sleep 10 ms before the next one. Without it the executor's loop ran hot
    for as long as the trainer consumed the stream, holding the GIL in the trainer's process (~50% of a CPU,
    bench/bench_train_loop.py). Duck-typed (Ray's base class is not imported at module import)."""

    def __init__(self) -> None:
        self._last = 0.0

    def before_execution_starts(self, executor) -> None:
        self._last = time.perf_counter()

    def on_execution_step(self, executor) -> None:
        now = time.perf_counter()
        if now - self._last < 0.001:
            time.sleep(0.01)
            now = time.perf_counter()
        self._last = now

    def after_execution_succeeds(self, executor) -> None:
        pass

    def after_execution_fails(self, executor, error: Exception) -> None:
        pass


def build_dataset(tasks: list[dict], read_cpus: float):
    """A Ray Dataset of packed groups in stream order (one block per read task)."""
    import ray.data

    ds = ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks)))
    ds = ds.map_batches(_read_tasks, batch_size=1, batch_format="pyarrow", num_cpus=read_cpus)
    ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes, IdleLoopThrottle]
    return ds


def match_niceness(target: int) -> bool:
    """Give every thread of this process the niceness ``target`` (the driver's): Ray starts workers at niceness 15,
    so any other process on the machine took the CPU from the training worker (which the plain loop, at the
    driver's niceness, does not suffer). Lowering niceness needs the privilege to; without it nothing changes.
    Returns whether it was applied."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            if os.getpriority(os.PRIO_PROCESS, tid) != target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
    except (OSError, AttributeError):  # no privilege to lower it, a thread that ended, no setpriority
        return False
    return True


def cluster_device(requested: str) -> str:
    """"auto" -> cuda when the Ray cluster has GPUs, else cpu."""
    import ray

    if requested != "auto":
        return requested
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def open_metrics(cfg: TrainConfig, rank: int):
    """(log, local directory, upload?) for this worker: rank 0 writes metrics.jsonl and tensorboard/ into the output
    when it is local, else into a local directory (seeded with the run's earlier metrics.jsonl) uploaded at every
    checkpoint; other ranks get a log that does nothing."""
    if rank != 0:
        return NullLog(), None, False
    out = storage.resolve(cfg.output)
    if "://" not in out.uri:
        return MetricsLog(out.path), out.path, False
    local = tempfile.mkdtemp(prefix="docrerank-metrics-")
    earlier = out.join("metrics.jsonl")
    if storage.exists(earlier):
        Path(local, "metrics.jsonl").write_bytes(storage.read_bytes(earlier))
    return MetricsLog(local), local, True


def _maybe_fault(fault: str | None, rank: int, step: int, cfg: TrainConfig, saved_step: int) -> None:
    """Tests: ``DOCRERANK_TRAIN_FAULT="RANK:STEP[,RANK:STEP...]"`` kills that worker (SIGKILL) once, after that step,
    when the controller has registered the last checkpoint (it polls workers every ~2 s)."""
    if not fault or f"{rank}:{step}" not in fault.split(","):
        return
    out = storage.resolve(cfg.output)
    marker = out.join(f"_fault_{rank}_{step}")
    if storage.exists(marker):
        return
    storage.write_bytes_atomic(marker, b"")
    snapshot = out.join("checkpoints", cfg.name, "checkpoint_manager_snapshot.json")
    deadline = time.time() + 30
    while saved_step and time.time() < deadline:
        if storage.exists(snapshot) and f"checkpoint_{saved_step:08d}" in storage.read_bytes(snapshot).decode():
            break
        time.sleep(0.2)
    log.warning("fault injection: killing worker rank %d after step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(config: dict) -> None:
    """The function every Ray Train worker runs."""
    cfg = TrainConfig.model_validate(config["cfg"])
    device, total_steps = config["device"], config["total_steps"]
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    import ray.train
    import torch.distributed as dist
    from ray.train import CheckpointUploadMode

    from docrerank.models.backbones import build_scorer

    if device == "cpu" and config.get("niceness") is not None and not match_niceness(config["niceness"]):
        log.info("training worker: could not set niceness %s (Ray's worker niceness stays)", config["niceness"])
    set_worker_threads(cfg, device)
    rank = ray.train.get_context().get_world_rank()
    scorer = build_scorer(cfg.model, cfg.lora, device=device, seed=cfg.seed)
    engine = make_engine(scorer, cfg, total_steps, device)
    position, start_step = DataPosition(), 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            path, _ = engine.load_checkpoint(d, tag=CKPT_TAG, load_module_strict=False)
            if path is None:
                raise RuntimeError(f"checkpoint {d}: DeepSpeed found no state under tag {CKPT_TAG!r}")
            state = json.loads((Path(d) / "train_state.json").read_text())
        start_step, position = int(state["step"]), DataPosition.from_json(state["position"])
        if rank == 0:
            log.info("resuming at step %d (%d groups trained)", start_step, position.size)
    mlog, metrics_dir, upload = open_metrics(cfg, rank)
    store = ray.train.get_context().get_storage()
    # Local storage: checkpoints are staged next to their final place (one filesystem: moved, not copied).
    staging = None
    if is_local(store.storage_filesystem):
        staging = os.path.join(store.experiment_fs_path, STAGING_DIR)
        os.makedirs(staging, exist_ok=True)
        if not same_filesystem(staging, store.experiment_fs_path):
            staging = None
    shard = ray.train.get_dataset_shard("train")
    batches = shard.iter_batches(batch_size=cfg.data.groups_per_device, batch_format="pyarrow", prefetch_batches=2)
    # Groups trained before the checkpoint are skipped: the data position is exact.
    groups = (Group.from_row(r) for b in batches for r in b.to_pylist() if not position.done(r["seq"]))
    steps = prefetch(step_batches(scorer, groups, cfg.data.groups_per_device, cfg.optim.grad_accum))
    val = read_groups(cfg.data.validation, cfg.data.val_max_groups) if cfg.data.validation else None
    validator = make_validator(cfg.data.ranking_validation, scorer, engine, cfg.model.backbone, device)
    pending: list[int] = []
    saved: dict = {"step": start_step}

    def save(step: int, metrics: dict) -> None:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, pending)
        position.add(s for part in gathered for s in part)
        pending.clear()
        # The training thread only copies the state in memory (the next step changes it in place); the state files
        # are written, and moved (local storage) or copied (remote) to the checkpoint, in Ray's background upload
        # thread (train/checkpoint.py), which reports the checkpoint once its files are complete.
        tmp = tempfile.mkdtemp(prefix="ckpt-", dir=staging) if staging else tempfile.mkdtemp(prefix="docrerank-ckpt-")
        writes = snapshot_checkpoint(engine, tmp, CKPT_TAG)
        if rank == 0:
            (Path(tmp) / "train_state.json").write_text(json.dumps(
                {"step": step, "total_steps": total_steps, "position": position.to_json(),
                 "groups_trained": position.size}))
        if upload and rank == 0:
            upload_dir(Path(metrics_dir), storage.resolve(cfg.output))

        def persist(checkpoint, dir_name: str):
            write_snapshot(writes)
            if staging:  # the checkpoint's own filesystem: rename the files into place
                dest = store.build_checkpoint_path_from_name(dir_name)
                move_tree(tmp, dest)
                return ray.train.Checkpoint(dest, filesystem=store.storage_filesystem)
            try:
                return store.persist_current_checkpoint(checkpoint, dir_name)
            finally:
                clear_dir(tmp)

        ray.train.report({**metrics, "step": step, "groups_trained": position.size},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{step:08d}",
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC, checkpoint_upload_fn=persist,
                         delete_local_checkpoint_after_upload=False)
        saved["step"] = step

    def after_step(step: int, metrics: dict, micro: list) -> None:
        pending.extend(s for mb in micro for s in mb.seqs)
        saved["metrics"] = metrics
        if step % cfg.checkpoint.every_steps == 0 and step != total_steps:  # the last one is saved below
            save(step, metrics)
        _maybe_fault(config.get("fault"), rank, step, cfg, saved["step"])

    def sync_continue(ok: bool) -> bool:
        return all_reduce([1.0 if ok else 0.0], "min")[0] > 0

    last = train_loop(engine, scorer, steps, cfg, total_steps=total_steps, device=device, log=mlog,
                      start_step=start_step, val_groups=val, sync_continue=sync_continue, after_step=after_step,
                      validator=validator)
    final = dict(saved.get("metrics", {}))
    if val:
        scores = evaluate(engine, scorer, val, cfg.data.groups_per_device, cfg.loss, device)
        mlog.log(last, scores)
        final.update(scores)
    ranking = final_ranking(validator, last)
    if ranking:
        mlog.log(last, ranking)
        final.update(ranking)
    if saved["step"] != last:
        save(last, final)
    mlog.close()
    if cfg.export:
        state = best_or_last(validator, scorer)  # collective under ZeRO-3
        if rank == 0:
            export_model(state, cfg, device, metrics=final)
    if upload and rank == 0:
        upload_dir(Path(metrics_dir), storage.resolve(cfg.output))


def _niceness() -> int | None:
    """This process's niceness (what the training workers take, ``match_niceness``), None where unknown."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return None


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """A copy with local paths made absolute: workers do not run in the driver's directory."""
    def fix(p: str | None) -> str | None:
        return p if p is None or "://" in p or p.startswith("pkg:") else storage.resolve(p).uri

    sources = [s.model_copy(update={"path": fix(s.path)}) for s in cfg.data.sources]
    data = cfg.data.model_copy(update={"validation": fix(cfg.data.validation), "sources": sources})
    rv = cfg.data.ranking_validation
    if rv is not None:
        data.ranking_validation = rv.model_copy(update={"path": fix(rv.path), "questions": fix(rv.questions)})
    model_path = cfg.model.path
    if model_path and not model_path.startswith("pkg:") and Path(model_path).is_dir():
        model_path = fix(model_path)
    return cfg.model_copy(update={"output": fix(cfg.output), "data": data,
                                  "model": cfg.model.model_copy(update={"path": model_path})})


def run_training(cfg: TrainConfig) -> dict:
    """Plan the stream, write its realised mix (``<output>/mix.json``), run the ``TorchTrainer`` (resuming
    ``<output>/checkpoints/<name>`` when it exists) and return a summary: steps, groups, checkpoint, model location,
    the last reported metrics and the mix."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    from docrerank.models.backbones import check_vlm_budget
    from docrerank.models.hub import DEFAULT_VLM
    from docrerank.models.sources import fetch_config_files

    cfg = absolute_paths(cfg)
    device = cluster_device(cfg.scaling.device)
    # Fail here, before any worker starts, on what can be checked here: the tokenizer and image processor files
    # suffice (the driver may be a CPU head without room or time for the weights; the workers load those).
    if cfg.model.backbone == "vlm":
        check_vlm_budget(cfg.model, fetch_config_files(cfg.model.path or DEFAULT_VLM))
    if cfg.data.validation:
        scan_source(cfg.data.validation, cfg.data.chunk_groups)
    tasks = plan_from_config(cfg.data, cfg.optim.epochs, cfg.seed)
    total_groups = sum(len(t["group_ids"]) for t in tasks)
    total_steps = total_steps_for(total_groups, cfg, cfg.scaling.num_workers)
    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    per_step = cfg.data.groups_per_device * cfg.optim.grad_accum * cfg.scaling.num_workers
    mix = record_mix(tasks, cfg.output, limit=total_steps * per_step)
    resources = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if device == "cuda" else {})}
    ckpt_root = out.join("checkpoints")
    run_config = ray.train.RunConfig(
        name=cfg.name,
        storage_path=ckpt_root.path,
        storage_filesystem=out.fs,
        failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "device": device, "total_steps": total_steps,
                           "fault": os.environ.get(FAULT_ENV), "niceness": _niceness()},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=device == "cuda",
                                               resources_per_worker=resources),
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if device == "cuda" else "gloo"),
        datasets={"train": build_dataset(tasks, cfg.data.read_cpus)},
        # One worker reads the whole stream itself: no streaming_split, whose coordinator actor polled for ~40% of a
        # CPU during training (bench/bench_train_loop.py); several workers get equal shards of it.
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if cfg.scaling.num_workers > 1 else [],
                                            execution_options=ExecutionOptions(preserve_order=True)),
    )
    if "://" not in out.uri:  # checkpoints a stopped run left half-written
        clear_dir(Path(ckpt_root.path, cfg.name, STAGING_DIR))
    result = trainer.fit()
    return {
        "steps": total_steps,
        "groups": total_groups,
        "device": device,
        "workers": cfg.scaling.num_workers,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": out.join("model").uri if cfg.export else None,
        "metrics": dict(result.metrics or {}),
        "mix": mix,
    }
