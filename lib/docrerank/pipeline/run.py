"""Run several jobs as one: in order, on one Ray instance, each step skipped when it finished before with the same
config and the same inputs.

A step that finishes writes ``<its output>/_meta/pipeline-<step>.json``: its config fingerprint, a run id, when it
finished, its result line and outputs. The fingerprint is a hash of the step's config (secrets redacted) and of the
run id of the step before it, so a step runs again when its config changed or when an earlier step ran again; a rerun
of a step resumes as its job does by hand (each job skips the work its output already holds). A step without an
output (``analyse`` with no ``output``) always runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from docrerank.core import runtime, storage
from docrerank.core.job import Job
from docrerank.pipeline.config import PipelineConfig
from docrerank.pipeline.steps import STEPS

log = logging.getLogger("docrerank.pipeline")


@dataclass
class StepResult:
    """How one step ended: ``ran``, ``skipped`` (finished before, same fingerprint), ``failed`` or ``not run``."""

    step: str
    status: str
    seconds: float = 0.0
    headline: str = ""
    outputs: tuple[str, list[str]] = ("", [])  # (directory, names in it)
    reason: str = ""


def fingerprint(cfg, upstream: str) -> str:
    """Hash of a step's config (secrets redacted: they are never written, not even hashed) and the run id of the
    step before it ("" for the first step)."""
    dump = json.dumps(runtime.redact(cfg.model_dump(mode="json")), sort_keys=True)
    return hashlib.sha256(f"{upstream}|{dump}".encode()).hexdigest()[:24]


def marker_location(step: str, cfg) -> storage.Location | None:
    """``<output>/_meta/pipeline-<step>.json``, or None for a step without an output."""
    output = getattr(cfg, "output", None)
    return storage.resolve(output).join("_meta", f"pipeline-{step}.json") if output else None


def read_marker(step: str, cfg) -> dict | None:
    """The step's marker, or None when it has none (never finished, or no output)."""
    loc = marker_location(step, cfg)
    if loc is None or not storage.exists(loc):
        return None
    try:
        return json.loads(storage.read_bytes(loc))
    except (ValueError, OSError) as e:  # a damaged marker only costs a rerun of the step
        log.warning("%s: unreadable marker %s (%s): running the step again", step, loc.uri, e)
        return None


def start_checks(job: Job, cfg, address: str | None) -> Callable[[], list[str]]:
    """The ``checks`` of a step's ``run_job``: its job's plan, written to the run log (the console gets the problems
    only, as ``<job> cannot start: ...``)."""
    def checks() -> list[str]:
        from docrerank.core import runlog
        from docrerank.core.plan import format_report

        report = job.make_plan(cfg, address)
        rl = runlog.active()
        if rl is not None:
            rl.write(format_report(report) + "\n")
        return report.problems
    return checks


def _made_by(problem: str, outputs: list[str]) -> str | None:
    """The earlier step's output a problem names (an input that step writes), or None."""
    return next((o for o in outputs if re.search(re.escape(o.rstrip("/")) + r"(?=$|[/'\"\s:,)])", problem)), None)


def plan_pipeline(cfg: PipelineConfig, address: str | None = None) -> tuple[str, bool]:
    """Every chosen step's plan, in order, and whether the pipeline can start. A later step's problem that names
    an earlier step's output (an input that does not exist yet) is listed as waiting for that step, not counted."""
    parts, ok, earlier = [], True, []
    from docrerank.core.plan import format_report

    for i, name in enumerate(cfg.chosen, 1):
        job, scfg = STEPS[name], getattr(cfg, name)
        report = job.make_plan(scfg, address)
        waiting = [p for p in report.problems if _made_by(p, earlier)]
        report.problems = [p for p in report.problems if p not in waiting]
        ok &= report.ok
        text = format_report(report)
        if waiting:
            text += "\nwaiting for earlier steps (their outputs do not exist yet):\n" + "\n".join(f"  - {p}" for p in waiting)
        parts.append(f"== step {i} of {len(cfg.chosen)}: {name} (jobs.{job.name}) ==\n{text}")
        out = getattr(scfg, "output", None)
        if out:
            earlier += [out, storage.resolve(out).uri]
    return f"plan of pipeline: {len(cfg.chosen)} step(s), {', '.join(cfg.chosen)}\n\n" + "\n\n".join(parts), ok


