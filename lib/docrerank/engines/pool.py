"""Model pools, planned: one pool of long-lived engine actors per distinct model, serving every stage that uses it,
sized between ``engine.ray.min_actors`` and ``engine.ray.concurrency`` and checked against the cluster before any
model loads. Pure (no Ray): the actors, the client the stages call and the reading of the cluster are
``engines.pool_ray``; ``--plan`` can call ``plan_pools`` on its own.

    plan = plan_pools({"verify_positives": judge, "verify_negatives": judge, "negatives": writer},
                      ClusterResources(nodes=[{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]))
    plan.pool_for("verify_negatives").stages   # ['verify_positives', 'verify_negatives']: one judge, loaded once
    plan.problems                              # [] or why the cluster cannot hold the minimum, with the numbers

A pool's identity is its engine config without ``ray`` (backend, model, dtype, lengths, pixels, backend options):
stages whose engines differ only in ``ray`` share a pool, which takes the largest of their ``ray`` settings (their
own ``batch_size`` and error limits stay per stage). One actor holds one engine in one placement group: a vLLM engine
on ``tensor_parallel_size x pipeline_parallel_size`` GPUs gets that many {GPU: 1, CPU: 1} bundles (the actor itself in
bundle 0, vLLM's Ray workers in the others; on one node unless pipeline-parallel), as Ray Data LLM reserves them;
any other engine one bundle of ``ray.num_cpus`` CPUs and ``ray.num_gpus`` GPUs.

Also here: ``stage_error_problems``, the rule that fails a job when too many of a stage's model requests failed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

EPS = 1e-9
UNLIMITED = -1  # NodeType.max_count of a node type the autoscaler may add without limit


# --------------------------------------------------------------------------------------------- the cluster
@dataclass(frozen=True)
class NodeType:
    """A kind of node an autoscaler can add: its resources, how many it may run at most, how many run now."""

    name: str
    resources: Mapping[str, float]
    max_count: int = UNLIMITED
    count: int = 0


@dataclass
class ClusterResources:
    """What the pools are checked against: the resources of every live node, and what an autoscaler can add.

    ``node_types`` None with ``autoscaling`` True: an autoscaler runs but does not publish its limits (Ray's
    open-source autoscaler), so whether a pool beyond the current nodes fits is only known by waiting for it."""

    nodes: list[Mapping[str, float]]
    node_types: Optional[list[NodeType]] = None
    autoscaling: bool = False

    def total(self, key: str) -> float:
        """Sum of ``key`` (e.g. "GPU") over the live nodes."""
        return sum(n.get(key, 0) for n in self.nodes)

    def can_grow(self) -> bool:
        """Whether nodes may still be added (known node types with room left, or an autoscaler of unknown limits)."""
        if self.node_types is None:
            return self.autoscaling
        return any(t.max_count == UNLIMITED or t.max_count > t.count for t in self.node_types)

    def describe(self) -> str:
        """E.g. "2 GPUs and 12 CPUs on 3 nodes (at most 1 GPU on one node)"."""
        big = max((n.get("GPU", 0) for n in self.nodes), default=0)
        return (f"{_num(self.total('GPU'))} GPUs and {_num(self.total('CPU'))} CPUs on {len(self.nodes)} node(s) "
                f"(at most {_num(big)} GPUs on one node)")

    def describe_growth(self) -> str:
        """How far the cluster can grow, in words."""
        if self.node_types is None:
            return ("has an autoscaler that does not publish its limits" if self.autoscaling
                    else "cannot grow (no autoscaler)")
        room = [t for t in self.node_types if t.max_count == UNLIMITED or t.max_count > t.count]
        if not room:
            return "cannot grow (every node type is at its max_workers)"
        parts = [f"{t.name} x{'unlimited' if t.max_count == UNLIMITED else t.max_count - t.count} "
                 f"({_res(t.resources)} each)" for t in room]
        if any(t.max_count == UNLIMITED for t in room):
            return "can add " + ", ".join(parts)
        gpus = self.total("GPU") + sum((t.max_count - t.count) * t.resources.get("GPU", 0) for t in room)
        return f"can grow to {_num(gpus)} GPUs by adding " + ", ".join(parts)


# --------------------------------------------------------------------------------------------- one actor
@dataclass(frozen=True)
class ActorShape:
    """The resources of one engine actor: its placement group and what the actor process itself takes."""

    bundles: tuple
    strategy: str
    """STRICT_PACK (one node) or PACK (pipeline-parallel vLLM, whose stages may sit on several nodes)."""
    num_cpus: float
    num_gpus: float
    """GPUs the actor process takes from bundle 0 (0 for a vLLM engine whose Ray workers hold the GPUs)."""
    executor: Optional[str] = None
    """vLLM's ``distributed_executor_backend`` when the engine spans several GPUs ("ray"), else None."""

    @property
    def gpus(self) -> float:
        """GPUs of the whole placement group."""
        return sum(b.get("GPU", 0) for b in self.bundles)

    @property
    def cpus(self) -> float:
        """CPUs of the whole placement group."""
        return sum(b.get("CPU", 0) for b in self.bundles)


