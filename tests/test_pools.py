"""Model pools: the pure planner (one pool per model, sizes, GPUs per actor from tensor/pipeline parallelism, the
check against the cluster with the numbers), the failed-requests rule, and pools of real Ray actors on the local
Ray (calls merged while the engine runs, balanced over actors, retried when an actor dies, counted per stage)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from docrerank.core.config import ConfigError, load_config
from docrerank.engines import EngineConfig, GenerateRequest, GenerateResult, JudgeRequest, JudgeResult, user
from docrerank.engines.pool import (
    ClusterResources,
    NodeType,
    actor_shape,
    plan_pools,
    pool_key,
    stage_error_problems,
)

REPO = Path(__file__).resolve().parent.parent
GPU_NODE = {"CPU": 8, "GPU": 1}


def vllm(model: str, **ray) -> EngineConfig:
    return EngineConfig(backend="vllm", model=model, ray=ray)


# ------------------------------------------------------------------------------------------------ the plan
def test_build_paper_loads_each_model_once_and_fits_with_three_gpus():
    """build_paper.yaml: the judge of stages 2 and 4 is one pool, so the build needs 3 GPUs at least and 10 at
    most (one fixed pool per stage held 14); a 4-GPU cluster starts with 4 actors, one more positives writer."""
    from docrerank.build.config import BuildConfig
    from docrerank.build.run import stage_engines

    cfg = load_config(BuildConfig, REPO / "jobs/configs/build_paper.yaml", [])
    plan = plan_pools(stage_engines(cfg), ClusterResources([{"CPU": 0}] + [GPU_NODE] * 4), also_needs=[{"CPU": 0.9}])
    assert plan.problems == [] and plan.waits == []
    assert [p.stages for p in plan.pools] == [["positives"], ["verify_positives", "verify_negatives"], ["negatives"]]
    assert plan.totals()["min_gpus"] == 3 and plan.totals()["max_gpus"] == 10
    assert [p.actors_now for p in plan.pools] == [2, 1, 1]
    assert plan.pool_for("verify_negatives").batch_size == {"verify_positives": 64, "verify_negatives": 64}
    http = load_config(BuildConfig, REPO / "jobs/configs/build_finance_http.yaml", [])
    plan = plan_pools(stage_engines(http), ClusterResources([{"CPU": 4}]), also_needs=[{"CPU": 0.9}])
    assert [p.stages for p in plan.pools] == [["positives", "verify_positives", "verify_negatives"], ["negatives"]]
    assert plan.problems == [] and plan.totals()["min_cpus"] == 1  # one endpoint client per model


def test_pool_identity_ignores_ray_settings_and_merges_them():
    judge = EngineConfig(backend="hf", model="m", ray={"concurrency": 2, "batch_size": 8})
    same = judge.model_copy(update={"ray": judge.ray.model_copy(update={"concurrency": 3, "batch_size": 32})})
    other = EngineConfig(backend="hf", model="m", max_pixels=200_704)
    assert pool_key(judge) == pool_key(same) != pool_key(other)
    plan = plan_pools({"a": judge, "b": same, "c": other, "d": "text"}, ClusterResources([{"CPU": 16}]))
    ab, c = plan.pools
    assert ab.stages == ["a", "b"] and c.stages == ["c"]
    assert ab.max_actors == 3 and ab.batch_size == {"a": 8, "b": 32}  # the largest size; each stage its own calls


def test_a_cluster_too_small_fails_with_the_numbers():
    plan = plan_pools({"verify": vllm("judge", concurrency=4, min_actors=2), "negatives": vllm("writer")},
                      ClusterResources([GPU_NODE, GPU_NODE]), also_needs=[{"CPU": 0.9}])
    [problem] = plan.problems
    assert "verify (vllm judge) needs at least 2 actor(s) x 1 GPU(s) = 2 GPUs" in problem
    assert "in all at least 3 GPUs and 3.9 CPUs" in problem and "the cluster has 2 GPUs and 16 CPUs on 2 node(s)" in problem
    assert "cannot grow (no autoscaler)" in problem


def test_an_autoscaler_with_known_node_types_adds_the_nodes_or_fails_now():
    types = [NodeType("cpu_worker", {"CPU": 16}, 20), NodeType("gpu_infer", {"CPU": 8, "GPU": 1}, 16),
             NodeType("gpu_train", {"CPU": 48, "GPU": 4}, 4)]
    head = ClusterResources([{"CPU": 0}], types, autoscaling=True)
    judge = vllm("judge", concurrency=2, min_actors=2)
    plan = plan_pools({"verify": judge}, head)
    assert plan.problems == [] and plan.waits == ["the autoscaler must add 2 x gpu_infer"]  # the smallest that fit
    tp2 = EngineConfig(backend="vllm", model="big", vllm={"tensor_parallel_size": 2})
    plan = plan_pools({"verify": judge, "tp2": tp2}, head)  # the TP pair needs a 4-GPU node, the rest fits beside
    assert plan.problems == [] and plan.waits == ["the autoscaler must add 1 x gpu_train"]
    small = ClusterResources([{"CPU": 0}], [NodeType("gpu_infer", {"CPU": 8, "GPU": 1}, 1)], autoscaling=True)
    [problem] = plan_pools({"verify": vllm("judge", concurrency=2, min_actors=2)}, small).problems
    assert "can grow to 1 GPUs by adding gpu_infer x1 (8 CPU, 1 GPU each)" in problem
    unknown = plan_pools({"verify": vllm("judge", concurrency=2, min_actors=2)}, ClusterResources([{"CPU": 0}], None, True))
    assert unknown.problems == [] and "waiting for the autoscaler" in unknown.waits[0]


def test_gpus_per_actor_follow_tensor_and_pipeline_parallelism():
    from docrerank.engines.pool_ray import actor_engine_config

    tp = EngineConfig(backend="vllm", model="m", vllm={"tensor_parallel_size": 4})
    shape = actor_shape(tp)
    assert shape.gpus == 4 and shape.num_gpus == 0 and shape.strategy == "STRICT_PACK" and shape.executor == "ray"
    assert shape.bundles[0] == {"CPU": 1.0, "GPU": 1} and len(shape.bundles) == 4  # the actor sits in bundle 0
    plan = plan_pools({"judge": tp}, ClusterResources([GPU_NODE] * 4))
    assert plan.pools[0].engine.vllm.engine_kwargs == {}
    assert actor_engine_config(plan.pools[0]).vllm.engine_kwargs == {"distributed_executor_backend": "ray"}
    # four 1-GPU nodes have 4 GPUs, but a TP group must share a node
    assert "one actor needs 4 CPU, 4 GPU on one node" in plan.problems[0]
    pp = EngineConfig(backend="vllm", model="m", vllm={"engine_kwargs": {"pipeline_parallel_size": 2}})
    assert actor_shape(pp).strategy == "PACK"  # pipeline stages may sit on different nodes
    assert plan_pools({"judge": pp}, ClusterResources([GPU_NODE] * 2)).problems == []
    one = actor_shape(vllm("m"))
    assert (one.bundles, one.num_gpus, one.executor) == (({"CPU": 1.0, "GPU": 1},), 1, None)


def test_configs_that_cannot_run_are_named():
    with pytest.raises(ValueError, match=r"ray.num_gpus: got 0 for backend 'vllm' \(m\); vLLM runs on GPUs"):
        actor_shape(vllm("m", num_gpus=0))
    cpu = actor_shape(EngineConfig(backend="vllm", model="m", vllm={"cpu": True}, ray={"num_cpus": 1}))
    assert (cpu.bundles, cpu.gpus, cpu.num_gpus) == (({"CPU": 1.0},), 0, 0)  # vLLM's CPU build (CI)
    with pytest.raises(ValueError, match="vLLM's CPU build takes no GPU"):
        actor_shape(EngineConfig(backend="vllm", model="m", vllm={"cpu": True}, ray={"num_gpus": 1}))
    with pytest.raises(ValueError, match="tensor_parallel_size x pipeline_parallel_size = 2 x 1 = 2"):
        actor_shape(EngineConfig(backend="vllm", model="m", vllm={"tensor_parallel_size": 2}, ray={"num_gpus": 1}))
    with pytest.raises(ValueError, match="hf.device 'cuda'"):
        actor_shape(EngineConfig(backend="hf", model="m", hf={"device": "cuda"}))
    plan = plan_pools({"verify": vllm("m", num_gpus=0)}, ClusterResources([GPU_NODE]))
    assert plan.problems[0].startswith("verify: ray.num_gpus: got 0")
    with pytest.raises(ConfigError, match="min_actors"):
        load_config(EngineConfig, None, ["model=m", "ray.min_actors=3", "ray.concurrency=2"])


# ------------------------------------------------------------------------------------------------ failed requests
def test_a_stage_with_too_many_failed_requests_fails_the_job():
    limits = {"negatives": (0.5, 20), "verify": (0.5, 20)}
    counts = {"negatives": {"requests": 40, "error:request_failed": 30, "error:invalid_json": 2},
              "verify": {"requests": 40, "error:timeout": 20}}
    [p] = stage_error_problems(counts, limits, examples={"negatives": {"request_failed": "request_failed: HTTP 401"}})
    assert p.startswith("stage negatives: 32 of 40 model requests failed (80%, more than the 50% allowed")
    assert "request_failed x30, invalid_json x2" in p and "HTTP 401" in p  # verify: exactly half is allowed
    few = {"positives": {"requests": 4, "error:invalid_json": 4}}
    assert stage_error_problems(few, {"positives": (0.5, 20)}, final=False) == []  # too few to judge mid-run
    assert "4 of 4" in stage_error_problems(few, {"positives": (0.5, 20)}, final=True)[0]  # all failed: at the end
    assert stage_error_problems(few, {"positives": (1.0, 20)}, final=True) == []  # the check turned off
    assert stage_error_problems({"rephrase": {"requests": 0}}, {}, final=True) == []


# ------------------------------------------------------------------------------------------------ pools on Ray
class RecordingEngine:
    """A stand-in model: ``generate`` echoes each request id after ``options.delay`` seconds per run; ``judge``
    raises when a request's id is "boom". ``options.die_once`` (a path): the first judge call raises
    ``EngineDeadError`` (the engine's process died); ``options.engine_error_once`` (a path): the first judge call
    answers ``engine_error`` for each request (a fault a real engine cannot be made to give on demand: the real
    engine dying is tests/test_engines_vllm_real.py's kill test)."""

    def __init__(self, cfg):
        if cfg.options.get("fail_load"):
            raise RuntimeError("weights not found")
        time.sleep(cfg.options.get("load_delay", 0.0))
        self.delay = cfg.options.get("delay", 0.0)
        self.options = cfg.options

    def generate(self, requests):
        time.sleep(self.delay)
        return [GenerateResult(texts=[r.id], id=r.id, error=None if r.id != "bad" else "invalid_json: x")
                for r in requests]

    def judge(self, requests):
        from docrerank.engines import EngineDeadError

        if any(r.id == "boom" for r in requests):
            raise RuntimeError("CUDA error: device-side assert")
        for key in ("die_once", "engine_error_once"):
            marker = self.options.get(key)
            if marker and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
                if key == "die_once":
                    raise EngineDeadError("EngineCore encountered an issue")
                return [JudgeResult(error="engine_error: EngineCore died", id=r.id) for r in requests]
        return [JudgeResult(p_yes=0.9, id=r.id) for r in requests]

    def close(self):
        pass


@pytest.fixture
def recording(ray_local):
    from docrerank.engines.registry import _BACKENDS, register_backend

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register_backend("recording", RecordingEngine)
    yield ray_local
    _BACKENDS.pop("recording", None)


def _engine(**options) -> EngineConfig:
    ray = {k: options.pop(k) for k in list(options)
           if k in ("concurrency", "min_actors", "batch_size", "load_timeout_s", "call_timeout_s")}
    return EngineConfig(backend="recording", model="stand-in", options=options,
                        ray={"num_cpus": 0.1, "batches_in_flight": 4, **ray})


def _gen(ids):
    return [GenerateRequest([user("q")], id=i) for i in ids]


def test_a_pool_merges_waiting_calls_balances_actors_and_counts_per_stage(recording):
    from docrerank.engines.pool_ray import ModelPools, cluster_resources

    cluster = cluster_resources()
    assert cluster.total("CPU") == 2 and not cluster.autoscaling and cluster.node_types is None
    cfg = _engine(delay=0.3, concurrency=2, batch_size=2)
    plan = plan_pools({"rewrite": cfg, "check": cfg}, cluster)
    with ModelPools.start(plan) as pools:
        [pool] = plan.pools
        assert pool.stages == ["rewrite", "check"] and len(pools.handles.actors[pool.name]) == 2
        client = pools.handles.client("rewrite")
        ids = [f"r{i}" for i in range(24)]
        res = client.generate(_gen(ids + ["bad"]))
        assert [r.texts[0] for r in res] == ids + ["bad"]  # 13 calls, answers in request order
        judged = pools.handles.client("check").judge([JudgeRequest([user("q")], id="boom")])
        assert judged[0].error.startswith("engine_error: RuntimeError: CUDA error")  # confined, counted
        per_actor = pools._stats()[pool.name]
        assert all(s["calls"] >= 3 for s in per_actor)  # both actors took calls
        generate_calls = sum(s["counts"]["rewrite"]["requests"] for s in per_actor)
        assert generate_calls == 25
        runs = sum(s["runs"] for s in per_actor)
        assert runs < sum(s["calls"] for s in per_actor)  # calls waiting for a busy engine ran together
        assert max(s["most_waiting"] for s in per_actor) >= 2
        with pytest.raises(RuntimeError, match=r"stage check: 1 of 1 model requests failed .*engine_error x1"):
            pools.check(final=True)
        [summary] = pools.summary()
        assert summary["requests"] == {"rewrite": 25, "check": 1} and summary["actors"] == 2
        pgs = [a.pg for a in pools.actors[pool.name]]
    from ray.util.placement_group import placement_group_table

    assert {placement_group_table(pg)["state"] for pg in pgs} == {"REMOVED"}  # closed with the context


def test_a_dead_actor_s_calls_go_to_the_others(recording):
    from docrerank.engines.pool_ray import ModelPools, cluster_resources

    plan = plan_pools({"rewrite": _engine(concurrency=2, batch_size=1)}, cluster_resources())
    with ModelPools.start(plan) as pools:
        handles = pools.handles
        client = handles.client("rewrite")
        recording.kill(handles.actors["rewrite"][0], no_restart=True)
        res = client.generate(_gen([f"r{i}" for i in range(6)]))
        assert [r.texts[0] for r in res] == [f"r{i}" for i in range(6)]
        recording.kill(handles.actors["rewrite"][1], no_restart=True)
        with pytest.raises(RuntimeError, match="every actor failed a call of stage rewrite"):
            client.generate(_gen(["x"]))


def test_a_wedged_engine_or_a_hung_load_fails_in_bounded_time_naming_the_pool_and_actor(recording):
    """ray.wait had no timeout: an engine that never answers (or never loads) hung the job, logging every 30 s. Calls
    and loads are bounded (engine.ray.call_timeout_s, load_timeout_s); the error names the pool and the actor."""
    from docrerank.engines.pool_ray import ModelPools, cluster_resources

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rewrite \(recording stand-in\): 1 of 1 engine\(s\) still loading .*"
                                           r"load_timeout_s=1 \(actor\(s\) actor [0-9a-f]+\)"):
        ModelPools.start(plan_pools({"rewrite": _engine(load_delay=30, load_timeout_s=1)}, cluster_resources()))
    assert time.monotonic() - t0 < 25
    plan = plan_pools({"rewrite": _engine(delay=30, call_timeout_s=1, batch_size=1)}, cluster_resources())
    with ModelPools.start(plan) as pools:
        client = pools.handles.client("rewrite")
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"model pool rewrite: every actor failed a call of stage rewrite .*"
                                               r"actor [0-9a-f]+: no answer .*call_timeout_s=1 s"):
            client.generate(_gen(["slow"]))
        assert time.monotonic() - t0 < 10


