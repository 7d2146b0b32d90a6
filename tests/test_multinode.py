"""Scheduling on a real multi-node Ray on this machine: a head and two worker nodes started with `ray start`, the
workers declaring one GPU each that they do not have, and the build's engines (tiny random-weight models) running on
the CPU in actors that hold those GPUs. Both verification stages share one judge pool (one pool per stage would need
three GPUs), the pools fit the two GPUs, configs asking for more (in all, or on one node) fail at start with the
numbers, and no process of the session is left afterwards."""

from __future__ import annotations

import io
import json
import time

import pytest
from conftest import finish_session, start_session

pytestmark = pytest.mark.slow  # a multi-node Ray started with ray start

PAGES = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU, no GPU) + two workers (1 CPU, 1 fake GPU each)."""
    session = start_session(tmp_path_factory.mktemp("multinode"), num_cpus=1)
    try:
        session.add_node(num_cpus=1, num_gpus=1)
        session.add_node(num_cpus=1, num_gpus=1)
        yield session
    finally:
        finish_session(session)


def write_pages(root, n: int = PAGES) -> tuple[str, str]:
    """A pages table of ``n`` small pages with a text layer, and one given question per page (JSONL)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    from docrerank.core.schema import page_id_of, pages_schema

    rows, questions = [], []
    for i in range(n):
        img = Image.new("RGB", (112, 140), "white")
        ImageDraw.Draw(img).text((4, 4), f"Revenue {2019 + i}: {5 + i}.2bn", fill="black")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        pid = page_id_of(f"{i:032x}", 1)
        rows.append({"page_id": pid, "doc_id": f"{i:032x}", "source_uri": f"doc{i}.pdf", "page_number": 1,
                     "num_pages": 1, "width": 112, "height": 140, "dpi": 72.0, "image": buf.getvalue(),
                     "image_format": "png", "text": f"Annual report. Revenue {2019 + i}: {5 + i}.2 billion."})
        questions.append({"page_id": pid, "question": f"What was the revenue in {2019 + i}?"})
    (root / "pages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pages_schema()), root / "pages" / "part-0.parquet")
    (root / "questions.jsonl").write_text("\n".join(json.dumps(q) for q in questions) + "\n")
    return str(root / "pages"), str(root / "questions.jsonl")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    pytest.importorskip("transformers")
    from docrerank.models.tiny import make_tiny_causal_lm, make_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("multinode_inputs")
    pages, questions = write_pages(root)
    return {"pages": pages, "questions": questions, "vlm": str(make_tiny_qwen2_vl(root / "vlm")),
            "lm": str(make_tiny_causal_lm(root / "lm"))}


def engine(path: str, **ray) -> str:
    # random weights write junk: the failed-requests rule is off (max_error_share 1)
    return json.dumps({"backend": "hf", "model": path, "max_pixels": 200_704, "hf": {"device": "cpu"},
                       "ray": {"num_gpus": 1, "num_cpus": 0.25, "max_error_share": 1, **ray}})


def build_args(cluster, inputs, out, judge: str, rephrase: bool = True) -> list[str]:
    """The judge (VLM) verifies the given positives and the rules' negatives; an LM rephrases what survives."""
    args = ["-m", "jobs.build_dataset", "--address", cluster.address, f"output={out}", f"pages={inputs['pages']}",
            f"positives_file={inputs['questions']}", f"verify.engine={judge}", "verify.reverify_given=true",
            "verify.threshold=0.001", "verify.prefilter=none", "negatives.num_candidates=4"]
    return args + ([f"rephrase.engine={engine(inputs['lm'])}", "rephrase.fraction=1", "rephrase.max_tokens=16"]
                   if rephrase else [])


def test_pools_share_the_judge_and_fit_two_gpu_nodes(cluster, inputs, tmp_path):
    out = tmp_path / "build"
    r = cluster.run(build_args(cluster, inputs, out, engine(inputs["vlm"])))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["this_run"]["pages"] == PAGES
    judge, writer = stats["pools"]
    assert judge["stages"] == ["verify_positives", "verify_negatives"] and writer["stages"] == ["rephrase"]
    # one engine loaded per model: one actor (one process) each, and both verification stages called the judge's
    assert judge["actors"] == writer["actors"] == 1 and len(set(judge["pids"] + writer["pids"])) == 2
    assert judge["requests"]["verify_positives"] == 2 * PAGES and judge["requests"]["verify_negatives"] > 0
    for stage, n in judge["requests"].items():  # what the pool served is what the stages counted
        assert stats["stages"][stage]["requests"] == pytest.approx(n)
    gpu_of = {n["NodeID"]: n["Resources"].get("GPU", 0) for n in cluster.nodes()}
    [judge_node], [writer_node] = judge["nodes"], writer["nodes"]
    assert judge_node != writer_node and gpu_of[judge_node] == gpu_of[writer_node] == 1  # one per GPU worker


def test_configs_asking_for_more_gpus_than_exist_fail_at_start_with_the_numbers(cluster, inputs, tmp_path):
    out = tmp_path / "build"
    t0 = time.monotonic()
    # 2 judges + 1 rephraser = 3 GPUs; the cluster has 2 (the job's start checks, core.plan)
    r = cluster.run(build_args(cluster, inputs, out, engine(inputs["vlm"], concurrency=2, min_actors=2)), timeout=300)
    assert r.returncode == 1, (r.stdout + r.stderr)[-4000:]
    assert "build_dataset cannot start" in r.stderr and "needs 3 GPUs at once" in r.stderr
    assert "the cluster has 2" in r.stderr
    # one judge on 2 GPUs: 2 GPUs in all, but no node has 2 (the pools' placement check, engines.pool)
    r = cluster.run(build_args(cluster, inputs, out, engine(inputs["vlm"], num_gpus=2), rephrase=False), timeout=300)
    assert r.returncode == 1, (r.stdout + r.stderr)[-4000:]
    assert "build_dataset failed: model pools: verify_positives+verify_negatives (hf " in r.stderr
    assert "one actor needs 0.25 CPU, 2 GPU on one node" in r.stderr
    assert "the cluster has 2 GPUs and 3 CPUs on 3 node(s) (at most 1 GPUs on one node)" in r.stderr
    assert "cannot grow (no autoscaler)" in r.stderr
    assert time.monotonic() - t0 < 120 and not (out / "stats.json").exists() and not (out / "queries").exists()
