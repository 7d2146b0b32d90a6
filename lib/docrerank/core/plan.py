"""Plan before you spend: the report that every job's ``--plan`` prints and every job checks at start.

A job's ``plan.py`` (``build/plan.py``, ``train/plan.py``, ...) fills a ``PlanReport``: sections (tables of
stages, models, actor pools, resources, paths) and problems. ``--plan`` prints it and exits 1 when it lists
a problem; a job started for real runs the same plan before any model loads and stops with the problem list
(``runtime.run_job(..., checks=...)``). Everything here runs on a CPU machine in seconds: no model is
loaded or downloaded, Ray is joined only when an address is given (or already joined), never started.

Shared pieces: ``PlanOptions`` (the ``plan`` key of every job config: throughput figures, page count),
``detect_resources`` (the joined cluster, with its autoscaler's maximum, or this machine),
``check_writable`` (create and remove a probe on any pyarrow filesystem), ``parquet_rows`` (row counts from
Parquet footers), ``gpu_seconds`` (model calls and tokens -> GPU time from a throughput figure).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pydantic import Field

from docrerank.core import storage
from docrerank.core.config import Config
from docrerank.core.runtime import format_table

log = logging.getLogger("docrerank.plan")

# The project's measured figure (bench/results/rerank_pairs_per_s_cuda_vlm_2b.json): a Qwen2-VL-2B-shaped model
# in bf16 on one H100 scored 46.9 (page, query) pairs/s at about 1,100 prompt tokens per pair (1024 image tokens).
MEASURED_PROMPT_TOKENS_PER_S_2B = 46.9 * 1100
MEASURED_SOURCE = "measured: H100, Qwen2-VL-2B shapes (bench/results/rerank_pairs_per_s_cuda_vlm_2b.json)"
# No output-token rate has been measured yet: decoding is memory-bound and far slower per token than prefill;
# planned at a tenth of the prefill rate until bench/gpu_check.sh measures it.
DECODE_COST = 10.0


class Throughput(Config):
    """Throughput of one model on one of its actors (all the GPUs of that actor)."""

    prompt_tokens_per_s: float = Field(gt=0)
    """Prompt (prefill) tokens processed per second."""

    output_tokens_per_s: float = Field(gt=0)
    """Generated tokens per second, all sequences in flight together."""


class PlanOptions(Config):
    """What ``--plan`` and the start-of-job checks assume."""

    throughput: dict[str, Throughput] = Field(default_factory=dict)
    """Throughput per model name (as written in the engine or model config). Models not listed get the project's
    default: its measured H100 figure for a 2B Qwen2-VL scaled by parameter count (output tokens at a tenth of
    the prompt rate); the report says which figure each estimate used."""

    input_pages: Optional[int] = Field(None, ge=0)
    """The input's page count, when you know it better than the plan can count it (e.g. a huge PDF bucket)."""

    count_timeout_s: float = Field(20.0, gt=0)
    """Time the driver may spend opening PDFs to count their pages; past it the rest is estimated from the
    pages per file seen so far (the report says so)."""


@dataclass
class Resources:
    """CPUs and GPUs a job can get: now and, for an autoscaling cluster, at most."""

    cpus: float
    gpus: float
    source: str
    max_cpus: Optional[float] = None
    max_gpus: Optional[float] = None
    grows: bool = False
    """An autoscaler runs that does not publish its maximum (Ray's open-source one): more may come, how much is
    unknown, so needing more than the cluster has now is not a problem (the pools wait for the nodes)."""

    @property
    def cpu_capacity(self) -> float:
        """The most CPUs the cluster can have (its autoscaler's maximum, else what it has)."""
        return max(self.cpus, self.max_cpus or 0)

    @property
    def gpu_capacity(self) -> float:
        """The most GPUs the cluster can have (its autoscaler's maximum, else what it has)."""
        return max(self.gpus, self.max_gpus or 0)