def test_an_actor_whose_engine_died_is_replaced_and_its_calls_answered(recording, tmp_path):
    """An engine that dies (EngineDeadError) takes its actor down: Ray restarts it with a new engine and sends the
    call again; no request of the call gets an engine_error (before: every one did, from an actor left running)."""
    from docrerank.engines.pool_ray import ModelPools, cluster_resources

    marker = tmp_path / "died"
    plan = plan_pools({"check": _engine(die_once=str(marker), batch_size=4)}, cluster_resources())
    with ModelPools.start(plan) as pools:
        [first] = [a.info["pid"] for a in pools.actors["check"]]
        res = pools.handles.client("check").judge([JudgeRequest([user("q")], id=str(i)) for i in range(6)])
        assert marker.read_text() == str(first)  # the engine of the first actor died
        assert [r.error for r in res] == [None] * 6 and [r.p_yes for r in res] == [0.9] * 6
        [h] = pools.handles.actors["check"]
        import ray

        assert ray.get(h.info.remote())["pid"] != first  # a new process answered


def test_an_engine_that_cannot_load_or_a_pool_that_cannot_be_placed_fails_at_start(recording):
    from dataclasses import replace

    from ray.util import placement_group_table

    from docrerank.engines.pool_ray import ModelPools, cluster_resources

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="rewrite .*the engine failed to load.*weights not found"):
        ModelPools.start(plan_pools({"rewrite": _engine(fail_load=True)}, cluster_resources()))
    plan = plan_pools({"rewrite": _engine()}, cluster_resources())
    shape = replace(plan.pools[0].shape, bundles=({"CPU": 64},))  # past the planner: only Ray can say no
    plan.pools[0].shape = shape
    with pytest.raises(RuntimeError, match="no node of the cluster can hold one of its actors.*the cluster has "
                                           r"0 GPUs and 2 CPUs on 1 node\(s\)"):
        ModelPools.start(plan)
    assert time.monotonic() - t0 < 60
    big = [pg for pg in placement_group_table().values() if pg["bundles"].get(0) == {"CPU": 64.0}]
    assert big and all(pg["state"] == "REMOVED" for pg in big)


