"""Autoscaling from zero with Ray's fake multi-node autoscaler (`RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config`; the test starts and stops it itself, as `AutoscalingCluster` would with a `ray stop --force`
that ends every Ray process of the user). The node types mirror cluster/aws.yaml at a smaller scale: a head with no
CPU for tasks, CPU workers, one-GPU inference workers and a larger training type, all with min_workers 0.

The build's model pools (a judge and a rephrasing LM, one fake GPU each) make the autoscaler add GPU nodes for
their actors (usually two inference nodes, and a CPU node for the pipeline's workers; in one run of three here it
packed the pending demand onto a training node instead, so the test checks that each pool's actor sits on an
added GPU node, not which GPU type); a short training run whose worker needs 3 CPUs, which only the training type
has, adds (or uses) a training node. What this cannot show: real GPUs (the engines run on the CPU, training too,
so the training worker is steered to its node type by CPUs, not by a GPU request), vLLM's tensor-parallel placement
groups on a real node, cloud launch times, and failing at once on a pool larger than the cluster can grow: Ray's
open-source autoscaler does not publish its node types' limits, so such a build waits placement_timeout_s before
failing with the numbers (a known limit, tested in test_pools.py, fails at once)."""

from __future__ import annotations

import json

import pytest
from conftest import finish_session, start_session
from test_multinode import engine, write_pages

pytestmark = pytest.mark.slow  # a Ray cluster with a fake autoscaler, scaled up from zero by a build and a training

HEAD = "ray.head.default"  # the fake provider's name for the head's node type


def cluster_config() -> dict:
    types = {
        HEAD: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "cpu_worker": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        "gpu_infer": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        "gpu_train": {"resources": {"CPU": 3, "GPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1},
    }
    return {"cluster_name": "docrerank-fake", "max_workers": 5, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": HEAD, "auth": {}, "docker": {}, "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}


def node_kinds(cluster) -> list[str]:
    """The node types running, told apart by their resources."""
    kinds = {(0, 0): "head", (2, 0): "cpu_worker", (1, 1): "gpu_infer", (3, 2): "gpu_train"}
    return sorted(kinds[(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0))] for n in cluster.nodes())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    session = start_session(tmp_path_factory.mktemp("autoscale"), num_cpus=0, autoscaling=cluster_config())
    try:
        yield session
    finally:
        finish_session(session)


def test_build_and_training_scale_the_right_node_types_up_from_zero(cluster, tmp_path):
    pytest.importorskip("transformers")
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples
    from docrerank.models.tiny import make_tiny_causal_lm, make_tiny_qwen2_vl

    pages, questions = write_pages(tmp_path)
    vlm, lm = make_tiny_qwen2_vl(tmp_path / "vlm"), make_tiny_causal_lm(tmp_path / "lm")
    assert node_kinds(cluster) == ["head"]
    out = tmp_path / "build"
    r = cluster.run(["-m", "jobs.build_dataset", f"output={out}", f"pages={pages}", f"positives_file={questions}",
                     f"verify.engine={engine(str(vlm))}", "verify.reverify_given=true", "verify.threshold=0.001",
                     "verify.prefilter=none",
                     f"rephrase.engine={engine(str(lm))}", "rephrase.fraction=1", "rephrase.max_tokens=16"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    stats = json.loads((out / "stats.json").read_text())
    assert [p["actors"] for p in stats["pools"]] == [1, 1] and stats["this_run"]["pages"] == 6
    # each pool's actor runs on a GPU node the autoscaler added (which GPU type is the autoscaler's packing:
    # with the pools' and the pipeline's demand pending together it sometimes picks the training type)
    gpu_nodes = {n["NodeID"] for n in cluster.nodes() if n["Resources"].get("GPU", 0) >= 1}
    for pool in stats["pools"]:
        assert pool["nodes"] and set(pool["nodes"]) <= gpu_nodes, (pool, node_kinds(cluster))
    kinds = node_kinds(cluster)
    assert "head" in kinds and {"gpu_infer", "gpu_train"} & set(kinds)

    corpus = make_corpus(tmp_path / "corpus", num_companies=1, years=[2021])
    examples = make_examples(tmp_path / "examples", corpus, dpi=20, groups_per_file=3)
    train_out = tmp_path / "train"
    r = cluster.run(["-m", "jobs.train_reranker", f"output={train_out}", "name=autoscale",
                     f"data.sources=[{{path: {examples}, weight: 1}}]", "data.groups_per_device=1",
                     "data.chunk_groups=2", "data.read_cpus=0.25", f"model.path={vlm}", "model.max_pixels=12544",
                     "model.max_seq_len=256", "optim.max_steps=2", "optim.warmup_steps=1", "scaling.num_workers=1",
                     "scaling.cpus_per_worker=3", "scaling.device=cpu", "checkpoint.every_steps=2", "export=false"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    meta = json.loads((train_out / "_meta" / "train_reranker.json").read_text())
    assert meta["summary"]["steps"] == 2
    assert "gpu_train" in node_kinds(cluster)