def run_pipeline(cfg: PipelineConfig, address: str | None = None, echo: Callable[[str], None] = print) -> list[StepResult]:
    """Run the chosen steps in order; ``echo`` gets each step's tables. Stops at the first failed step (the rest are
    ``not run``). Ray is started (or joined at ``address``) once, before the first step that needs it, and stopped
    at the end when this process started it."""
    import sys

    from docrerank.core import lock

    results: list[StepResult] = []
    upstream = ""
    ray_mode: str | None = None
    names = cfg.chosen
    held: list[str] = []
    try:
        # every step's output is held from the start to the end (the steps' own run_job takes it again): no other run
        # writes into out/local between the build and the mining; one held elsewhere stops the pipeline now
        for name in names:
            output = getattr(getattr(cfg, name), "output", None)
            if output and output not in held:
                lock.acquire(output, "pipeline", " ".join(runtime.redact_argv(sys.argv)))
                held.append(output)
        for i, name in enumerate(names):
            job, scfg = STEPS[name], getattr(cfg, name)
            fp = fingerprint(scfg, upstream)
            marker = read_marker(name, scfg)
            if marker and marker.get("fingerprint") == fp and name not in cfg.rerun:
                log.info("%s: finished %s with the same config and inputs: skipped", name, marker.get("finished"))
                results.append(StepResult(name, "skipped", 0.0, marker.get("headline", ""), job.outputs(scfg),
                                          f"finished {marker.get('finished')}"))
                upstream = marker["run_id"]
                continue
            why = "rerun requested" if name in cfg.rerun else ("config or inputs changed" if marker else "")
            log.info("%s: running jobs.%s%s", name, job.name, f" ({why})" if why else "")
            if job.needs_ray(scfg) and ray_mode is None:
                ray_mode = runtime.init_ray(address)
            if job.needs_ray(scfg):
                runtime.configure_ray_data(job.progress)
            t0 = time.perf_counter()
            result = runtime.run_job(job.name, scfg, lambda: job.run(scfg, log.info), summarise=job.summarise,
                                     errors=job.errors, checks=start_checks(job, scfg, address))
            seconds = round(time.perf_counter() - t0, 1)
            if result is None:
                results.append(StepResult(name, "failed", seconds, reason=f"jobs.{job.name} failed (see above)"))
                results += [StepResult(n, "not run", reason=f"{name} failed") for n in names[i + 1:]]
                break
            headline = job.headline(result)
            run_id = uuid.uuid4().hex[:16]
            loc = marker_location(name, scfg)
            if loc is not None:
                runtime.write_json(loc, {
                    "step": name, "job": job.name, "fingerprint": fp, "run_id": run_id, "upstream": upstream,
                    "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "seconds": seconds, "headline": headline, "outputs": job.outputs(scfg)})
            echo(job.report(scfg, result))
            results.append(StepResult(name, "ran", seconds, headline, job.outputs(scfg)))
            upstream = run_id
    finally:
        for output in held:
            lock.release(output)
        if ray_mode == "local":
            runtime.shutdown_ray()
    return results


def summary_table(results: list[StepResult]) -> str:
    """The final summary: one row per step (status, seconds, result), then each step's outputs on one line."""
    rows = [["step", "status", "seconds", "result"]]
    rows += [[r.step, r.status, f"{r.seconds:.1f}" if r.status in ("ran", "failed") else "", r.headline or r.reason]
             for r in results]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a.ljust(w[0])}  {b.ljust(w[1])}  {c.rjust(w[2])}  {d}".rstrip() for a, b, c, d in rows]
    lines.insert(1, "  ".join("-" * n for n in w) + "  " + "-" * max(len(row[3]) for row in rows))
    outs = [r for r in results if r.status in ("ran", "skipped") and r.outputs[1]]
    if outs:
        width = max(len(r.step) for r in outs)
        lines += ["outputs:"] + [f"  {r.step.ljust(width)}  {r.outputs[0].rstrip('/')}/  {', '.join(r.outputs[1])}"
                                 for r in outs]
    return "\n".join(lines)
