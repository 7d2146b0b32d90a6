"""Training in this process, without Ray (``scaling.use_ray=false``): one worker, DeepSpeed or plain torch, the same
plan, step and export as the Ray Train run, no checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from docrerank.core import storage
from docrerank.data.examples import iter_plan, read_groups
from docrerank.data.mix import plan_from_config, record_mix
from docrerank.models.hub import resolve_device
from docrerank.train.config import TrainConfig
from docrerank.train.export import export_model
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


@dataclass
class LocalResult:
    """What ``train_local`` returns: the last step, the final metrics, the trained scorer and the realised mix."""

    steps: int
    metrics: dict
    scorer: Any
    model_uri: Optional[str]
    mix: dict | None = None


def train_local(cfg: TrainConfig, device: str = "auto") -> LocalResult:
    """Train in this process, without Ray (one worker; DeepSpeed or plain torch): the same plan, step and export.
    Metrics go to ``<output>/metrics.jsonl`` (local outputs), the realised mix to ``<output>/mix.json``; no
    checkpoints are written."""
    device = resolve_device(device if device != "auto" else cfg.scaling.device)
    threads_before = set_worker_threads(cfg, device)
    try:
        return _train(cfg, device)
    finally:
        import torch

        torch.set_num_threads(threads_before)  # this process may go on (tests, notebooks)


def _train(cfg: TrainConfig, device: str) -> LocalResult:
    from docrerank.models.backbones import build_scorer  # imports torch and transformers

    tasks = plan_from_config(cfg.data, cfg.optim.epochs, cfg.seed)
    total = total_steps_for(sum(len(t["group_ids"]) for t in tasks), cfg, 1)
    mix = record_mix(tasks, cfg.output, limit=total * cfg.data.groups_per_device * cfg.optim.grad_accum)
    scorer = build_scorer(cfg.model, cfg.lora, device=device, seed=cfg.seed)
    engine = make_engine(scorer, cfg, total, device)
    val = read_groups(cfg.data.validation, cfg.data.val_max_groups) if cfg.data.validation else None
    validator = make_validator(cfg.data.ranking_validation, scorer, engine, cfg.model.backbone, device)
    out = storage.resolve(cfg.output)
    log = MetricsLog(out.path) if "://" not in out.uri else NullLog()
    try:
        steps = prefetch(step_batches(scorer, iter_plan(tasks), cfg.data.groups_per_device, cfg.optim.grad_accum))
        last = train_loop(engine, scorer, steps, cfg, total_steps=total, device=device, log=log, val_groups=val,
                          validator=validator)
        final = evaluate(engine, scorer, val, cfg.data.groups_per_device, cfg.loss, device) if val else {}
        final.update(final_ranking(validator, last))
        if final:
            log.log(last, final)
    finally:
        log.close()
    state = best_or_last(validator, scorer)
    if validator is not None and state is not None:
        scorer.load_state_dict(state, strict=False)  # the returned scorer is the exported one
    uri = export_model(state, cfg, device, metrics=final) if cfg.export else None
    return LocalResult(steps=last, metrics=final, scorer=scorer, model_uri=uri, mix=mix)
