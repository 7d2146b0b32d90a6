"""``jobs.train_reranker --plan`` and the training's start-of-job checks: the data sources and the realised number of
groups and steps (the same mix plan the job makes: group ids only, no images read), the model and where it loads
from, the workers' GPUs and CPUs against the cluster, tokens and GPU-hours, and the paths.

GPU time: tokens per example = the page's image tokens (``models.tokens``: ``model.max_pixels`` / 28^2 for
Qwen2/2.5-VL, / 32^2 for Qwen3-VL) + the prompt; a training
step costs about three forward passes (forward, backward, recomputation under gradient checkpointing), so the
default rate is the inference prompt-token figure (``core.plan.throughput_for``) divided by 3.
"""

from __future__ import annotations

from typing import Optional

from docrerank.core.plan import (
    PlanOptions,
    PlanReport,
    Resources,
    check_readable,
    fmt_count,
    fmt_hours,
    paths_section,
    resources_section,
    throughput_for,
)
from docrerank.models.hub import DEFAULT_TEXT, DEFAULT_VLM
from docrerank.models.sources import model_source
from docrerank.models.tokens import page_image_tokens
from docrerank.train.config import TrainConfig

TRAIN_COST = 3.0  # forward + backward + recomputation, in forward passes
PROMPT_TOKENS = 70  # the MonoQwen2-VL prompt around the image, chat template included, and a query
EXAMPLES_PER_GROUP = 4  # nominal: 1 positive + 3 negatives


def plan_train(cfg: TrainConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The training's plan (see the module doc)."""
    from docrerank.data.mix import plan_from_config, realised_mix
    from docrerank.train.step import total_steps_for

    opts = opts or cfg.plan
    report = PlanReport("train_reranker")
    device = cfg.scaling.device if cfg.scaling.device != "auto" else ("cuda" if res.gpu_capacity > 0 else "cpu")
    workers = cfg.scaling.num_workers

    data = report.section("data", ["source", "path", "groups per epoch", "share"])
    steps = groups = None
    try:
        tasks = plan_from_config(cfg.data, cfg.optim.epochs, cfg.seed)
        groups = sum(len(t["group_ids"]) for t in tasks)
        mix = realised_mix(tasks)
        for name, r in mix["sources"].items():
            path = next((s.path for s in cfg.data.sources if s.label == name), "")
            data.rows.append([name, path, fmt_count(r["groups"] / cfg.optim.epochs), f"{100 * r['share']:.1f}%"])
        steps = total_steps_for(groups, cfg, workers)
    except (ValueError, OSError) as err:
        if all(check_readable(s.path) is None for s in cfg.data.sources):  # else the paths section says which
            report.problem(f"data: {err}")
        for s in cfg.data.sources:
            data.rows.append([s.label, s.path, "?", ""])
    data.notes.append(f"{fmt_count(groups)} groups over {cfg.optim.epochs} epoch(s) -> {fmt_count(steps)} optimizer "
                      f"steps of {cfg.data.groups_per_device} groups x {cfg.optim.grad_accum} x {workers} worker(s)")

    path = cfg.model.path or (DEFAULT_VLM if cfg.model.backbone == "vlm" else DEFAULT_TEXT)
    src = model_source(path, key="model.path")
    models = report.section("models", ["model", "backbone", "source", "where", "files", "gated"])
    models.rows.append([path, cfg.model.backbone, src.kind, src.where, src.files, src.gated])
    for p in src.problems:
        report.problem(p)
    models.notes.append("the driver fetches only config, tokenizer and processor files (never the weights); "
                        "each worker loads the weights")
    if cfg.deepspeed.enabled and device == "cuda":
        models.notes.append("optimizer: each worker picks DeepSpeed's FusedAdam when its op is prebuilt or can be "
                            "built (nvcc), else torch AdamW, and logs the choice")

    cost = report.section("stages", ["stage", "model", "examples", "tokens", "GPU-h", "wall h"])
    examples = None if steps is None else steps * cfg.data.groups_per_device * cfg.optim.grad_accum * workers \
        * EXAMPLES_PER_GROUP
    tokens_per_example = (page_image_tokens(path, cfg.model.max_pixels) + PROMPT_TOKENS if cfg.model.backbone == "vlm"
                          else cfg.model.seq_len)
    tokens = None if examples is None else examples * tokens_per_example
    figure, source = throughput_for(path, opts)
    gpu_s = None
    if device == "cuda" and figure is not None and tokens is not None:
        gpu_s = tokens * TRAIN_COST / figure.prompt_tokens_per_s
    wall = None if gpu_s is None else gpu_s / workers
    cost.rows.append([f"train ({device})", path, fmt_count(examples), fmt_count(tokens),
                      fmt_hours(gpu_s) if device == "cuda" else "0", fmt_hours(wall) if device == "cuda" else ""])
    if device == "cuda":
        cost.notes.append(f"throughput: {source}; training at 1/{TRAIN_COST:g} of the prompt rate")

    pool = report.section("workers", ["pool", "actors", "GPUs/actor", "CPUs/actor", "GPUs", "CPUs"])
    gpus_each = 1 if device == "cuda" else 0
    pool.rows.append([f"Ray Train workers ({device})" if cfg.scaling.use_ray else "this process (no Ray)", workers,
                      gpus_each, cfg.scaling.cpus_per_worker, workers * gpus_each, workers * cfg.scaling.cpus_per_worker])
    need_cpus = workers * cfg.scaling.cpus_per_worker + (cfg.data.read_cpus if cfg.scaling.use_ray else 0)
    resources_section(report, res, workers * gpus_each, need_cpus,
                      what=f"{workers} training worker(s) and one data read task")

    reads = [("data source", s.path) for s in cfg.data.sources]
    if cfg.data.validation:
        reads.append(("validation", cfg.data.validation))
    writes = [("output (checkpoints, model, metrics)", cfg.output)]
    if src.kind in ("cache", "hub"):
        from huggingface_hub import constants

        writes.append(("Hugging Face cache (HF_HOME) of this machine", constants.HF_HUB_CACHE))
    paths_section(report, reads, writes)
    return report