def test_jobs_asking_for_gpus_the_cluster_lacks_fail_at_start_with_the_numbers(ray_local):
    """The rerank job's scoring actors and the mining job's ColPali workers are checked the same way."""
    from docrerank.mine.config import MineConfig
    from docrerank.mine.run import plan_mine_pools
    from docrerank.rerank.job import check_actors_fit

    with pytest.raises(ValueError, match=r"2 scoring actor\(s\) .* need 2 CPU, 2 GPU; in all at least 2 GPUs and "
                                         r"2 CPUs; the cluster has 0 GPUs and 2 CPUs on 1 node\(s\)"):
        check_actors_fit(2, {"CPU": 1, "GPU": 1})
    check_actors_fit(2, {"CPU": 1})
    cfg = load_config(MineConfig, None, ["input=x", "output=y", "retriever=colpali", "colpali.model=m"])
    assert "need 0.5 CPU, 1 GPU" in plan_mine_pools(cfg).problems[0]
    assert plan_mine_pools(load_config(MineConfig, None, ["input=x", "output=y"])).pools == []


def test_the_start_checks_leave_an_autoscaler_of_unknown_limits_to_the_pools():
    """Ray's open-source autoscaler does not publish its maximum: a cluster that has no GPU yet is no problem for
    the plan (the pools wait for the nodes, placement_timeout_s); without an autoscaler it is one."""
    from docrerank.core import plan

    report = plan.PlanReport("build_dataset")
    plan.resources_section(report, plan.Resources(0, 0, "Ray cluster", grows=True), 3, 3.9)
    assert report.ok and "the autoscaler must add nodes for 3 GPUs" in report.sections[0].notes[-1]
    plan.resources_section(report, plan.Resources(2, 0, "Ray cluster"), 3, 3.9)
    assert report.problems[0].startswith("needs 3 GPUs at once")


