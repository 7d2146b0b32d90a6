"""Train a reranker on one or more examples/ outputs of the dataset build (Ray Train + DeepSpeed ZeRO, LoRA).

    python -m jobs.train_reranker --config jobs/configs/train_local.yaml [key=value ...]

The same command runs on one CPU machine (a local Ray is started) or on a GPU cluster (``--address`` or
``ray job submit``). Rerunning with the same output and name resumes from the last checkpoint. Writes
<output>/checkpoints/<name>/, <output>/model/{adapter,merged}, metrics.jsonl, mix.json (the realised mix:
groups, examples and negatives by kind per source), tensorboard/ and _meta/.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.train.config import TrainConfig

    cfg, ns = parse_job_args(TrainConfig, argv, prog="python -m jobs.train_reranker", description=__doc__)
    from docrerank.core import plan, runtime
    from docrerank.train.plan import plan_train

    def make_plan():
        res = plan.detect_resources(ns.address) if cfg.scaling.use_ray else plan.local_resources()
        return plan_train(cfg, res)

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()

    def work():
        if cfg.scaling.use_ray:
            from docrerank.train.ray_train import run_training

            runtime.init_ray(ns.address)
            runtime.configure_ray_data(progress=False)
            return run_training(cfg)
        from docrerank.train.local import train_local

        res = train_local(cfg)
        return {"steps": res.steps, "device": "local", "workers": 1, "model": res.model_uri,
                "metrics": res.metrics, "mix": res.mix}

    summary = runtime.run_job("train_reranker", cfg, work, checks=plan.start_checks(make_plan))
    if summary is None:
        return 1
    metrics = summary.get("metrics") or {}
    rows = [[k, summary.get(k)] for k in ("steps", "groups", "device", "workers", "checkpoint", "model")]
    rows += [[k, round(v, 4) if isinstance(v, float) else v] for k, v in metrics.items()
             if k in ("loss", "val_pairwise_accuracy", "val_loss", "samples_per_s", "tokens_per_s", "memory_mb")]
    print(runtime.format_table(["train_reranker", "value"], rows))
    if summary.get("mix"):
        from docrerank.data.mix import format_mix

        print(format_mix(summary["mix"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
