"""The ``docrerank`` command (installed by ``pip install -e .``): ``docrerank <job> [args]`` runs ``jobs.<job>``.

    docrerank pipeline --config jobs/configs/pipeline_local.yaml
    docrerank build_dataset --config jobs/configs/build_local.yaml select.k=4     (or: docrerank build ...)
    docrerank <job> --help                                                        (every config key of the job)
"""

from __future__ import annotations

import importlib
import sys

PIPELINE = "several jobs as one, from one config (ingest -> build -> mine -> analyse -> train -> evaluate)"


def _declared() -> tuple[dict[str, str], dict[str, str]]:
    """(job -> what it does, short name -> job), from the jobs' declarations (``docrerank/<package>/job.py``)."""
    from docrerank.pipeline.steps import JOBS as DECLARED

    jobs = {"pipeline": PIPELINE, **{name: job.summary for name, job in DECLARED.items()}}
    return jobs, {alias: name for name, job in DECLARED.items() for alias in job.aliases}


JOBS, ALIASES = _declared()


def usage() -> str:
    """The command's help: every job, and the short names that also work."""
    width = max(map(len, JOBS))
    short = {v: k for k, v in ALIASES.items() if k != "analyze"}
    lines = [f"  {name.ljust(width)}  {what}" + (f" (or: {short[name]})" if name in short else "")
             for name, what in JOBS.items()]
    return "usage: docrerank <job> [--config FILE] [--address RAY_ADDRESS] [key=value ...]\n\njobs:\n" + "\n".join(lines) \
        + "\n\n`docrerank <job> --help` lists every config key of the job; the same runs as `python -m jobs.<job>`."


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the command line) to ``jobs.<job>.main`` (the job's ``JOB.main``); return its exit
    status."""
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
