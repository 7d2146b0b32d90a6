"""Model pools on Ray, the job's side of a run: place the actors (``engines.pool_actor``) in placement groups, load
their engines, let new ones join, watch the failed requests, summarise, close. Sizes, shapes and checks are
``engines.pool``.

    plan = plan_pools(engines_by_stage, cluster_resources(), also_needs=[{"CPU": 0.9}])
    with ModelPools.start(plan) as pools:           # placement groups, then one engine per actor, before any data
        ...VerifyStage(cfg, "positive", pools=pools.handles)...   # in a Ray Data worker: calls go to the pool
        pools.check()                               # in the driver's loop: new actors join; too many failures raise
        pools.check(final=True); pools.summary()

The driver polls the actors' counts of requests and error kinds per stage; a dead actor is restarted by Ray (twice)
and its calls retried.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from docrerank.engines.pool import ClusterResources, NodeType, PoolPlan, PoolSpec, stage_error_problems
from docrerank.engines.pool_actor import EngineActor, PoolHandles, actor_name, last_line

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often the driver looks at placement, new actors and the error counts
LOG_EVERY_S = 30.0


# --------------------------------------------------------------------------------------------- the cluster
def cluster_resources() -> ClusterResources:
    """The live nodes' resources (CPU, GPU and custom ones) and what the autoscaler, if any, can add."""
    import ray

    nodes: list[Mapping[str, float]] = []
    labels: list[dict] = []
    for n in ray.nodes():
        if n.get("Alive"):
            nodes.append({k: v for k, v in n["Resources"].items()
                          if not k.startswith("node:") and k not in ("memory", "object_store_memory")})
            labels.append(n.get("Labels") or {})
    from docrerank.core.raydata import autoscaler_view

    types, autoscaling = autoscaler_view(labels)
    return ClusterResources(nodes, None if types is None else [NodeType(**t) for t in types], autoscaling)




# --------------------------------------------------------------------------------------------- the job's side
def actor_engine_config(spec: PoolSpec):
    """The engine config an actor of ``spec`` builds: a vLLM engine spread over a placement group runs its workers
    through Ray (``distributed_executor_backend: ray``, unless the config chose another)."""
    cfg = spec.engine
    if spec.shape.executor == "ray" and "distributed_executor_backend" not in cfg.vllm.engine_kwargs:
        kw = {**cfg.vllm.engine_kwargs, "distributed_executor_backend": "ray"}
        cfg = cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"engine_kwargs": kw})})
    return cfg


def _pg_state(pg) -> str:
    """CREATED once every bundle is reserved; else PENDING, or INFEASIBLE when no node could ever hold it."""
    from ray.util.placement_group import placement_group_table

    t = placement_group_table(pg)
    if t.get("state") == "CREATED":
        return "CREATED"
    return (t.get("stats") or {}).get("scheduling_state") or t.get("state") or "PENDING"


@dataclass
class _Actor:
    handle: Any
    pg: Any
    info_ref: Any
    info: Optional[dict] = None