@dataclass
class Section:
    """One titled table of the report, with notes under it."""

    title: str
    header: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PlanReport:
    """What a job will do and need, and every problem found."""

    job: str
    sections: list[Section] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def section(self, title: str, header: list[str]) -> Section:
        """A new section, appended."""
        sec = Section(title, header)
        self.sections.append(sec)
        return sec

    def problem(self, message: str) -> None:
        """Record a problem (the job must not start with it)."""
        if message not in self.problems:
            self.problems.append(message)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def format_report(report: PlanReport) -> str:
    """The report as text: each section's table and notes, then the problems (or "no problems found")."""
    parts = [f"plan of {report.job}"]
    for sec in report.sections:
        body = format_table(sec.header, sec.rows) if sec.rows else "  (none)"
        notes = "".join(f"\n  note: {n}" for n in sec.notes)
        parts.append(f"\n{sec.title}\n{body}{notes}")
    if report.problems:
        parts.append(f"\n{len(report.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in report.problems))
    else:
        parts.append("\nno problems found")
    return "\n".join(parts)


def print_plan(report: PlanReport) -> int:
    """Print ``report`` to stdout; the exit status of ``--plan``: 0 without problems, else 1."""
    print(format_report(report))
    return 0 if report.ok else 1


def start_checks(make_report: Callable[[], PlanReport]) -> Callable[[], list[str]]:
    """The ``checks`` of ``runtime.run_job``: build the plan, return its problems. The whole plan goes to the log
    at DEBUG (``--plan`` prints it); a run that passes its checks says so in one line."""
    def checks() -> list[str]:
        report = make_report()
        log.debug("%s", format_report(report))
        if not report.problems:
            log.info("start checks passed (the plan: rerun with --plan)")
        return report.problems
    return checks


# ------------------------------------------------------------------------------------------ resources
def local_gpus() -> int:
    """GPUs of this machine (``nvidia-smi -L``, limited by ``CUDA_VISIBLE_DEVICES``); 0 without a driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return n


def detect_resources(address: Optional[str] = None) -> Resources:
    """The joined Ray cluster's CPUs and GPUs (and its autoscaler's maximum when it has one); joins ``address``
    (or ``$RAY_ADDRESS``) when given; with neither, this machine, as the local Ray a job starts would see it."""
    address = address or os.environ.get("RAY_ADDRESS")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized() or address:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=True)  # as runtime.init_ray joins a cluster
        now = ray.cluster_resources()
        res = Resources(float(now.get("CPU", 0)), float(now.get("GPU", 0)), f"Ray cluster {address or '(joined)'}")
        try:  # autoscaling clusters: what their node groups may add (Ray Train and Data read the same)
            from ray._private.state import state

            top = state.get_max_resources_from_cluster_config() or {}
        except Exception as err:  # noqa: BLE001 - private API: absent in some Ray versions
            log.debug("no autoscaler maximum: %s", err)
            top = {}
        if top:
            res.max_cpus, res.max_gpus = float(top.get("CPU", 0)), float(top.get("GPU", 0))
            res.source += " (autoscaler maximum read from its cluster config)"
        else:
            from docrerank.core.raydata import autoscaler_view

            res.grows = autoscaler_view()[1]
            if res.grows:
                res.source += " (an autoscaler that does not publish its maximum)"
        return res
    return Resources(float(os.cpu_count() or 1), float(local_gpus()), "this machine (a job would start a local Ray)")


def local_resources() -> Resources:
    """This machine's CPUs and GPUs, for jobs that run in their driver process without Ray."""
    return Resources(float(os.cpu_count() or 1), float(local_gpus()), "this machine (the job runs here, without Ray)")


def resources_section(report: PlanReport, res: Resources, need_gpus: float, need_cpus: float,
                      what: str = "actor pools at their minimum size") -> None:
    """Needed vs available CPUs and GPUs; a problem when the cluster can never give what the job needs at once."""
    sec = report.section("resources", ["resource", "needed", "cluster now", "cluster max"])
    sec.rows.append(["GPU", _num(need_gpus), _num(res.gpus), _num(res.max_gpus) if res.max_gpus is not None else ""])
    sec.rows.append(["CPU", _num(need_cpus), _num(res.cpus), _num(res.max_cpus) if res.max_cpus is not None else ""])
    sec.notes.append(f"needed: {what}; cluster: {res.source}")
    if res.grows and (need_gpus > res.gpus or need_cpus > res.cpus):
        sec.notes.append(f"the autoscaler must add nodes for {_num(need_gpus)} GPUs and {_num(need_cpus)} CPUs; the "
                         "pools wait for them (engine.ray.placement_timeout_s), then fail with the numbers")
        return
    if need_gpus > res.gpu_capacity:
        report.problem(f"needs {_num(need_gpus)} GPUs at once ({what}) but the cluster has {_num(res.gpus)}"
                       + (f" and can grow to {_num(res.max_gpus)}" if res.max_gpus is not None else "")
                       + ": lower the actors or GPUs per actor, or add GPU nodes")
    if need_cpus > res.cpu_capacity:
        report.problem(f"needs {_num(need_cpus)} CPUs at once ({what}) but the cluster has {_num(res.cpus)}"
                       + (f" and can grow to {_num(res.max_cpus)}" if res.max_cpus is not None else ""))
    elif res.gpus == 0 and need_gpus > 0 and res.max_gpus:
        sec.notes.append(f"no GPU node is up yet: the autoscaler must add {_num(need_gpus)} GPUs (minutes)")


def _num(x: Optional[float]) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


