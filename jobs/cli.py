"""The ``docrerank`` command (installed by ``pip install -e .``): ``docrerank <job> [args]`` runs ``jobs.<job>``.

    docrerank pipeline --config jobs/configs/pipeline_local.yaml
    docrerank build_dataset --config jobs/configs/build_local.yaml select.k=4     (or: docrerank build ...)
    docrerank <job> --help                                                        (every config key of the job)
"""

from __future__ import annotations

import importlib
import sys

# job module -> what it does (the first line of ``docrerank --help``'s list)
JOBS = {
    "pipeline": "several jobs as one, from one config (ingest -> build -> mine -> analyse -> train -> evaluate)",
    "ingest": "PDFs and images -> pages/ (and quarantine/)",
    "build_dataset": "pages -> hard-negative training data (queries/, examples/, export/, card.md, README.md, viewer/)",
    "view_dataset": "a browsable HTML viewer of a build output (<output>/viewer/index.html)",
    "mine_negatives": "document-mined negatives for a build's positives",
    "analyse_negatives": "how hard and how diverse the negatives are",
    "train_reranker": "train a reranker on example sets (Ray Train + DeepSpeed)",
    "evaluate": "rerankers against a first stage on benchmarks or a build's held-out split",
    "rerank": "score (query, page) pairs from Parquet",
    "push_to_hub": "publish a build output or a trained reranker to the Hugging Face Hub, with its card",
}
ALIASES = {"build": "build_dataset", "view": "view_dataset", "mine": "mine_negatives", "analyse": "analyse_negatives",
           "analyze": "analyse_negatives", "train": "train_reranker", "eval": "evaluate", "push": "push_to_hub"}


def usage() -> str:
    """The command's help: every job, and the short names that also work."""
    width = max(map(len, JOBS))
    short = {v: k for k, v in ALIASES.items() if k != "analyze"}
    lines = [f"  {name.ljust(width)}  {what}" + (f" (or: {short[name]})" if name in short else "")
             for name, what in JOBS.items()]
    return "usage: docrerank <job> [--config FILE] [--address RAY_ADDRESS] [key=value ...]\n\njobs:\n" + "\n".join(lines) \
        + "\n\n`docrerank <job> --help` lists every config key of the job; the same runs as `python -m jobs.<job>`."


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the command line) to ``jobs.<job>.main``; return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name = ALIASES.get(argv[0], argv[0])
    if name not in JOBS:
        print(f"docrerank: unknown job {argv[0]!r}; expected one of {', '.join(JOBS)} "
              f"(or {', '.join(sorted(ALIASES))})", file=sys.stderr)
        return 2
    from docrerank.core.config import set_invoked_as
    from docrerank.core.runtime import interrupted

    set_invoked_as(f"docrerank {argv[0]}")  # messages name the command typed, not `python -m jobs.<name>`
    try:
        return importlib.import_module(f"jobs.{name}").main(argv[1:])
    except KeyboardInterrupt:  # before or after the job's run_job (which handles its own)
        interrupted(name)
        return 130  # not reached: interrupted() exits
    finally:
        set_invoked_as(None)


if __name__ == "__main__":
    sys.exit(main())