def test_a_build_whose_judge_requests_all_fail_fails_and_writes_no_stats(ray_local, tmp_path):
    """The judge is an OpenAI-compatible endpoint that refuses connections: every verification request fails, so
    the job fails naming the stage and the error kind, and writes no stats.json or card."""
    import json

    from conftest import free_ports
    from test_multinode import write_pages

    from docrerank.build.config import BuildConfig
    from docrerank.build.run import run_build

    pages, questions = write_pages(tmp_path / "in")
    [port] = free_ports(1)  # nothing listens there
    judge = {"backend": "http", "model": "judge", "ray": {"num_cpus": 0.2},
             "http": {"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0, "api_key_env": None}}
    out = tmp_path / "out"
    cfg = load_config(BuildConfig, None, [f"output={out}", f"pages={pages}", f"positives_file={questions}",
                                          f"verify.engine={json.dumps(judge)}", "verify.reverify_given=true",
                                          "verify.prefilter=none"])
    with pytest.raises(RuntimeError, match=r"stage verify_positives: 12 of 12 model requests failed \(100%.*"
                                           r"request_failed x12; e\.g\. 'request_failed: ConnectError"):
        run_build(cfg)
    assert not (out / "stats.json").exists() and not (out / "card.md").exists()


def test_pages_whose_requests_hit_a_dead_engine_are_not_recorded_and_a_rerun_completes_them(recording, tmp_path):
    """A judge call answered with engine_error (an engine that died under it): those pages get no page_status row
    and no output rows, the job fails saying a rerun completes them, and the rerun does exactly those pages; the
    output then equals an uninterrupted run's (before: they were written as finished, no_positive, and skipped)."""
    import json

    import pyarrow.dataset as pads
    from test_multinode import write_pages

    from docrerank.build.config import BuildConfig
    from docrerank.build.run import run_build

    pages, questions = write_pages(tmp_path / "in")

    def build(out, **options):
        judge = {"backend": "recording", "model": "judge", "options": options,
                 "ray": {"num_cpus": 0.2, "batch_size": 4, "max_error_share": 1.0}}
        return load_config(BuildConfig, None, [f"output={out}", f"pages={pages}", f"positives_file={questions}",
                                               f"verify.engine={json.dumps(judge)}", "verify.reverify_given=true",
                                               "verify.prefilter=none", "pages_per_batch=2"])

    def rows(out):
        t = pads.dataset(str(out / "queries"), format="parquet").to_table(columns=["query_id", "verdict", "reason"])
        return sorted(tuple(r.values()) for r in t.to_pylist())

    run_build(build(tmp_path / "ref"))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"page\(s\) not finished: their model requests hit engine failures.*"
                                           "Run the same command again"):
        run_build(build(out, engine_error_once=str(tmp_path / "failed")))
    done = pads.dataset(str(out / "page_status"), format="parquet").to_table().column("page_id").to_pylist()
    assert 0 < len(done) < 6  # the pages of the failed call are not recorded as finished
    assert not [r for r in rows(out) if r[2] and "engine_error" in r[2]]  # nor any row of theirs
    stats = run_build(build(out, engine_error_once=str(tmp_path / "failed")))
    assert stats["this_run"]["pages"] == 6 - len(done) and stats["this_run"]["resumed_pages"] == len(done)
    assert rows(out) == rows(tmp_path / "ref")
