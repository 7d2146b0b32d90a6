"""Shared fixtures: offline hubs, a local Ray, generated PDFs, the real sample PDFs when present, and real Ray
sessions started with `ray start` (a head and worker nodes, fake GPUs, an autoscaler) that are stopped completely."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Fault injection for the isolation tests: only files named like this are affected (see docrerank.core.faults).
os.environ["DOCRERANK_FAULT_INJECT"] = "crash:__crash_me__:2,hang:__hang_me__:1"

REPO = Path(__file__).resolve().parent.parent
# ../shared next to the checkout; a worktree elsewhere points at it with DOCRERANK_SHARED
SHARED = Path(os.environ.get("DOCRERANK_SHARED") or REPO.parent / "shared")
SHARED_PDFS = SHARED / "data" / "pdfs"
RAY_BIN = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole test session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "lib")}})
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_pdfs() -> Path:
    """The real PDFs in ../shared/data/pdfs; tests using them skip on a fresh clone without ../shared."""
    if not SHARED_PDFS.is_dir():
        pytest.skip(f"real sample PDFs not found at {SHARED_PDFS} (../shared is not part of a fresh clone; "
                    "DOCRERANK_SHARED points elsewhere)")
    return SHARED_PDFS


def make_pdf(path: Path, pages: list[tuple[float, float, str]], password: str | None = None) -> Path:
    """Write a PDF whose pages have the given (width_pt, height_pt, text)."""
    import pymupdf

    doc = pymupdf.open()
    for w, h, text in pages:
        page = doc.new_page(width=w, height=h)
        if text:
            page.insert_text((10, 30), text, fontsize=12)
    kw = {}
    if password:
        kw = dict(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "!")
    doc.save(path, **kw)
    doc.close()
    return path


# ------------------------------------------------------------------------------------ real Ray sessions
def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free right now (held open together, so they differ)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def session_processes(temp: Path) -> list:
    """The processes of the Ray session under ``temp``: those whose command line names it, and their descendants
    (Ray's workers rename themselves ``ray::...`` and no longer show it)."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(temp) in a for a in p.info["cmdline"] or []):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


def stop_session(temp: Path, grace_s: float = 10) -> list[str]:
    """Stop the Ray session under ``temp`` and return what is still alive afterwards (nothing, normally).

    Not ``ray stop``: it stops every Ray process of this user on the machine (this test run's own local Ray and
    anyone else's sessions included). This stops the session's processes only: SIGTERM to all of them, SIGKILL
    to those still alive after ``grace_s``."""
    import psutil

    procs = session_processes(temp)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    return sorted({_describe(p) for p in procs + session_processes(temp) if _alive(p)})


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(p) -> str:
    import psutil

    try:
        return f"{p.pid} {' '.join(p.cmdline()[:2])[:200]}"
    except psutil.Error:
        return str(p.pid)


@dataclass
class RaySession:
    """A Ray cluster of real processes on this machine (``ray start``), for jobs run as subprocesses."""

    temp: Path
    gcs_port: int
    env: dict
    dashboard_port: int = 0
    nodes_started: list = field(default_factory=list)

    @property
    def address(self) -> str:
        """The GCS address jobs join (``--address``)."""
        return f"127.0.0.1:{self.gcs_port}"

    def add_node(self, num_cpus: float, num_gpus: int = 0) -> None:
        """Start a worker node (``ray start --address``) declaring ``num_gpus`` GPUs it need not have."""
        p = free_ports(6)
        cmd = [str(RAY_BIN), "start", f"--address={self.address}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
               f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--runtime-env-agent-port={p[2]}",
               f"--metrics-export-port={p[3]}", f"--dashboard-agent-listen-port={p[4]}",
               f"--dashboard-agent-grpc-port={p[5]}", "--disable-usage-stats"]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        self.nodes_started.append((num_cpus, num_gpus))
        if r.returncode != 0 and "timed out during startup" in r.stderr:
            # `ray start` waits 30 s for its raylet to register; a loaded machine can take longer
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(self.nodes()) < 1 + len(self.nodes_started):
                time.sleep(5)
            if len(self.nodes()) == 1 + len(self.nodes_started):
                return
        assert r.returncode == 0, r.stderr[-2000:]

    def run(self, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``python args...`` from the repository root against this cluster."""
        return subprocess.run([sys.executable, *args], env=dict(self.env, RAY_ADDRESS=self.address), cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def nodes(self) -> list[dict]:
        """``ray.nodes()`` of the cluster (alive ones), read by a separate driver."""
        r = self.run(["-c", "import json, ray; ray.init(log_to_driver=False); "
                            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))"], timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])


def start_session(tmp: Path, num_cpus: float, num_gpus: int = 0, autoscaling: dict | None = None,
                  dashboard: bool = False, extra_env: dict | None = None) -> RaySession:
    """A head node on free ports with its own temp dir and HOME (no one's auth token); ``autoscaling``: a cluster
    config for Ray's fake multi-node autoscaler (worker nodes are then started by the autoscaler)."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    temp = Path(f"/tmp/rt_{uuid.uuid4().hex[:8]}")  # short: unix socket paths have a length limit
    # not this process's Ray settings: ray.init() of the session's local Ray sets RAY_AUTH_MODE, for one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), PATH=f"{RAY_BIN.parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "lib"), os.environ.get("PYTHONPATH")])),
               RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               **(extra_env or {}))
    gcs, dash, *p = free_ports(9)
    cmd = [str(RAY_BIN), "start", "--head", f"--port={gcs}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
           f"--temp-dir={temp}", "--disable-usage-stats", f"--include-dashboard={str(dashboard).lower()}",
           f"--dashboard-port={dash}", f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
           f"--runtime-env-agent-port={p[2]}", f"--metrics-export-port={p[3]}",
           f"--dashboard-agent-listen-port={p[4]}", f"--dashboard-agent-grpc-port={p[5]}",
           f"--ray-client-server-port={p[6]}"]
    head_env = dict(env)
    if autoscaling is not None:
        config = dict(autoscaling)
        config["provider"] = {**config["provider"], "gcs_address": f"127.0.0.1:{gcs}"}
        path = tmp / "autoscaling.json"
        path.write_text(json.dumps(config))
        cmd.append(f"--autoscaling-config={path}")
        head_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    session = RaySession(temp, gcs, env, dash)
    r = subprocess.run(cmd, env=head_env, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        stop_session(temp)
        raise AssertionError(r.stderr[-2000:])
    return session


def finish_session(session: RaySession) -> None:
    """Stop the session, remove its temp dir, and fail if any of its processes is left."""
    import shutil

    left = stop_session(session.temp)
    time.sleep(0.5)
    shutil.rmtree(session.temp, ignore_errors=True)
    assert not left, f"processes of the Ray session {session.temp} still running after the stop: {left}"
