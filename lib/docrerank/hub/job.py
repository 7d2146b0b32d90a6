"""Publish a dataset build output or a trained reranker to the Hugging Face Hub (a separate, explicit step: no
other job pushes anything).

    python -m jobs.push_to_hub path=out/local repo_id=me/my-hard-negatives license=cc-by-4.0
    python -m jobs.push_to_hub path=out/train_local repo_id=me/my-reranker evaluation=out/eval_local

A dataset goes up with its card (README.md: configs export/examples/mined, the Image feature, funnel, settings),
stats.json and the example tables; a model with its card (plus the evaluation table when ``evaluation`` is set),
the merged weights, the LoRA adapter under adapter/ and train_config.json. One commit per push; the repository is
created (private by default) when missing. The token is read from $HF_TOKEN (``token_env``). ``--plan`` lists the
files that would be uploaded, without contacting the Hub.
"""

from __future__ import annotations

import sys

from docrerank.core.job import Job
from docrerank.hub.config import PushConfig


def _run(cfg: PushConfig, progress) -> dict:
    from docrerank.hub.push import push

    return push(cfg)


def list_upload(cfg: PushConfig) -> int:
    """``--plan``: the files a push would upload (nothing contacts the Hub); 1 when the path cannot be pushed."""
    from docrerank.core.runtime import format_table
    from docrerank.hub.push import local_copy, plan_upload

    try:
        with local_copy(cfg.path) as root:
            up = plan_upload(cfg, root)
    except (ValueError, OSError) as e:
        print(f"push_to_hub cannot start: {e}", file=sys.stderr)
        return 1
    print(format_table([f"{up.repo_type} {up.repo_id}: file", "bytes"],
                       [[p, len(s) if isinstance(s, bytes) else s.stat().st_size] for p, s in up.files]))
    print(f"{len(up.files)} files, {up.size()} bytes, one commit; private={cfg.private}")
    return 0


def _report(cfg: PushConfig, res: dict) -> str:
    from docrerank.core.runtime import format_table

    return format_table(["push_to_hub", "value"], [[k, v] for k, v in res.items()])


JOB = Job(
    name="push_to_hub", aliases=("push",), doc=__doc__, config=PushConfig,
    summary="publish a build output or a trained reranker to the Hugging Face Hub, with its card",
    run=_run, report=_report, dry_run=list_upload, needs_ray=lambda cfg: False,
    errors=(ValueError, RuntimeError, OSError),
)
