"""Train a reranker on one or more examples/ outputs of the dataset build (Ray Train + DeepSpeed ZeRO, LoRA).

    python -m jobs.train_reranker --config jobs/configs/train_local.yaml [key=value ...]

The same command runs on one CPU machine (a local Ray is started) or on a GPU cluster (``--address`` or
``ray job submit``). Rerunning with the same output and name resumes from the last checkpoint. Writes
<output>/checkpoints/<name>/, <output>/model/{adapter,merged}, metrics.jsonl, mix.json (the realised mix:
groups, examples and negatives by kind per source), tensorboard/ and _meta/.
"""

from __future__ import annotations

from docrerank.core.job import Job
from docrerank.train.config import TrainConfig


def _run(cfg: TrainConfig, progress) -> dict:
    if cfg.scaling.use_ray:
        from docrerank.train.ray_train import run_training

        return run_training(cfg)
    from docrerank.train.local import train_local

    res = train_local(cfg)
    return {"steps": res.steps, "device": "local", "workers": 1, "model": res.model_uri, "metrics": res.metrics,
            "mix": res.mix}


def _plan(cfg: TrainConfig, res):
    from docrerank.train.plan import plan_train

    return plan_train(cfg, res)


def _report(cfg: TrainConfig, summary: dict) -> str:
    from docrerank.core.runtime import format_table

    metrics = summary.get("metrics") or {}
    rows = [[k, summary.get(k)] for k in ("steps", "groups", "device", "workers", "checkpoint", "model")]
    rows += [[k, round(v, 4) if isinstance(v, float) else v] for k, v in metrics.items()
             if k in ("loss", "val_pairwise_accuracy", "val_loss", "samples_per_s", "tokens_per_s", "memory_mb")]
    text = format_table(["train_reranker", "value"], rows)
    if summary.get("mix"):
        from docrerank.data.mix import format_mix

        text += "\n" + format_mix(summary["mix"])
    return text


def _headline(summary: dict) -> str:
    metrics = summary.get("metrics") or {}
    acc = metrics.get("val_pairwise_accuracy")
    return f"{summary.get('steps')} steps" + (f", validation pairwise accuracy {acc:.3f}" if acc is not None else "")


JOB = Job(
    name="train_reranker", aliases=("train",), doc=__doc__, config=TrainConfig,
    summary="train a reranker on example sets (Ray Train + DeepSpeed)",
    run=_run, plan=_plan, report=_report, headline=_headline,
    outputs=lambda cfg: (cfg.output, ["model/merged/", "metrics.jsonl", "mix.json"]),
    needs_ray=lambda cfg: cfg.scaling.use_ray, progress=False,
)