class ModelPools:
    """The pools of one job run: ``start(plan)`` places and loads them, ``handles`` reach them, ``check`` watches
    them, ``close`` ends them (a context manager)."""

    def __init__(self, plan: PoolPlan):
        self.plan = plan
        self.pgs: dict[str, list] = {p.name: [] for p in plan.pools}  # placement groups not yet holding an actor
        self.actors: dict[str, list[_Actor]] = {p.name: [] for p in plan.pools}
        self.last_check = 0.0

    @classmethod
    def start(cls, plan: PoolPlan) -> "ModelPools":
        """Reserve every pool's placement groups, wait for each pool's minimum (failing with the numbers when the
        cluster cannot give it in ``placement_timeout_s``), then load an engine in every placed actor and wait for
        them; actors placed later (an autoscaler adding nodes) join during the run (``check``)."""
        if plan.problems:
            raise ValueError("model pools: " + "; ".join(plan.problems))
        pools = cls(plan)
        try:
            pools._place()
            pools._load()
        except BaseException:
            pools.close()
            raise
        return pools

    def __enter__(self) -> "ModelPools":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def handles(self) -> PoolHandles:
        """What the stages get (``handles.client(stage)``)."""
        return PoolHandles({s: p.name for p in self.plan.pools for s in p.stages},
                           {p.name: [a.handle for a in self.actors[p.name] if a.info] for p in self.plan.pools},
                           {s: bs for p in self.plan.pools for s, bs in p.batch_size.items()},
                           {p.name: p.call_timeout_s for p in self.plan.pools})

    def resources(self) -> dict:
        """CPUs and GPUs the pools' placement groups hold now (``cpus``, ``gpus``)."""
        n = {p.name: (len(self.actors[p.name]), p.shape) for p in self.plan.pools}
        return {"cpus": sum(k * shape.cpus for k, shape in n.values()),
                "gpus": sum(k * shape.gpus for k, shape in n.values())}

    def _place(self) -> None:
        from ray.util.placement_group import placement_group

        grow = self.plan.cluster.can_grow()
        for p in self.plan.pools:
            n = p.max_actors if grow else p.actors_now  # on a cluster that grows, ask for all (the autoscaler sees them)
            self.pgs[p.name] = [placement_group(list(p.shape.bundles), strategy=p.shape.strategy) for _ in range(n)]
        t0 = last_log = time.monotonic()
        timeout = max(p.placement_timeout_s for p in self.plan.pools)
        while True:
            short, infeasible = [], False
            for p in self.plan.pools:
                states = [_pg_state(pg) for pg in self.pgs[p.name]]
                placed = sum(s == "CREATED" for s in states)
                if placed < p.min_actors:
                    short.append((p, placed))
                    infeasible |= not grow and "INFEASIBLE" in states
            if not short:
                return
            waited = time.monotonic() - t0
            if infeasible or waited > timeout:
                self._fail_placement(short, waited, infeasible)
            if time.monotonic() - last_log > LOG_EVERY_S:
                last_log = time.monotonic()
                log.info("model pools: waiting for the cluster (%.0f s): %s", waited,
                         "; ".join(f"{p.name} {k}/{p.min_actors} actors placed" for p, k in short))
            time.sleep(min(POLL_S, 0.5 + waited / 10))

    def _fail_placement(self, short: list, waited: float, infeasible: bool) -> None:
        now = cluster_resources()
        lines = [f"{p.label()}: {k} of the {p.min_actors} actor(s) it needs placed ({p.needs(p.min_actors)})"
                 for p, k in short]
        why = ("no node of the cluster can hold one of its actors" if infeasible
               else f"not placed within placement_timeout_s={waited:.0f} s")
        raise RuntimeError(f"model pools: {why}: " + "; ".join(lines) + f"; the cluster has {now.describe()} and "
                           f"{now.describe_growth()}. Lower engine.ray.min_actors or the GPUs per actor, or use a "
                           "larger cluster" + ("" if infeasible else " (or raise placement_timeout_s)"))

    def _create_actors(self, pool: PoolSpec) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from docrerank.engines.registry import _BACKENDS

        waiting = self.pgs[pool.name]
        for pg in [pg for pg in waiting if _pg_state(pg) == "CREATED"]:
            waiting.remove(pg)
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0,
                                                        placement_group_capture_child_tasks=True)
            handle = ray.remote(EngineActor).options(
                num_cpus=pool.shape.num_cpus, num_gpus=pool.shape.num_gpus, max_restarts=2, max_task_retries=2,
                scheduling_strategy=strategy).remote(actor_engine_config(pool), _BACKENDS[pool.engine.backend],
                                                     pool.name, pool.batches_in_flight)
            self.actors[pool.name].append(_Actor(handle, pg, handle.info.remote()))

    def _collect_loaded(self, pool: PoolSpec, wait_s: float = 0) -> bool:
        """Record the actors whose engine finished loading; True when the pool's members changed."""
        import ray

        loading = [a for a in self.actors[pool.name] if a.info is None]
        if not loading:
            return False
        ready, _ = ray.wait([a.info_ref for a in loading], num_returns=len(loading), timeout=wait_s)
        changed = False
        for a in loading:
            if a.info_ref in ready:
                try:
                    a.info = ray.get(a.info_ref)
                except ray.exceptions.RayError as err:
                    raise RuntimeError(f"model pool {pool.label()}: the engine failed to load: {last_line(err)} "
                                       "(the actor's traceback is in the log above)") from err
                changed = True
        if changed:
            live = [a.handle for a in self.actors[pool.name] if a.info]
            ray.get([h.set_members.remote(live) for h in live])
        return changed

    def _load(self) -> None:
        t0 = last_log = time.monotonic()
        for p in self.plan.pools:
            self._create_actors(p)
        while True:  # every actor placed by now loads (in parallel): the minimum at least, often all
            short = []
            for p in self.plan.pools:
                self._collect_loaded(p, wait_s=0.5)
                loaded = sum(a.info is not None for a in self.actors[p.name])
                if loaded < len(self.actors[p.name]):
                    short.append(f"{p.name} {loaded}/{len(self.actors[p.name])}")
            if not short:
                break
            waited = time.monotonic() - t0
            late = [p for p in self.plan.pools if waited > p.load_timeout_s
                    and any(a.info is None for a in self.actors[p.name])]
            if late:
                self._fail_load(late, waited)
            if time.monotonic() - last_log > LOG_EVERY_S:
                last_log = time.monotonic()
                log.info("model pools: loading engines (%.0f s): %s", waited, "; ".join(short))
        for p in self.plan.pools:
            infos = [a.info for a in self.actors[p.name] if a.info]
            log.info("model pool %s: %d actor(s) loaded (%s)", p.label(), len(infos),
                     ", ".join(f"{i['engine']} on node {i['node_id'][:8]} in {i['load_s']} s" for i in infos))

    def _fail_load(self, late: list, waited: float) -> None:
        """RuntimeError naming each pool whose engines did not load in its ``load_timeout_s`` and those actors."""
        parts = []
        for p in late:
            loading = [a for a in self.actors[p.name] if a.info is None]
            names = ", ".join(actor_name(a.handle) for a in loading)
            parts.append(f"{p.label()}: {len(loading)} of {len(self.actors[p.name])} engine(s) still loading after "
                         f"{waited:.0f} s > engine.ray.load_timeout_s={p.load_timeout_s:g} (actor(s) {names})")
        raise RuntimeError("model pools: engines did not load in time: " + "; ".join(parts) + ". A download or load "
                           "that hangs (the actors' logs say where), or a slow one: raise engine.ray.load_timeout_s")

    def check(self, final: bool = False) -> None:
        """Let new actors join (their placement came through), and raise RuntimeError when a stage's requests failed
        too often (``engines.pool.stage_error_problems``). Cheap to call often: it acts every few seconds."""
        if not final and time.monotonic() - self.last_check < POLL_S:
            return
        self.last_check = time.monotonic()
        for p in self.plan.pools:
            self._create_actors(p)
            self._collect_loaded(p)
        counts, examples = self._counts()
        limits = {s: lim for p in self.plan.pools for s, lim in p.limits.items()}
        problems = stage_error_problems(counts, limits, final, examples)
        if problems:
            raise RuntimeError("too many model requests failed: " + "; ".join(problems))

    def _stats(self) -> dict[str, list[dict]]:
        import ray

        out: dict[str, list[dict]] = {}
        for p in self.plan.pools:
            live = [a for a in self.actors[p.name] if a.info]
            refs = [a.handle.stats.remote() for a in live]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30) if refs else ([], [])
            out[p.name] = []
            for ref in ready:
                try:
                    out[p.name].append(ray.get(ref))
                except ray.exceptions.RayError:  # a restarted actor lost its counts; it reports again next time
                    pass
        return out

    def _counts(self) -> tuple[dict, dict]:
        counts: dict[str, Counter] = {}
        examples: dict[str, dict] = {}
        for stats in self._stats().values():
            for s in stats:
                for stage, c in s["counts"].items():
                    counts.setdefault(stage, Counter()).update(c)
                for stage, ex in s["examples"].items():
                    for k, v in ex.items():
                        examples.setdefault(stage, {}).setdefault(k, v)
        return counts, examples

    def summary(self) -> list[dict]:
        """Per pool: model, stages, actors (where, loaded in how long), requests per stage, calls, engine runs, and
        the share of the run each actor's engine was busy."""
        stats = self._stats()
        out = []
        for p in self.plan.pools:
            st = stats.get(p.name, [])
            infos = [a.info for a in self.actors[p.name] if a.info]
            requests: Counter = Counter()
            for s in st:
                for stage, c in s["counts"].items():
                    requests[stage] += c.get("requests", 0)
            out.append({"pool": p.name, "backend": p.engine.backend, "model": p.engine.model, "stages": p.stages,
                        "actors": len(infos), "min_actors": p.min_actors, "max_actors": p.max_actors,
                        "gpus_per_actor": p.shape.gpus, "cpus_per_actor": p.shape.cpus,
                        "nodes": sorted({i["node_id"] for i in infos}), "pids": [i["pid"] for i in infos],
                        "load_s": [i["load_s"] for i in infos],
                        "requests": dict(requests), "calls": sum(s["calls"] for s in st),
                        "engine_runs": sum(s["runs"] for s in st), "busy_s": round(sum(s["busy_s"] for s in st), 2),
                        "most_waiting_calls": max((s["most_waiting"] for s in st), default=0)})
        return out

    def close(self) -> None:
        """Release the engines, end the actors and remove every placement group (pending ones included)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        actors = [a for group in self.actors.values() for a in group]
        refs = [a.handle.shutdown.remote() for a in actors if a.info]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=30)
        for a in actors:
            try:
                ray.kill(a.handle)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for pg in [a.pg for a in actors] + [pg for pgs in self.pgs.values() for pg in pgs]:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001
                pass
        self.actors = {k: [] for k in self.actors}
        self.pgs = {k: [] for k in self.pgs}
