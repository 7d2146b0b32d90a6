"""Evaluation core: metrics vs hand-computed values, paired test, TREC runs, BM25, benchmark loaders, report."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from docrerank.retrieval import metrics
from docrerank.eval.beir import Benchmark, image_format, load_beir, load_build_split
from docrerank.retrieval.metrics import evaluate, order, paired_test
from docrerank.report.evaluation import format_table, write_report
from docrerank.retrieval.retrievers import BM25Retriever, read_trec_run, retrieve, write_trec_run

L2 = math.log2

# --- metrics -------------------------------------------------------------------------------------------------
# q1: graded relevance d1=2, d2=1, d5=1. Run order by score: d2 .9, d3 .8, d6 .7, d7 .6, d1 .5, d8 .4, d5 .1
#     relevant at ranks 1 (rel 1), 5 (rel 2), 7 (rel 1).
#     DCG@5  = 1/log2(2) + 2/log2(6)                 = 1 + 0.77371          = 1.77371
#     DCG@10 = DCG@5 + 1/log2(8)                     = 1.77371 + 0.33333    = 2.10704
#     IDCG   = 2/log2(2) + 1/log2(3) + 1/log2(4)     = 2 + 0.63093 + 0.5    = 3.13093 (3 relevant < 5)
#     NDCG@5 = 1.77371 / 3.13093 = 0.56651, NDCG@10 = 2.10704 / 3.13093 = 0.67298
#     recall@1 = 1/3, @5 = 2/3, @10 = 1; MRR@10 = 1 (first relevant at rank 1)
# q2: one relevant, d3. d1, d3, d9 all score 0.3: the tie rule (id ascending) puts d3 at rank 2.
#     NDCG@5 = NDCG@10 = (1/log2(3)) / (1/log2(2)) = 0.63093; recall@1 = 0, @5 = @10 = 1; MRR@10 = 1/2
# q3: relevant d4, but q3 is missing from the run: 0 everywhere (still counted in the means).
# q9 is in the run only: ignored.
QRELS = {"q1": {"d1": 2, "d2": 1, "d5": 1, "d3": 0}, "q2": {"d3": 1}, "q3": {"d4": 1}}
RUN = {"q1": {"d1": 0.5, "d2": 0.9, "d3": 0.8, "d5": 0.1, "d6": 0.7, "d7": 0.6, "d8": 0.4},
       "q2": {"d9": 0.3, "d3": 0.3, "d1": 0.3},
       "q9": {"d1": 1.0}}
Q1_NDCG5 = (1 / L2(2) + 2 / L2(6)) / (2 / L2(2) + 1 / L2(3) + 1 / L2(4))
Q1_NDCG10 = (1 / L2(2) + 2 / L2(6) + 1 / L2(8)) / (2 / L2(2) + 1 / L2(3) + 1 / L2(4))
Q2_NDCG = 1 / L2(3)


def test_order_is_score_desc_then_id_asc():
    assert order({"b": 1.0, "a": 1.0, "c": 2.0, "aa": 1.0}) == ["c", "a", "aa", "b"]
    import numpy as np

    for nan in (float("nan"), np.float32("nan")):
        with pytest.raises(ValueError, match="'x'"):
            order({"x": nan, "y": 1.0})


def test_metrics_match_hand_computed_values():
    means, per_query = evaluate(QRELS, RUN)
    assert set(means) == set(metrics.DEFAULT_METRICS)
    assert Q1_NDCG5 == pytest.approx(0.566511, abs=1e-6) and Q1_NDCG10 == pytest.approx(0.672975, abs=1e-6)
    assert per_query["ndcg@5"] == pytest.approx({"q1": Q1_NDCG5, "q2": Q2_NDCG, "q3": 0.0})
    assert per_query["ndcg@10"] == pytest.approx({"q1": Q1_NDCG10, "q2": Q2_NDCG, "q3": 0.0})
    assert per_query["recall@1"] == pytest.approx({"q1": 1 / 3, "q2": 0.0, "q3": 0.0})
    assert per_query["recall@5"] == pytest.approx({"q1": 2 / 3, "q2": 1.0, "q3": 0.0})
    assert per_query["recall@10"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 0.0})
    assert per_query["mrr@10"] == pytest.approx({"q1": 1.0, "q2": 0.5, "q3": 0.0})
    # the missing query q3 counts as 0: means are over 3 queries, not 2
    assert means["ndcg@5"] == pytest.approx((Q1_NDCG5 + Q2_NDCG) / 3)
    assert means["mrr@10"] == pytest.approx(1.5 / 3)
    assert means["recall@5"] == pytest.approx((2 / 3 + 1) / 3)
    # q1 extras: 2 relevant in the top 5 -> P@5 = 0.4; AP@10 = (1/1 + 2/5 + 3/7) / 3 relevant = 0.60952
    _, extra = evaluate(QRELS, RUN, ["precision@5", "map@10", "mrr", "ndcg"])
    assert extra["precision@5"]["q1"] == pytest.approx(0.4) and extra["map@10"]["q1"] == pytest.approx(0.609524, 1e-5)
    assert extra["mrr"]["q2"] == 0.5 and extra["ndcg"]["q1"] == pytest.approx(Q1_NDCG10)  # no cutoff = whole run


def test_ties_are_broken_by_id_whatever_the_insertion_order():
    for run in ({"q": {"b": 1.0, "a": 1.0}}, {"q": {"a": 1.0, "b": 1.0}}):
        _, per_query = evaluate({"q": {"b": 1}}, run, ["ndcg@5", "mrr@10"])
        assert per_query["ndcg@5"]["q"] == pytest.approx(1 / L2(3))  # b ranks 2nd behind a
        assert per_query["mrr@10"]["q"] == 0.5
    _, per_query = evaluate({"q": {"a": 1}}, {"q": {"b": 1.0, "a": 1.0}}, ["ndcg@5"])
    assert per_query["ndcg@5"]["q"] == 1.0


def test_oracle_run_is_perfect_and_reversed_run_drops_as_computed():
    qrels = {"q1": {"d1": 2, "d2": 1, "d5": 1, "d6": 0, "d7": 0}, "q2": {"d3": 1, "d4": 0}}
    oracle = {q: {d: float(r) for d, r in judged.items()} for q, judged in qrels.items()}
    means, _ = evaluate(qrels, oracle, ["ndcg@5", "ndcg@10", "recall@1", "mrr@10"])
    # recall@1 cannot be perfect with 3 relevant pages: q1 1/3, q2 1 -> mean 2/3
    assert means == {"ndcg@5": 1.0, "ndcg@10": 1.0, "recall@1": pytest.approx(2 / 3), "mrr@10": 1.0}
    # reversed (score = -relevance): q1 ranks d6, d7 (0, tie by id), d2, d5 (-1, tie by id), d1 (-2)
    #   DCG@5 = 1/log2(4) + 1/log2(5) + 2/log2(6) = 0.5 + 0.43068 + 0.77371 = 1.70438; IDCG = 3.13093 -> 0.54437
    # q2 ranks d4 (0), d3 (-1): NDCG@5 = 1/log2(3) = 0.63093
    reversed_run = {q: {d: -float(r) for d, r in judged.items()} for q, judged in qrels.items()}
    _, per_query = evaluate(qrels, reversed_run, ["ndcg@5"])
    q1 = (1 / L2(4) + 1 / L2(5) + 2 / L2(6)) / (2 / L2(2) + 1 / L2(3) + 1 / L2(4))
    assert q1 == pytest.approx(0.544369, abs=1e-6)
    assert per_query["ndcg@5"] == pytest.approx({"q1": q1, "q2": 1 / L2(3)})


def test_metric_names_are_validated():
    assert metrics.parse_metric("NDCG@5") == ("ndcg", 5) and metrics.parse_metric("mrr") == ("mrr", None)
    for bad in ("ndgc@5", "ndcg@0", "recall@x"):
        with pytest.raises(ValueError, match="metric"):
            evaluate(QRELS, RUN, [bad])


@pytest.mark.filterwarnings("ignore:unsafe cast")  # numba, inside ranx
@pytest.mark.slow
def test_own_metrics_agree_with_ranx_given_rank_derived_scores():
    ranx = pytest.importorskip("ranx")
    import random

    rng = random.Random(0)
    qrels, run = {}, {}
    for i in range(25):
        docs = [f"d{j:02d}" for j in range(30)]
        qrels[f"q{i}"] = {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))}
        if i % 7:  # some queries missing from the run
            run[f"q{i}"] = {d: float(rng.randint(0, 5)) for d in rng.sample(docs, 15)}  # many ties
    ours, _ = evaluate(qrels, run)
    # rank-derived scores: ranx sees strictly decreasing scores in OUR order, so its tie rule cannot differ
    ranked = {q: {d: float(len(s) - r) for r, d in enumerate(order(s))} for q, s in run.items()}
    ranked.update({q: {"__none__": 0.5} for q in qrels if q not in run})  # ranx needs every query in the run
    # only the six reported metrics: each extra one costs ranx seconds of numba compilation on a cold cache
    theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(ranked), metrics.DEFAULT_METRICS)
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_paired_test_identical_better_and_seeded():
    a = {f"q{i}": (i % 5) / 5 for i in range(30)}
    same = paired_test(a, dict(a))
    assert same["delta"] == 0 and same["p_randomization"] == 1.0 and same["p_ttest"] == 1.0 and same["n"] == 30
    b = {q: min(1.0, v + 0.2 + 0.05 * ((i * 7) % 3)) for i, (q, v) in enumerate(a.items())}
    better = paired_test(a, b)
    assert better["delta"] > 0.1 and better["p_randomization"] < 0.01 and better["p_ttest"] < 0.01
    assert better["mean_b"] - better["mean_a"] == pytest.approx(better["delta"])
    noisy = {q: v + (0.3 if i % 2 else -0.28) for i, (q, v) in enumerate(a.items())}
    assert paired_test(a, noisy, seed=3) == paired_test(a, noisy, seed=3)
    assert paired_test(a, noisy)["p_randomization"] > 0.5
    # small n: exact enumeration of the 2**4 sign flips; all four differences positive -> p = 2/16
    four = paired_test({"a": 0, "b": 0, "c": 0, "d": 0}, {"a": 1, "b": 1, "c": 1, "d": 1})
    assert four["p_randomization"] == pytest.approx(2 / 16)
    with pytest.raises(ValueError, match="only in b"):
        paired_test({"q1": 1.0}, {"q1": 1.0, "q2": 0.0})


# --- TREC runs -----------------------------------------------------------------------------------------------
def test_trec_run_round_trip_and_deterministic_order(tmp_path):
    run = {"q2": {"b": 0.5, "a": 0.5, "c": 1 / 3}, "q1": {"x": 12.25, "y": -1e-7}}
    path = str(tmp_path / "run.trec")
    write_trec_run(path, run, tag="bm25")
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "q1 Q0 x 1 12.25 bm25"
    assert [ln.split()[2] for ln in lines[2:]] == ["a", "b", "c"]  # tie 0.5: a before b
    assert [ln.split()[3] for ln in lines[2:]] == ["1", "2", "3"]
    assert read_trec_run(path) == run  # exact floats
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(path, run, tag="my tag")


def test_malformed_trec_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 two 0.4 t\n")
    with pytest.raises(ValueError, match=r"bad\.trec:2: .*'q1 Q0 d2 two 0.4 t'"):
        read_trec_run(str(path))
    path.write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(ValueError, match=r"bad\.trec:1"):
        read_trec_run(str(path))


# --- BM25 ----------------------------------------------------------------------------------------------------
IDS = ["p1", "p2", "p3", "p4", "p5"]
TEXTS = ["Annual revenue of Helmsworth Logistics rose in 2022.",
         "Zirconium mining output in the Quintara province doubled.",
         "",
         "Revenue and operating income statement of the group.",
         "Letter to shareholders about revenue growth."]


def test_bm25_ranks_the_rare_word_page_first_and_handles_empty_text(tmp_path):
    bm25 = BM25Retriever(IDS, TEXTS)
    run = bm25.search({"rare": "zirconium output", "common": "revenue", "stop": "the of and",
                       "oov": "xylophone", "empty": ""}, k=2)
    assert list(run["rare"]) == ["p2"]  # only pages with score > 0
    assert len(run["common"]) == 2 and "p3" not in run["common"]
    assert list(run["common"].values()) == sorted(run["common"].values(), reverse=True)
    assert run["stop"] == {} and run["oov"] == {} and run["empty"] == {}
    bm25.save(str(tmp_path / "index"))
    again = BM25Retriever.load(str(tmp_path / "index"))
    assert again.search({"rare": "zirconium output", "common": "revenue"}, k=3) == \
        bm25.search({"rare": "zirconium output", "common": "revenue"}, k=3)
    with pytest.raises(FileNotFoundError, match="not a saved"):
        BM25Retriever.load(str(tmp_path))


def test_bm25_ties_follow_the_id_rule_and_empty_corpus_returns_nothing(tmp_path):
    run = BM25Retriever(["b", "a", "c"], ["same words", "same words", "other"]).search({"q": "words"}, k=5)
    assert list(run["q"]) == ["a", "b"]
    empty = BM25Retriever(["a", "b"], ["", ""])
    assert empty.search({"q": "anything"}) == {"q": {}}
    empty.save(str(tmp_path / "e"))
    assert BM25Retriever.load(str(tmp_path / "e")).search({"q": "anything"}) == {"q": {}}


def test_retrieve_kinds(tmp_path):
    bench = Benchmark("tiny", IDS, TEXTS, [None] * 5, [""] * 5, {"q1": "zirconium", "q2": "revenue"},
                      {"q1": {"p2": 1}, "q2": {"p1": 1}})
    run = retrieve(bench, "bm25", k=3)
    assert list(run["q1"]) == ["p2"] and len(run["q2"]) == 3
    path = str(tmp_path / "r.trec")
    write_trec_run(path, {"q1": {"p1": 1.0, "p2": 3.0, "p4": 2.0}, "qx": {"p1": 1.0}}, tag="t")
    assert retrieve(bench, "run", k=2, run_file=path) == {"q1": {"p2": 3.0, "p4": 2.0}, "q2": {}}
    write_trec_run(path, {"q1": {"nope": 1.0}}, tag="t")
    with pytest.raises(ValueError, match="nope"):
        retrieve(bench, "run", k=2, run_file=path)
    with pytest.raises(ValueError, match="unknown first-stage kind 'dense'"):
        retrieve(bench, "dense", k=2)
    no_text = Benchmark("imgs", ["a"], [""], [None], [""], {"q": "x"}, {"q": {"a": 1}})
    with pytest.raises(ValueError, match="no page text"):
        retrieve(no_text, "bm25", k=2)


# --- loaders -------------------------------------------------------------------------------------------------
def _png(color=(200, 10, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (0, 90, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _write(path, columns: dict, schema=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)


def _published_beir(root, split="test", ids=(10, 11, 12), extra_qrel=None):
    """The layout of vidore/*_v2 and REAL-MM-RAG *_BEIR on the hub: one folder per table, HF shard names."""
    import pyarrow as pa

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    shard = f"{split}-00000-of-00001.parquet"
    _write(root / "corpus" / shard, {
        "corpus-id": pa.array(list(ids), pa.int64()),
        "image": pa.array([{"bytes": _png((i, 0, 0)), "path": f"page_{i}.png"} for i in ids], image_type),
        "doc-id": ["docA", "docA", "docB"],
        "markdown": [f"page {i} about topic {i}" for i in ids]})
    _write(root / "queries" / shard, {"query-id": pa.array([1, 2, 3], pa.int64()),
                                      "query": ["first question", "second question", "unanswerable question"]})
    qrels = {"query-id": [1, 2, 2, 3], "corpus-id": [ids[0], ids[1], ids[2], ids[2]], "score": [1, 2, 1, 0]}
    if extra_qrel:
        for key, value in extra_qrel.items():
            qrels[key].append(value)
    _write(root / "qrels" / shard, qrels)
    _write(root / "docs" / shard, {"doc-id": ["docA", "docB"], "summary": ["a", "b"]})  # not a BEIR table


def test_load_beir_published_layout(tmp_path):
    _published_beir(tmp_path / "esg_reports_v2")
    bench = load_beir(str(tmp_path / "esg_reports_v2"))
    assert bench.name == "esg_reports_v2"
    assert bench.corpus_ids == ["10", "11", "12"]
    assert bench.texts == ["page 10 about topic 10", "page 11 about topic 11", "page 12 about topic 12"]
    assert bench.image_formats == ["png"] * 3 and bench.images[1] == _png((11, 0, 0))
    assert bench.queries == {"1": "first question", "2": "second question"}  # q3 has only a score-0 qrel
    assert bench.dropped_queries == 1
    assert bench.qrels == {"1": {"10": 1}, "2": {"11": 2, "12": 1}}
    page = bench.page("11")
    assert page["page_id"] == "11" and page["image_format"] == "png" and page["text"].startswith("page 11")
    with pytest.raises(KeyError, match="'99'"):
        bench.page("99")
    light = load_beir(str(tmp_path / "esg_reports_v2"), name="esg", load_images=False, text_column="doc-id")
    assert light.name == "esg" and light.images == [None] * 3 and light.image_formats == [""] * 3
    assert light.texts == ["docA", "docA", "docB"]
    with pytest.raises(ValueError, match="text_column 'ocr'"):
        load_beir(str(tmp_path / "esg_reports_v2"), text_column="ocr")


def test_load_beir_file_per_table_classic_names(tmp_path):
    root = tmp_path / "bench" / "data"
    _write(root / "corpus.parquet", {"_id": ["a", "b"], "text": ["alpha page", None], "image": [_jpeg(), None]})
    _write(root / "queries.parquet", {"_id": ["q1"], "text": ["alpha?"]})
    _write(root / "qrels.parquet", {"query-id": ["q1"], "corpus-id": ["a"], "score": [1.0]})
    bench = load_beir(str(tmp_path / "bench"), split="test")  # names carry no split: all files
    assert bench.corpus_ids == ["a", "b"] and bench.texts == ["alpha page", ""]
    assert bench.image_formats == ["jpeg", ""] and bench.images[1] is None
    assert bench.queries == {"q1": "alpha?"} and bench.qrels == {"q1": {"a": 1}}


def test_load_beir_split_selection_and_errors(tmp_path):
    root = tmp_path / "two_splits"
    _published_beir(root, split="test")
    _published_beir(root, split="train", ids=(20, 21, 22))
    assert load_beir(str(root)).corpus_ids == ["10", "11", "12"]  # several splits: "test" by default
    assert load_beir(str(root), split="train").corpus_ids == ["20", "21", "22"]
    with pytest.raises(ValueError, match="split 'dev'"):
        load_beir(str(root), split="dev")
    broken = tmp_path / "broken"
    _published_beir(broken, extra_qrel={"query-id": 1, "corpus-id": 404, "score": 1})
    with pytest.raises(ValueError, match=r"missing from the corpus, e.g. \['404'\]"):
        load_beir(str(broken))
    with pytest.raises(ValueError, match="no corpus table .*looked for"):
        load_beir(str(tmp_path / "nothing_here"))


def test_image_format_from_magic_bytes():
    assert image_format(_png()) == "png" and image_format(_jpeg()) == "jpeg"
    assert image_format(b"") == "" and image_format(None) == "" and image_format(b"garbage") == ""


def _build_output(root, with_pages=True):
    """A dataset build output: pages/ and the examples of both splits (columns as the build job writes them)."""
    import pyarrow as pa

    pages = [(doc, f"{doc}-p{n:05d}") for doc, count in (("docA", 3), ("docB", 2), ("docC", 2)) for n in
             range(1, count + 1)]
    if with_pages:
        _write(root / "pages" / "part-0.parquet", {
            "page_id": [p for _, p in pages if p != "docB-p00002"],  # one page only in the examples
            "doc_id": [d for d, p in pages if p != "docB-p00002"],
            "image": [_png() for _, p in pages if p != "docB-p00002"],
            "image_format": ["png"] * (len(pages) - 1),
            "text": [f"text of {p}" for _, p in pages if p != "docB-p00002"]})

    def examples(rows):
        return {"group_id": [r[0] for r in rows], "query": [r[1] for r in rows], "page_id": [r[2] for r in rows],
                "image": [_png() for _ in rows], "image_format": ["png"] * len(rows),
                "text": [f"text of {r[2]}" for r in rows], "label": pa.array([r[3] for r in rows], pa.int8()),
                "kind": ["positive" if r[3] else "generated" for r in rows], "weight": [1.0] * len(rows),
                "attribute": [None] * len(rows)}

    _write(root / "examples_heldout" / "part-0.parquet", examples([
        ("g1", "Where is A headquartered?", "docA-p00001", 1), ("g1", "Where is B headquartered?", "docA-p00001", 0),
        ("g2", "Revenue of B in 2022?", "docB-p00002", 1), ("g2", "Revenue of B in 2021?", "docB-p00002", 0)]))
    _write(root / "examples" / "part-0.parquet", examples([
        ("g3", "Net income of C?", "docC-p00002", 1), ("g3", "Net income of D?", "docC-p00002", 0)]))


def test_load_build_split_heldout_and_train(tmp_path):
    root = tmp_path / "local"
    _build_output(root)
    held = load_build_split(str(root))
    assert held.name == "local-heldout"
    assert held.corpus_ids == ["docA-p00001", "docA-p00002", "docA-p00003", "docB-p00001", "docB-p00002"]
    assert held.queries == {"g1": "Where is A headquartered?", "g2": "Revenue of B in 2022?"}
    assert held.qrels == {"g1": {"docA-p00001": 1}, "g2": {"docB-p00002": 1}}
    assert held.page("docB-p00002")["text"] == "text of docB-p00002"  # taken from the examples
    assert held.image_formats == ["png"] * 5 and held.images[0] == _png()
    train = load_build_split(str(root), split="train", name="t", load_images=False)
    assert train.name == "t" and train.corpus_ids == ["docC-p00001", "docC-p00002"]
    assert train.images == [None, None] and train.queries == {"g3": "Net income of C?"}
    with pytest.raises(ValueError, match="split must be one of"):
        load_build_split(str(root), split="test")


def test_load_build_split_without_pages_uses_example_pages(tmp_path):
    _build_output(tmp_path / "out", with_pages=False)
    held = load_build_split(str(tmp_path / "out"))
    assert held.corpus_ids == ["docA-p00001", "docB-p00002"]
    with pytest.raises(ValueError, match="no Parquet files"):
        load_build_split(str(tmp_path / "missing"))


# --- report --------------------------------------------------------------------------------------------------
def _results():
    def ds(n, base, gain, p):
        return {"num_queries": n,
                "systems": {"bm25": {"metrics": {"ndcg@5": base, "recall@5": base + 0.1}},
                            "bm25+minilm": {"metrics": {"ndcg@5": base + gain, "recall@5": base + 0.1}}},
                "tests": {"bm25+minilm": {"ndcg@5": {"n": n, "delta": gain, "p_randomization": p, "p_ttest": p}}}}

    return {"datasets": {"esg_reports_v2": ds(52, 0.412, 0.061, 0.0004), "finreport": ds(80, 0.302, -0.025, 0.41)},
            "primary": "ndcg@5", "first_stage": "bm25", "top_k": 20, "setup": {"reranker": "/models/minilm"}}


def test_write_report_markdown_and_plot(tmp_path):
    from PIL import Image

    paths = write_report(str(tmp_path / "report"), _results())
    text = Path(paths["report"]).read_text()
    assert text.startswith("# Reranking evaluation") and "- reranker: /models/minilm" in text
    assert "| dataset | queries | bm25 | bm25+minilm |" in text
    assert "| esg_reports_v2 | 52 | 41.2 | **47.3** (+6.1, p<0.001) |" in text
    assert "| finreport | 80 | **30.2** | 27.7 (-2.5, p=0.410) |" in text
    assert "| *average* |  | 35.7 | **37.5** (+1.8) |" in text  # unweighted mean of the two datasets
    assert "| esg_reports_v2 | 52 | **51.2** | **51.2** |" in text  # recall@5 table: ties both bold
    assert "![ndcg@5 per dataset](ndcg5.png)" in text and paths["plot"].endswith("ndcg5.png")
    with Image.open(paths["plot"]) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_format_table_is_aligned_plain_text():
    table = format_table(_results())
    lines = table.splitlines()
    assert lines[0].split() == ["dataset", "system", "n", "ndcg@5", "recall@5", "d", "ndcg@5", "p"]
    assert len({len(ln) for ln in lines[:2]}) == 1  # header and rule aligned
    row = next(ln for ln in lines if ln.startswith("esg_reports_v2") and "minilm" in ln)
    assert row.split()[-2:] == ["+6.1", "<0.001"]
    assert any(ln.startswith("average") and "37.5" in ln for ln in lines)
    json.dumps(_results())  # the results structure is plain JSON


def test_eval_modules_import_no_heavy_library():
    heavy = ["bm25s", "ranx", "matplotlib", "pyarrow", "scipy", "torch", "numba", "PIL"]
    code = ("import importlib, json, sys\n"
            "for m in ['docrerank.eval', 'docrerank.eval.beir', 'docrerank.retrieval.metrics', "
            "'docrerank.retrieval.retrievers', 'docrerank.report.evaluation']: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(h for h in {heavy!r} if h in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_one_dataset_has_no_average_row():
    one = _results()
    first = next(iter(one["datasets"]))
    one["datasets"] = {first: one["datasets"][first]}
    lines = format_table(one).splitlines()
    assert any(ln.startswith(first) for ln in lines) and not any(ln.startswith("average") for ln in lines)
    assert any(ln.startswith("average") for ln in format_table(_results()).splitlines())


# ------------------------------------------------------------------------------------ the ColPali first stage
def _standin_colpali(monkeypatch, loads: list, batches: list):
    """colpali-engine is a GPU extra (not installed on CPU CI): a stand-in ``colpali_engine.models`` with its API
    (``ColQwen2.from_pretrained``, the processor's ``process_images``/``process_queries``/``score_multi_vector``)
    that records the loads and the batches."""
    import types

    import torch
    from transformers import BatchFeature

    class ColQwen2(torch.nn.Module):
        @classmethod
        def from_pretrained(cls, name, **kw):
            loads.append(kw)
            return cls()

        @property
        def device(self):
            return torch.device("cpu")

        def forward(self, pixel=None, ids=None):
            x = pixel if pixel is not None else ids
            return torch.stack([x, x * 2], dim=1)  # 2 "tokens" of dimension 1 per item

    class ColQwen2Processor:
        @classmethod
        def from_pretrained(cls, name):
            return cls()

        def process_images(self, images):
            batches.append([im.size for im in images])
            return BatchFeature({"pixel": torch.tensor([[float(im.size[0])] for im in images])})

        def process_queries(self, queries):
            return BatchFeature({"ids": torch.tensor([[float(len(q))] for q in queries])})

        def score_multi_vector(self, qs, ps, device="cpu"):
            return torch.tensor([[float((q @ p.T).max(dim=1).values.sum()) for p in ps] for q in qs])

    cm = types.ModuleType("colpali_engine.models")
    cm.ColQwen2, cm.ColQwen2Processor = ColQwen2, ColQwen2Processor
    monkeypatch.setitem(sys.modules, "colpali_engine", types.ModuleType("colpali_engine"))
    monkeypatch.setitem(sys.modules, "colpali_engine.models", cm)


def test_colpali_first_stage_decodes_pages_per_batch_and_loads_once_per_run(monkeypatch):
    """The corpus was decoded all at once (every page image in memory) and the model reloaded per dataset; and
    from_pretrained got torch_dtype (deprecated in transformers 5: dtype)."""
    from PIL import Image

    from docrerank.retrieval import retrievers

    loads, batches = [], []
    _standin_colpali(monkeypatch, loads, batches)
    monkeypatch.setattr(retrievers, "_LOADED", {})
    opened = []
    real_open = Image.open

    def counting_open(fp, *a, **kw):
        opened.append(len(batches))  # how many batches were processed when this page was decoded
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", counting_open)

    def png(w):
        buf = io.BytesIO()
        Image.new("RGB", (w, 10), "white").save(buf, "PNG")
        return buf.getvalue()

    class Bench:
        def __init__(self, n):
            self.name, self.queries = f"b{n}", {"q1": "abc", "q2": "abcdef"}
            self.corpus_ids, self.images = [f"p{i}" for i in range(n)], [png(10 + i) for i in range(n)]

    for bench in (Bench(5), Bench(3)):  # two datasets of one run
        run = retrievers.retrieve(bench, "colpali", k=2, model="org/colqwen2-tiny", device="cpu", batch_size=2)
        assert set(run) == {"q1", "q2"} and all(len(v) == 2 for v in run.values())
    assert len(loads) == 1 and "dtype" in loads[0] and "torch_dtype" not in loads[0]  # loaded once, dtype=
    assert [len(b) for b in batches] == [2, 2, 1, 2, 1]
    assert opened == [0, 0, 1, 1, 2, 3, 3, 4]  # each page decoded just before its batch, never all at once
    retrievers.retrieve(Bench(2), "colpali", k=1, model="org/other-colqwen2", device="cpu", batch_size=2)
    assert len(loads) == 2 and list(retrievers._LOADED) == [("org/other-colqwen2", "cpu", 2)]  # one model kept
