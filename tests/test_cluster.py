"""Cluster configs validate; a real `ray start --head` with token auth runs `ray job submit` of the build, and every
process of that session is gone afterwards."""

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import RAY_BIN, finish_session, start_session

pytestmark = pytest.mark.slow  # a real ray start --head and ray job submit

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


def test_cluster_launcher_config_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())  # generation/verification
    assert any(t["resources"].get("GPU", 0) >= 4 for t in types.values())  # training nodes
    assert sum(t["max_workers"] for t in types.values()) <= cfg["max_workers"] + types[cfg["head_node_type"]]["max_workers"]
    assert cfg["docker"]["image"]  # the project image has the gpu extra (tests/test_cluster_configs.py)


def _k8s_docs():
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            yield path.name, doc


def _cluster_spec(doc):
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _check_group(name, start, template):
    containers = template["spec"]["containers"]
    assert containers and all(c.get("image") for c in containers), name
    res = containers[0]["resources"]
    assert res["requests"] == res["limits"], f"{name}: requests and limits differ"
    cpus = start.get("num-cpus")
    if cpus is not None and cpus != "0":
        assert str(res["limits"]["cpu"]) == cpus, f"{name}: num-cpus {cpus} != cpu limit {res['limits']['cpu']}"
    gpus = start.get("num-gpus", "0")
    assert str(res["limits"].get("nvidia.com/gpu", "0")) == gpus, f"{name}: num-gpus {gpus} != GPU limit"


def test_kuberay_manifests_are_complete_and_consistent():
    kinds = set()
    for fname, doc in _k8s_docs():
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"], fname
        kinds.add(doc["kind"])
        spec = _cluster_spec(doc)
        assert spec["rayVersion"].startswith("2.")
        head = spec["headGroupSpec"]
        _check_group(f"{fname}:head", head["rayStartParams"], head["template"])
        groups = spec["workerGroupSpecs"]
        assert len({g["groupName"] for g in groups}) == len(groups)
        for g in groups:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
            _check_group(f"{fname}:{g['groupName']}", g["rayStartParams"], g["template"])
        assert any(g["rayStartParams"].get("num-gpus", "0") != "0" for g in groups), f"{fname}: no GPU group"
        if doc["kind"] == "RayJob":
            assert doc["spec"]["entrypoint"].startswith("python -m jobs.")
    assert kinds == {"RayCluster", "RayJob"}


def test_runtime_env_has_no_secrets():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "." and ".venv/" in env["excludes"]
    for key in env.get("env_vars", {}):
        assert not set(key.upper().split("_")) & {"KEY", "TOKEN", "SECRET", "PASSWORD"}, key


@pytest.fixture
def ray_head(tmp_path):
    """A real head started with `ray start --head`, token authentication on, on free ports; every process of its
    session stopped afterwards (and checked)."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PATH=f"{RAY_BIN.parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY_BIN, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    token = home / ".ray" / "auth_token"
    assert token.is_file()
    session = start_session(tmp_path, num_cpus=2, dashboard=True, extra_env={"RAY_AUTH_MODE": "token"})
    try:
        yield {"address": f"http://127.0.0.1:{session.dashboard_port}", "token": token, "env": env, "ray": RAY_BIN}
    finally:
        finish_session(session)


def test_ray_job_submit_runs_the_build(ray_head, tmp_path):
    client = dict(ray_head["env"], HOME=str(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(ray_head["token"]))
    # security stays on: a client without the token is refused
    anon = subprocess.run([ray_head["ray"], "job", "list", "--address", ray_head["address"]], capture_output=True,
                          text=True, timeout=60, env=dict(client, RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN_PATH=""))
    assert anon.returncode != 0 and "token" in (anon.stderr + anon.stdout).lower()
    out = tmp_path / "out"
    submit = [ray_head["ray"], "job", "submit", "--address", ray_head["address"], "--working-dir", str(REPO),
              "--runtime-env", str(CLUSTER / "runtime_env.yaml"), "--submission-id", "docrerank-test", "--",
              "python", "-m", "jobs.build_dataset", "--config", "jobs/configs/build_local.yaml",
              f"output={out}", "input=sample:1"]
    for attempt in range(10):  # the dashboard agent may need a moment after `ray start`
        r = subprocess.run(submit, capture_output=True, text=True, timeout=600, env=client, cwd=REPO)
        if "No available agent" not in r.stderr + r.stdout:
            break
        time.sleep(3)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in r.stdout + r.stderr
    logs = subprocess.run([ray_head["ray"], "job", "logs", "docrerank-test", "--address", ray_head["address"]],
                          capture_output=True, text=True, timeout=60, env=client)
    assert "dataset build for" in logs.stdout and "training groups" in logs.stdout
    stats = json.loads((out / "stats.json").read_text())
    written = set()  # the groups the job wrote, training and held out, against what its stats say
    for split in ("examples", "examples_heldout"):
        if (out / split).exists():
            written |= set(pq.read_table(out / split, columns=["group_id"]).column("group_id").to_pylist())
    assert stats["groups"] == len(written) > 0 and stats["ingest"]["balanced"]


def test_the_hub_token_reaches_workers_on_nodes_that_lack_it(tmp_path, monkeypatch):
    """Gated models (Pixtral) need HF_TOKEN on every node that downloads them: a driver that has it passes it in the
    job's runtime env (never when the job's own runtime env already carries one, which Ray would refuse to merge)."""
    import json
    import sys

    from docrerank.core.runtime import hub_token_env

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert hub_token_env() == {}
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_old_name")
    assert hub_token_env() == {"HF_TOKEN": "hf_old_name"}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"HF_TOKEN": "x"}}}))
    assert hub_token_env() == {}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN")

    session = start_session(tmp_path, num_cpus=1)  # the head (its raylet and workers) has no token
    try:
        probe = ("import os, ray\n"
                 "from docrerank.core.runtime import init_ray\n"
                 "init_ray()\n"
                 "print('TOKEN', ray.get(ray.remote(lambda: os.environ.get('HF_TOKEN')).remote()))\n")
        env = {k: v for k, v in session.env.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        out = subprocess.run([sys.executable, "-c", probe], env=dict(env, RAY_ADDRESS=session.address,
                                                                     HF_TOKEN="hf_test_token"),
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "TOKEN hf_test_token" in out.stdout, out.stdout[-500:]
    finally:
        finish_session(session)