def vllm_world_size(cfg) -> tuple[int, int]:
    """(tensor_parallel_size, pipeline_parallel_size) of a vLLM engine config (pipeline size from ``vllm`` options
    or ``vllm.engine_kwargs``, default 1)."""
    tp = int(cfg.vllm.engine_kwargs.get("tensor_parallel_size", cfg.vllm.tensor_parallel_size))
    pp = int(getattr(cfg.vllm, "pipeline_parallel_size", None) or cfg.vllm.engine_kwargs.get("pipeline_parallel_size", 1))
    return tp, pp


def actor_shape(cfg) -> ActorShape:
    """The placement of one actor of ``cfg`` (an ``EngineConfig``); ValueError naming the key when the config
    cannot run (vLLM without GPUs, GPUs that do not match its parallelism, a CUDA device with no GPU)."""
    r = cfg.ray
    cpus = r.num_cpus
    if cfg.backend == "vllm" and cfg.vllm.cpu:
        if r.num_gpus:
            raise ValueError(f"ray.num_gpus: got {_num(r.num_gpus)} for backend 'vllm' ({cfg.model}) with vllm.cpu "
                             "true; vLLM's CPU build takes no GPU: leave ray.num_gpus unset (or set vllm.cpu false)")
        return ActorShape(({"CPU": cpus},), "STRICT_PACK", cpus, 0)
    if cfg.backend == "vllm":
        tp, pp = vllm_world_size(cfg)
        world = tp * pp
        if r.num_gpus is not None and r.num_gpus != world:
            why = ("vLLM runs on GPUs" if r.num_gpus == 0 else
                   f"a vLLM engine takes tensor_parallel_size x pipeline_parallel_size = {tp} x {pp} = {world}")
            raise ValueError(f"ray.num_gpus: got {_num(r.num_gpus)} for backend 'vllm' ({cfg.model}); {why} "
                             f"GPU(s): set ray.num_gpus to {world} or leave it unset"
                             + (" (or vllm.cpu true: vLLM's CPU build, no GPU)" if r.num_gpus == 0 else ""))
        executor = cfg.vllm.engine_kwargs.get("distributed_executor_backend")
        if world == 1 or executor in ("mp", "uni"):  # the engine's processes see the actor's own GPUs
            return ActorShape(({"CPU": cpus, "GPU": world},), "STRICT_PACK", cpus, world, executor)
        bundles = ({"CPU": cpus, "GPU": 1},) + tuple({"CPU": 1, "GPU": 1} for _ in range(world - 1))
        return ActorShape(bundles, "STRICT_PACK" if pp == 1 else "PACK", cpus, 0, "ray")
    gpus = r.num_gpus or 0
    if gpus == 0 and cfg.backend == "hf" and str(cfg.hf.device).startswith("cuda"):
        raise ValueError(f"ray.num_gpus: got 0 with hf.device {cfg.hf.device!r} ({cfg.model}); an actor without a "
                         "GPU cannot use CUDA: set ray.num_gpus (e.g. 1) or hf.device to 'auto' or 'cpu'")
    return ActorShape(({"CPU": cpus, **({"GPU": gpus} if gpus else {})},), "STRICT_PACK", cpus, gpus)


