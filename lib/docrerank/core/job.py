"""One declaration per job: ``Job``. Each job package has a ``job.py`` with ``JOB = Job(...)``; the entry point
``jobs/<name>.py`` is ``main = JOB.main``, and ``docrerank <name>`` and the pipeline read the same object. So a job's
config class, its work, its plan, what it prints and the outputs it lists are written once.

``Job.main`` is every entry point's shape: parse the config (``--config``, ``key=value``), ``--plan`` prints the
plan, else set up logging, run the work inside ``runtime.run_job`` (start checks first, Ray started when the job
needs it) and print the job's report; exit 0, or 1 when the job failed or could not start.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from docrerank.core.plan import PlanReport, Resources


def _always(cfg: Any) -> bool:
    return True


def _no_outputs(cfg: Any) -> tuple[str, list[str]]:
    return "", []



@dataclass(frozen=True)
class Job:
    """A job: its name, config class and work, and everything its entry point and the pipeline do around the work."""

    name: str
    """``jobs.<name>``, ``docrerank <name>``, ``<output>/_meta/<name>.json``."""
    summary: str
    """One line in ``docrerank --help``."""
    doc: str
    """The ``--help`` description (the job package's ``job.py`` docstring)."""
    config: type
    """The config class (``core.config.Config``)."""
    run: Callable[[Any, Callable[[str], None]], Any]
    """(config, progress) -> the result (stats, a summary; never None). Ray is up when ``needs_ray``. ``progress``
    takes progress lines: printed by the job, logged by the pipeline."""
    report: Callable[[Any, Any], str]
    """(config, result) -> what is printed after the work: the job's tables (the pipeline prints the same)."""
    plan: Optional[Callable[[Any, "Resources"], "PlanReport"]] = None
    """(config, resources) -> the job's plan: ``--plan`` prints it, the start checks stop on its problems."""
    headline: Callable[[Any], str] = lambda result: ""
    """result -> one line in the pipeline's summary."""
    outputs: Callable[[Any], tuple[str, list[str]]] = _no_outputs
    """config -> (directory, what a person opens in it), as the pipeline's summary lists them."""
    needs_ray: Callable[[Any], bool] = _always
    """config -> whether the work runs on Ray (started before it, once per pipeline)."""
    on_cluster: Optional[Callable[[Any], bool]] = None
    """config -> whether the plan counts the Ray cluster's resources (else this machine's); default ``needs_ray``."""
    progress: bool = True
    """Ray Data progress bars during the work."""
    errors: tuple = (ValueError, RuntimeError)
    """Failures reported as ``<name> failed: <why>`` (exit 1) instead of a traceback."""
    summarise: Optional[Callable[[Any], Any]] = None
    """result -> what ``_meta/<name>.json`` keeps (default: the result)."""
    aliases: tuple[str, ...] = ()
    """Short names ``docrerank`` also accepts (``build`` for ``build_dataset``)."""
    argv: Optional[Callable[[list[str]], list[str]]] = None
    """Rewrites the command line before parsing (flags or a positional argument some jobs take)."""
    dry_run: Optional[Callable[[Any], int]] = None
    """What ``--plan`` does when the job has no ``plan`` (prints, returns the exit status); neither: ``--plan``
    is ignored."""

    def resources(self, cfg: Any, address: Optional[str] = None) -> "Resources":
        """What the plan counts: the Ray cluster (joined at ``address``) or this machine."""
        from docrerank.core import plan

        cluster = (self.on_cluster or self.needs_ray)(cfg)
        return plan.detect_resources(address) if cluster else plan.local_resources()

    def make_plan(self, cfg: Any, address: Optional[str] = None) -> "PlanReport":
        """The job's plan against the resources it would run on."""
        if self.plan is None:
            raise ValueError(f"{self.name} has no plan")
        return self.plan(cfg, self.resources(cfg, address))

    def work(self, cfg: Any, address: Optional[str] = None, progress: Callable[[str], None] = print) -> Any:
        """The work as the entry point runs it: Ray started (or joined) first when the job needs it."""
        if self.needs_ray(cfg):
            from docrerank.core import runtime

            runtime.init_ray(address)
            runtime.configure_ray_data(self.progress)
        return self.run(cfg, progress)

    def main(self, argv: Optional[list[str]] = None) -> int:
        """Run the job with ``argv`` (default: the command line); return the exit status."""
        from docrerank.core.config import parse_job_args

        argv = list(sys.argv[1:] if argv is None else argv)
        if self.argv is not None:
            argv = self.argv(argv)
        cfg, ns = parse_job_args(self.config, argv, prog=f"python -m jobs.{self.name}", description=self.doc)
        from docrerank.core import plan, runtime

        if ns.plan and self.plan is not None:
            return plan.print_plan(self.make_plan(cfg, ns.address))
        if ns.plan and self.dry_run is not None:
            return self.dry_run(cfg)
        runtime.setup_logging()
        checks = plan.start_checks(lambda: self.make_plan(cfg, ns.address)) if self.plan is not None else None
        result = runtime.run_job(self.name, cfg, lambda: self.work(cfg, ns.address), summarise=self.summarise,
                                 errors=self.errors, checks=checks)
        if result is None:
            return 1
        print(self.report(cfg, result))
        return 0