# ---------------------------------------------------------------------------------------------- paths
def check_writable(uri: str) -> Optional[str]:
    """None when a file can be created under ``uri`` (created and removed again, with any directory made for it),
    else why not. Works on any pyarrow filesystem (local paths, s3://, gs://)."""
    import pyarrow.fs as pafs

    try:
        loc = storage.resolve(uri)
        made: list[str] = []
        if isinstance(loc.fs, pafs.LocalFileSystem):
            path = loc.path
            while path and path != "/" and loc.fs.get_file_info(path).type == pafs.FileType.NotFound:
                made.append(path)
                path = path.rsplit("/", 1)[0] or "/"
            if loc.fs.get_file_info(path).type == pafs.FileType.File:
                return f"{path} is a file, not a directory"
        probe = loc.join(f".docrerank-plan-probe-{uuid.uuid4().hex[:8]}")
        try:
            storage.write_bytes_atomic(probe, b"")
            loc.fs.delete_file(probe.path)
        finally:
            for path in made:  # deepest first: leave no trace of the plan
                try:
                    loc.fs.delete_dir(path)
                except OSError:
                    pass
    except Exception as err:  # noqa: BLE001 - any failure is the answer
        return f"{type(err).__name__}: {err}".strip()
    return None


def check_readable(uri: str) -> Optional[str]:
    """None when something is at ``uri``, else why not."""
    try:
        if not storage.exists(storage.resolve(uri)):
            return "not found"
    except Exception as err:  # noqa: BLE001 - credentials, unknown schemes, ...
        return f"{type(err).__name__}: {err}".strip()
    return None


def paths_section(report: PlanReport, reads: list[tuple[str, str]], writes: list[tuple[str, str]]) -> Section:
    """Check every input (exists) and output or cache path (writable) and list them; problems for failures."""
    sec = report.section("paths", ["path", "role", "check"])
    for role, uri in reads:
        why = check_readable(uri)
        sec.rows.append([uri, role, "found" if why is None else f"NOT FOUND ({why})" if why == "not found" else why])
        if why is not None:
            report.problem(f"{role} {uri}: {why}")
    for role, uri in writes:
        why = check_writable(uri)
        sec.rows.append([uri, role, "writable" if why is None else f"NOT WRITABLE ({why})"])
        if why is not None:
            report.problem(f"{role} {uri} is not writable: {why}")
    return sec


def parquet_rows(uri: str, columns_needed: tuple[str, ...] = ()) -> tuple[int, int]:
    """(rows, files) of the Parquet files under ``uri`` (a directory or one file), from their footers only."""
    import pyarrow.parquet as pq

    loc = storage.resolve(uri)
    files = [loc.path] if loc.path.endswith(".parquet") else storage.list_files(loc, suffixes=(".parquet",))
    rows = 0
    for f in files:
        with loc.fs.open_input_file(f) as fh:
            meta = pq.ParquetFile(fh).metadata
            rows += meta.num_rows
            names = set(meta.schema.names)
            missing = [c for c in columns_needed if c not in names]
            if missing:
                raise ValueError(f"{storage.uri_of(loc, f)}: no column(s) {missing}")
    return rows, len(files)


# -------------------------------------------------------------------------------------------- estimates
def params_billions(model: str) -> Optional[float]:
    """Parameter count in billions read from a model name ("Qwen2.5-VL-7B-Instruct" -> 7.0), else None."""
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", model.rsplit("/", 1)[-1])
    return float(m.group(1)) if m else None


def throughput_for(model: str, opts: PlanOptions) -> tuple[Optional[Throughput], str]:
    """(throughput, where it comes from) of ``model``: configured, else the project's default, else (None, why)."""
    if model in opts.throughput:
        return opts.throughput[model], "configured (plan.throughput)"
    b = params_billions(model)
    if b is None:
        return None, f"no figure: set plan.throughput.{model!r} (its size is not in its name)"
    prompt = MEASURED_PROMPT_TOKENS_PER_S_2B * 2.0 / b
    return (Throughput(prompt_tokens_per_s=prompt, output_tokens_per_s=prompt / DECODE_COST),
            f"default: {MEASURED_SOURCE}, scaled to {b:g}B; output at 1/{DECODE_COST:g} of it (not measured)")


def gpu_seconds(prompt_tokens: float, output_tokens: float, figure: Optional[Throughput], gpus_per_actor: float) -> Optional[float]:
    """GPU-seconds for that many prompt and output tokens on actors of ``gpus_per_actor`` GPUs (None without a
    figure)."""
    if figure is None:
        return None
    actor_s = prompt_tokens / figure.prompt_tokens_per_s + output_tokens / figure.output_tokens_per_s
    return actor_s * max(gpus_per_actor, 1.0)


def fmt_hours(seconds: Optional[float]) -> str:
    """Seconds as hours with 2 significant figures ("" for None)."""
    if seconds is None:
        return "?"
    h = seconds / 3600
    return f"{h:.2g}" if h < 10 else f"{h:,.0f}"


def fmt_count(n: Optional[float]) -> str:
    """A count with thousands separators ("?" for None)."""
    return "?" if n is None else f"{n:,.0f}"
