"""Glue shared by every job: start or join Ray, record what ran, print summaries."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from docrerank.core import lock, runlog, storage

log = logging.getLogger("docrerank")

SECRET_KEYS = ("password", "passwords", "password_map", "api_key", "token", "secret")


def setup_logging() -> None:
    """INFO logs with time and logger name on stderr (stdout is for the job's tables).

    Inside ``run_job`` on the local default, only our own logs (``docrerank.*``) reach the console; other libraries'
    go to the run log (:mod:`docrerank.core.runlog`)."""
    logging.basicConfig(level=logging.INFO, format=runlog.FORMAT, stream=sys.stderr)


HUB_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # huggingface_hub reads the first, the second is its old name


def hub_token_env() -> dict[str, str]:
    """``{"HF_TOKEN": token}`` when this process has a Hugging Face token (gated models such as Pixtral need one with
    their licence accepted) and the job's runtime env does not already carry one, else ``{}``: what ``init_ray`` adds
    to the runtime env so every node's workers get it. The token's value is never logged or written."""
    import json

    token = next((os.environ[v] for v in HUB_TOKEN_VARS if os.environ.get(v)), None)
    if not token:
        return {}
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by `ray job submit` for its driver
    if injected:
        try:
            env = ((json.loads(injected).get("runtime_env") or {}).get("env_vars") or {})
        except (ValueError, AttributeError):
            env = {}
        if any(v in env for v in HUB_TOKEN_VARS):
            return {}  # the job's runtime env has it (Ray refuses to merge the same key twice)
    return {"HF_TOKEN": token}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> str:
    """Connect to ``address`` or ``$RAY_ADDRESS``; with neither, start a local Ray sized to this machine.

    Returns "local", "existing" (Ray was already up in this process) or the address joined. A local instance gets
    the project's ``lib/`` on every worker's path through the runtime environment, so an uninstalled checkout works
    too. Started inside ``run_job`` (the local default), it prints nothing to the console: Ray's own logs, what
    native code writes to stderr and every line its workers print go to the job's run log (``runlog``).
    """
    import ray

    if ray.is_initialized():
        return "existing"
    address = address or os.environ.get("RAY_ADDRESS")
    lib_dir = str(Path(__file__).resolve().parent.parent)
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [lib_dir, os.environ.get("PYTHONPATH")]))}
    token = hub_token_env()
    env_vars.update(token)
    if address:
        runlog.release()  # a cluster: Ray's and the libraries' logs stay where they would be without us
        # Under `ray job submit` the job's runtime env (working_dir, py_modules) is inherited; don't override it,
        # only add the hub token (Ray merges env_vars by key) so every node can download gated models.
        try:
            ray.init(address=address, log_to_driver=True, **({"runtime_env": {"env_vars": token}} if token else {}))
        except Exception as err:  # noqa: BLE001 - Ray raises plain Exception, TimeoutError, ConnectionError...
            raise RayStartError(f"could not join the Ray cluster at {address}: {_first_line(err)}") from None
        return address
    run_log = runlog.active()
    if run_log is not None:
        import ray.data  # noqa: F401  (its loggers must exist to be routed; every job that starts Ray uses it)

        runlog.route_ray_process(run_log)
    for attempt in (1, 2):  # a start that timed out on a loaded machine (or lost a port race) is tried once more
        try:
            ray.init(
                address="local",  # always a new instance: never attach to a cluster someone started with `ray start`
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=True,
                runtime_env={"env_vars": env_vars},
            )
            break
        except Exception as err:  # noqa: BLE001 - "The current node timed out during startup", TimeoutError, ...
            if ray.is_initialized():
                ray.shutdown()
            if attempt == 2:
                raise RayStartError(
                    f"could not start a local Ray (tried twice): {_first_line(err)}; the machine may be overloaded: "
                    "run again, or start Ray yourself (`ray start --head`) and pass its address with --address"
                ) from None
            log.warning("starting a local Ray failed (%s); trying once more", _first_line(err))
    if run_log is not None:
        runlog.route_ray_workers(run_log)
    return "local"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def shutdown_ray() -> None:
    """Stop this process's Ray (a local instance ends with it) and give the console back what ``init_ray`` routed."""
    import ray

    ray.shutdown()
    runlog.unroute_ray()


def configure_ray_data(progress: bool = True) -> None:
    """Progress bars on for people, and no retries of application errors (ours become quarantine rows)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    ctx.print_on_execution_start = False


def cluster_cpus() -> int:
    """CPUs of the Ray cluster joined (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def redact(obj: Any) -> Any:
    """Copy of a config dump with every secret-looking value replaced by '***'."""
    if isinstance(obj, dict):
        return {k: ("***" if k in SECRET_KEYS and obj[k] else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def run_metadata(job: str, config) -> dict:
    """What ran: job, resolved config (secrets redacted), package version, git commit, versions, time."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("docrerank")
    except PackageNotFoundError:
        pkg = "unknown"
    return {
        "job": job,
        "config": redact(config.model_dump(mode="json")),
        "docrerank_version": pkg,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "argv": redact_argv(sys.argv),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the values of secret-looking ``key=value`` items replaced by '***'."""
    return [a.split("=", 1)[0] + "=***" if "=" in a and any(s in a.split("=", 1)[0] for s in SECRET_KEYS) else a for a in argv]


def write_json(loc: storage.Location, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    storage.write_bytes_atomic(loc, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_run_metadata(out: storage.Location, meta: dict) -> None:
    """Write ``_meta/<job>.json`` (latest) and keep earlier runs as ``_meta/<job>-<time>.json``."""
    stamp = meta["started"].replace(":", "").replace("-", "")
    write_json(out.join("_meta", f"{meta['job']}.json"), meta)
    write_json(out.join("_meta", f"{meta['job']}-{stamp}.json"), meta)


def run_job(job: str, config, work, summarise=None, errors: tuple = (ValueError, RuntimeError), checks=None):
    """Run ``work()`` as the job ``job``; return its result, or None when it failed with one of ``errors``.

    ``checks()`` (the job's plan, ``core.plan.start_checks``) runs first, before any model loads: when it returns
    problems, they are printed as ``<job> cannot start: N problem(s)`` and the job fails without running ``work``.

    Every entry point has the same shape: parse its config, set up logging, call this (Ray is started inside
    ``work`` where the job needs it), then print its own tables from the result and exit 0 (or 1 on None).
    On success nothing is printed here but, on the local default, one line naming the run log where other
    libraries' output went (``runlog.capture``). With a ``config.output`` the run metadata goes to ``<output>/_meta/``
    before ``work()`` and again after it with ``finished`` and the summary (``summarise(result)``, default the
    result); a job without an output (``output`` None) records nothing. A failure of one of ``errors`` prints
    ``<job> failed: <why>`` to stderr (so does a Ray that could not start, :class:`RayStartError`); Ctrl-C prints one
    line saying the same command resumes and exits 130 (:func:`interrupted`); anything else propagates with its
    traceback. ``work()`` must return something other than None (the job's stats, a summary), so that None always
    means "failed".

    With an output, the job holds its lock while it runs (``core.lock``: a second run into the same output stops
    with ``<job> cannot start: <output> is being written by another run: <job>, pid ... on <host> ...``), and a job
    that resumes stops the same way, before writing anything, when the output holds its finished work made with
    other data-changing settings (``core.rerun``).
    """
    from docrerank.core.config import command_for

    if checks is not None:
        try:
            problems = checks()
        except errors as e:
            problems = [f"the start-of-job checks failed: {e}"]
        if problems:
            print(f"{job} cannot start: {len(problems)} problem(s) ({command_for(job)} --plan shows the whole plan)\n"
                  + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
            return None
    output = getattr(config, "output", None)
    out = storage.resolve(output) if output else None
    if out is not None:
        problem = claim_output(out, job, config)
        if problem:
            print(f"{job} cannot start: {problem}", file=sys.stderr)
            return None
    try:
        meta = run_metadata(job, config)
        if out is not None:
            write_run_metadata(out, meta)
        try:
            with runlog.capture(job, output):  # the local default: other libraries' output goes to the run log
                result = work()
        except (*errors, RayStartError) as e:
            print(f"{job} failed: {e}", file=sys.stderr)
            return None
        except KeyboardInterrupt:
            interrupted(job)
        if result is None:
            raise TypeError(f"run_job({job!r}): work() returned None; expected the job's result (None means failed)")
        if out is not None:
            meta.update(finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        summary=summarise(result) if summarise else result)
            write_run_metadata(out, meta)
        return result
    finally:
        if out is not None:
            lock.release(output)


def claim_output(out: storage.Location, job: str, config) -> str | None:
    """Take ``out``'s lock (``core.lock``: one writer per output) and check that a rerun would not mix settings
    (``core.rerun``); None when the job may write, else the one-line reason (the lock is not kept then)."""
    from docrerank.core.rerun import RerunRefused, check_rerun

    try:
        lock.acquire(out.uri, job, " ".join(redact_argv(sys.argv)))
    except lock.OutputLocked as e:
        return str(e)
    try:
        meta_loc = out.join("_meta", f"{job}.json")
        recorded = json.loads(storage.read_bytes(meta_loc)) if storage.exists(meta_loc) else None
        check_rerun(out, job, config, recorded, redact(config.model_dump(mode="json")))
    except (RerunRefused, ValueError, OSError) as e:
        lock.release(out.uri)
        return str(e)
    return None


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def interrupted(job: str) -> None:
    """Ctrl-C: one line instead of a ``KeyboardInterrupt`` traceback, and exit status 130. Every job writes its
    shards atomically and skips finished work on a rerun, so the same command resumes."""
    from docrerank.core.config import command_for

    print(f"\n{job} interrupted: what finished is kept; resume with the same command ({command_for(job)} ...)",
          file=sys.stderr, flush=True)
    raise SystemExit(EXIT_INTERRUPTED)


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message is one line saying what to do."""


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table (first column left-aligned, others right-aligned)."""
    cells = [header] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
