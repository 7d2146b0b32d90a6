"""The real-data experiment (experiments/twins.py) end to end on a tiny generated set in the dev set's layout:
PDFs, questions with 0-based answer pages; halves by file name; build, mine, two trainings, evaluation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _twins():
    spec = importlib.util.spec_from_file_location("twins", REPO / "experiments" / "twins.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_half_split_is_by_file_name_and_seeded():
    twins = _twins()
    names = [f"doc{i}.pdf" for i in range(40)]
    halves = [twins.half_of(n) for n in names]
    assert 10 < sum(halves) < 30 and halves == [twins.half_of(n) for n in names]
    assert [twins.half_of(n, 1) for n in names] != halves


@pytest.mark.slow
def test_experiment_runs_end_to_end_on_a_tiny_set(ray_local, tmp_path):
    from docrerank.render.sample_corpus import make_corpus

    twins = _twins()
    corpus = make_corpus(tmp_path / "corpus", num_companies=4, years=[2021, 2022])
    names = sorted(p.name for p in (corpus / "pdfs").glob("*.pdf"))
    # a seed whose halves both hold documents, and whose training half holds a validation document
    from docrerank.core.schema import doc_id_of, is_heldout, page_id_of

    def ok(seed):
        train = [n for n in names if twins.half_of(n, seed) == 0]
        val = [n for n in train if is_heldout(page_id_of(doc_id_of((corpus / "pdfs" / n).read_bytes()), 1), 0.5, 0)]
        return len(train) - len(val) >= 2 and len(val) >= 1 and len(names) - len(train) >= 2

    seed = next(s for s in range(100) if ok(s))
    questions = tmp_path / "queries.jsonl"
    rows = [json.loads(x) for x in (corpus / "questions.jsonl").read_text().splitlines()]
    questions.write_text("".join(json.dumps({"query": r["question"], "pdf": f"pdfs/{r['doc']}",
                                             "relevant_pages": [r["page_number"] - 1]}) + "\n" for r in rows))
    result = tmp_path / "result"
    rc = twins.main(["--pdfs", str(corpus / "pdfs"), "--questions", str(questions), "--work", str(tmp_path / "w"),
                     "--result", str(result), "--seed", str(seed), "--holdout", "0.5",
                     "optim.max_steps=2", "data.val_every_steps=1", "model.max_seq_len=96",
                     "data.groups_per_device=2", "data.chunk_groups=1"])
    assert rc == 0
    out = json.loads((result / "result.json").read_text())
    print(json.dumps(out["jobs"]))
    table = (result / "table.txt").read_text()
    test_docs = len(names) - sum(twins.half_of(n, seed) == 0 for n in names)
    assert out["split"]["documents"]["test"] == test_docs and out["queries"]["test"] == 4 * test_docs
    systems = list(out["systems"])
    assert systems == ["bm25", "bm25+minilm-zeroshot", "bm25+mined-only", "bm25+base-mix",
                       "bm25+minilm-zeroshot+fused", "bm25+mined-only+fused", "bm25+base-mix+fused"]
    for s in systems[1:]:
        assert s in table and 0 <= out["tests_vs_bm25"][s]["p_randomization"] <= 1
    assert "bm25+base-mix vs bm25+mined-only" in out["tests_between"]
    for twin in ("base-mix", "mined-only"):  # validated before training and at each step; the best one exported
        steps = out["validation"][twin]["val_ndcg@5 by step"]
        assert sorted(map(int, steps)) == [0, 1, 2]
        best = out["validation"][twin]["best_step"]
        assert steps[str(best)] == max(steps.values())
        mix = json.loads((tmp_path / "w" / f"train_{twin}" / "mix.json").read_text())
        assert set(mix["sources"]) == ({"mined", "generated"} if twin == "base-mix" else {"mined"})
    assert set(out["fusion"]) == {"minilm-zeroshot", "mined-only", "base-mix"}
    assert all(f["chosen_on"] == "validation" for f in out["fusion"].values())
    # the test half's pages never reached the build
    built = json.loads((tmp_path / "w" / "build" / "stats.json").read_text())
    assert built["pages"]["processed"] == out["split"]["pages"]["train+validation"]