def pool_key(cfg) -> str:
    """The identity of the model an engine config loads: a hash of the config without its ``ray`` settings."""
    dump = cfg.model_dump(mode="json", exclude={"ray"})
    return hashlib.sha256(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- the plan
@dataclass
class PoolSpec:
    """One model pool: the stages it serves and how many actors of what shape it runs."""

    name: str
    """The stages it serves, joined by "+"."""
    key: str
    engine: Any
    """The ``EngineConfig`` the actors build (the first stage's; ``ray`` merged over the stages)."""
    stages: list[str]
    shape: Optional[ActorShape]
    """None when the config cannot run (the reason is in the plan's problems)."""
    min_actors: int
    max_actors: int
    batch_size: dict[str, int]
    """Requests per call to the pool, per stage."""
    limits: dict[str, tuple[float, int]]
    """(max_error_share, min_requests) per stage."""
    batches_in_flight: int
    placement_timeout_s: float
    actors_now: int = 0
    """Actors the live nodes hold next to every pool's minimum (the pool starts with these; more join when an
    autoscaler adds nodes)."""
    load_timeout_s: float = 1800.0
    """How long the job waits for the placed actors' engines to load (``engine.ray.load_timeout_s``)."""
    call_timeout_s: float = 1800.0
    """How long a call to the pool may go unanswered (``engine.ray.call_timeout_s``)."""

    def label(self) -> str:
        """E.g. "verify_positives+verify_negatives (vllm Qwen/Qwen2.5-VL-7B-Instruct)"."""
        return f"{self.name} ({self.engine.backend} {self.engine.model})"

    def needs(self, actors: int) -> str:
        """E.g. "2 actors x 4 GPUs = 8 GPUs and 8 CPUs"."""
        s = self.shape
        return (f"{actors} actor(s) x {_num(s.gpus)} GPU(s) = {_num(actors * s.gpus)} GPUs and "
                f"{_num(actors * s.cpus)} CPUs")


@dataclass
class PoolPlan:
    """Pools with their sizes, checked against the cluster. ``problems``: why the minimum cannot be placed (the job
    must not start); ``waits``: what the minimum waits for (nodes an autoscaler has to add)."""

    pools: list[PoolSpec]
    cluster: ClusterResources
    problems: list[str] = field(default_factory=list)
    waits: list[str] = field(default_factory=list)

    def pool_for(self, stage: str) -> PoolSpec:
        """The pool serving ``stage``."""
        for p in self.pools:
            if stage in p.stages:
                return p
        raise KeyError(f"no model pool serves stage {stage!r}; pools: {[p.name for p in self.pools]}")

    def totals(self) -> dict:
        """GPUs and CPUs of every pool at its minimum and at its maximum."""
        ok = [p for p in self.pools if p.shape]
        return {"min_gpus": sum(p.min_actors * p.shape.gpus for p in ok), "min_cpus": sum(p.min_actors * p.shape.cpus for p in ok),
                "max_gpus": sum(p.max_actors * p.shape.gpus for p in ok), "max_cpus": sum(p.max_actors * p.shape.cpus for p in ok)}

    def rows(self) -> list[list]:
        """One table row per pool: name, backend:model, actors min/now/max, GPUs and CPUs per actor."""
        return [[p.name, f"{p.engine.backend}:{p.engine.model}", p.min_actors, p.actors_now, p.max_actors,
                 _num(p.shape.gpus) if p.shape else "-", _num(p.shape.cpus) if p.shape else "-"] for p in self.pools]


def _merged_ray(cfgs: list) -> dict:
    rays = [c.ray for c in cfgs]
    gpus = [r.num_gpus for r in rays if r.num_gpus is not None]
    return {"concurrency": max(r.concurrency for r in rays), "min_actors": max(r.min_actors for r in rays),
            "num_cpus": max(r.num_cpus for r in rays), "num_gpus": max(gpus) if gpus else None,
            "batches_in_flight": max(r.batches_in_flight for r in rays),
            "placement_timeout_s": max(r.placement_timeout_s for r in rays),
            "load_timeout_s": max(r.load_timeout_s for r in rays), "call_timeout_s": max(r.call_timeout_s for r in rays)}


def plan_pools(engines: Mapping[str, Any], cluster: Optional[ClusterResources],
               also_needs: Sequence[Mapping[str, float]] = (), also_label: str = "the pipeline's own workers") -> PoolPlan:
    """Group model stages into pools (one per distinct model) and size them against ``cluster``.

    ``engines``: stage name -> ``EngineConfig`` (None or a string for a model-free stage: no pool). ``also_needs``:
    bundles that must fit next to the pools' minimum (e.g. one CPU worker of the pipeline, without which nothing
    runs), called ``also_label`` in the problems. Every pool's ``min_actors`` must fit on the live nodes plus what
    the autoscaler can add; the pools start with ``actors_now`` actors, as many as the live nodes hold, up to
    ``concurrency``. ``cluster`` None: group and size only (``--plan`` checks the totals against the cluster's
    CPUs and GPUs itself); ``problems`` then lists only configs that cannot run."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for stage, cfg in engines.items():
        if cfg is not None and not isinstance(cfg, str):
            groups.setdefault(pool_key(cfg), []).append((stage, cfg))
    plan = PoolPlan([], cluster if cluster is not None else ClusterResources([]))
    for key, members in groups.items():
        first = members[0][1]
        merged = _merged_ray([c for _, c in members])
        engine = first.model_copy(update={"ray": first.ray.model_copy(update=merged)})
        try:
            shape = actor_shape(engine)
        except ValueError as err:
            plan.problems.append(f"{'+'.join(s for s, _ in members)}: {err}")
            shape = None
        plan.pools.append(PoolSpec(
            "+".join(s for s, _ in members), key, engine, [s for s, _ in members], shape, merged["min_actors"],
            merged["concurrency"], {s: c.ray.batch_size for s, c in members},
            {s: (c.ray.max_error_share, c.ray.min_requests) for s, c in members}, merged["batches_in_flight"],
            merged["placement_timeout_s"], load_timeout_s=merged["load_timeout_s"],
            call_timeout_s=merged["call_timeout_s"]))
    if cluster is None:
        for p in plan.pools:
            p.actors_now = p.min_actors
    elif not plan.problems:
        _check_fit(plan, list(also_needs), also_label)
    return plan


def _check_fit(plan: PoolPlan, also_needs: list, also_label: str) -> None:
    cluster = plan.cluster
    gangs = [(p, _gang(p.shape)) for p in plan.pools for _ in range(p.min_actors)]
    gangs.sort(key=lambda g: (-sum(b.get("GPU", 0) for b in g[1]), -sum(b.get("CPU", 0) for b in g[1])))
    gangs += [(None, [dict(b)]) for b in also_needs]
    for p in plan.pools:  # an actor that no single node (or node type) could ever hold
        if p.shape.strategy == "STRICT_PACK":
            need = _sum_bundles(p.shape.bundles)
            hosts = list(cluster.nodes) + [t.resources for t in cluster.node_types or []]
            if not any(_fits(h, need) for h in hosts) and not (cluster.node_types is None and cluster.autoscaling):
                plan.problems.append(
                    f"{p.label()}: one actor needs {_res(need)} on one node (its engine's GPUs must share a node); "
                    f"no node{' or node type' if cluster.node_types else ''} has that: the cluster has "
                    f"{cluster.describe()} and {cluster.describe_growth()}")
    if plan.problems:
        return
    free = [dict(n) for n in cluster.nodes]
    if _place_all(gangs, free, None) is not None:  # the live nodes hold the minimum
        for p in plan.pools:
            p.actors_now = p.min_actors
        grown = True
        while grown:  # start with as many more as the live nodes hold, round robin over the pools
            grown = False
            for p in plan.pools:
                if p.actors_now < p.max_actors and _place(_gang(p.shape), free):
                    p.actors_now += 1
                    grown = True
        return
    for p in plan.pools:
        p.actors_now = p.min_actors
    if cluster.node_types is not None:
        added = _place_all(gangs, [dict(n) for n in cluster.nodes],
                           [[t, None if t.max_count == UNLIMITED else t.max_count - t.count] for t in cluster.node_types])
        if added is not None:
            plan.waits.append("the autoscaler must add " + ", ".join(f"{n} x {name}" for name, n in added.items()))
            return
    elif cluster.autoscaling:
        plan.waits.append(f"the live nodes ({cluster.describe()}) cannot hold every pool's minimum: waiting for the "
                          "autoscaler, whose limits are not published")
        return
    t = plan.totals()
    lines = [f"{p.label()} needs at least {p.needs(p.min_actors)}" for p in plan.pools]
    extra = _sum_bundles(also_needs)
    if also_needs:
        lines.append(f"{also_label} need {_res(extra)}")
    plan.problems.append(
        "the cluster cannot hold what the job needs: " + "; ".join(lines) +
        f"; in all at least {_num(t['min_gpus'] + extra.get('GPU', 0))} GPUs and "
        f"{_num(t['min_cpus'] + extra.get('CPU', 0))} CPUs; the cluster has {cluster.describe()} and "
        f"{cluster.describe_growth()}. Lower engine.ray.min_actors or the GPUs per actor, or use a larger cluster")


def _gang(shape: ActorShape) -> list[dict]:
    return [_sum_bundles(shape.bundles)] if shape.strategy == "STRICT_PACK" else [dict(b) for b in shape.bundles]


def _sum_bundles(bundles) -> dict:
    out: Counter = Counter()
    for b in bundles:
        out.update(b)
    return dict(out)


def _fits(node: Mapping[str, float], need: Mapping[str, float]) -> bool:
    return all(node.get(k, 0) + EPS >= v for k, v in need.items())


def _place(gang: list[dict], free: list[dict]) -> bool:
    """First fit of every bundle of ``gang`` onto ``free`` (updated only when all fit)."""
    trial = [dict(n) for n in free]
    for b in gang:
        node = next((n for n in trial if _fits(n, b)), None)
        if node is None:
            return False
        for k, v in b.items():
            node[k] = node.get(k, 0) - v
    free[:] = trial
    return True


def _place_all(gangs: list, free: list[dict], types: Optional[list]) -> Optional[Counter]:
    """Place every gang on ``free`` nodes, opening nodes of ``types`` ([NodeType, room or None]) when none fits;
    returns the node types opened (empty when none was needed), or None when some gang cannot be placed."""
    added: Counter = Counter()
    order = sorted(types or [], key=lambda tr: (tr[0].resources.get("GPU", 0), tr[0].resources.get("CPU", 0)))
    for _, gang in gangs:
        if _place(gang, free):
            continue
        for tr in order:
            t, room = tr
            if room is not None and room <= 0:
                continue
            trial = free + [dict(t.resources)]
            if _place(gang, trial):
                free[:] = trial
                added[t.name] += 1
                tr[1] = None if room is None else room - 1
                break
        else:
            return None
    return added


# --------------------------------------------------------------------------------------------- failed requests
def stage_error_problems(counts: Mapping[str, Mapping[str, float]], limits: Mapping[str, tuple[float, int]],
                         final: bool = True, examples: Optional[Mapping[str, Mapping[str, str]]] = None) -> list[str]:
    """Why the job must fail because of its model requests: one line per stage whose requests failed too often.

    ``counts``: stage -> ``{"requests": n, "error:<kind>": m, ...}`` (the stages' own metrics); ``limits``: stage ->
    (max_error_share, min_requests). A stage fails when at least ``min_requests`` requests were made and more than
    ``max_error_share`` of them failed, and, at the end of a run (``final``), whenever it made requests and every one
    failed. ``max_error_share`` 1 turns the check off for that stage. ``examples``: stage -> kind -> one message."""
    problems = []
    for stage, c in counts.items():
        share, min_requests = limits.get(stage, (0.5, 20))
        n = c.get("requests", 0)
        errors = Counter({k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("error:") and v})
        failed = sum(errors.values())
        if share >= 1 or n <= 0:
            continue
        if (n >= min_requests and failed / n > share) or (final and failed >= n):
            top = ", ".join(f"{k} x{_num(v)}" for k, v in errors.most_common(3))
            example = next((examples[stage][k] for k, _ in errors.most_common(3)
                            if examples and k in examples.get(stage, {})), None)
            problems.append(f"stage {stage}: {_num(failed)} of {_num(n)} model requests failed ({failed / n:.0%}, "
                            f"more than the {share:.0%} allowed by max_error_share); top errors: {top}"
                            + (f"; e.g. {example!r}" if example else ""))
    return problems


def _num(x: float) -> str:
    return str(int(x)) if abs(x - round(x)) < EPS else f"{x:.2f}".rstrip("0")


def _res(r: Mapping[str, float]) -> str:
    return ", ".join(f"{_num(v)} {k}" for k, v in sorted(r.items()) if k in ("GPU", "CPU") or v)
