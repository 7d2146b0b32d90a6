"""Pure stage logic with ground truth from the sample corpus: rules rewrites, the text judge, dedup, select."""

import json

import pytest

from docrerank.lexical.dedup import dedup
from docrerank.lexical.rules import FINANCE_ATTRIBUTES, UserAttribute, Vocabulary, rewrite
from docrerank.lexical.select import select
from docrerank.lexical.text import char_similarity, key_tokens, tokens
from docrerank.lexical.textjudge import judge_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import pymupdf

    from docrerank.render.sample_corpus import make_corpus

    d = make_corpus(tmp_path_factory.mktemp("sc"), num_companies=3)
    pages = {}
    for f in sorted((d / "pdfs").glob("*.pdf")):
        for i, p in enumerate(pymupdf.open(f), start=1):
            pages[(f.name, i)] = p.get_text()
    questions = [json.loads(l) for l in (d / "questions.jsonl").read_text().splitlines()]
    facts = [json.loads(l) for l in (d / "facts.jsonl").read_text().splitlines()]
    return pages, questions, facts, Vocabulary.from_texts(list(pages.values()))


def _negative_ok(query, page, parent, thr=0.5):
    a, b = judge_text(query, page, parent)
    return a < thr and b < thr


def test_text_judge_ground_truth(corpus):
    pages, questions, _, _ = corpus
    q = next(q for q in questions if q["doc"] == "norvalis_energy_2021.pdf" and q["page_number"] == 2)
    page = pages[(q["doc"], 2)]
    assert "2020" in page  # the highlights table has a prior-year column
    assert min(judge_text(q["question"], page)) >= 0.5  # the given positive is answerable
    # changing only 2021 -> 2020 asks for a figure the page shows: must be rejected
    assert not _negative_ok(q["question"].replace("2021", "2020"), page, q["question"])
    assert _negative_ok(q["question"].replace("2021", "2019"), page, q["question"])  # no 2019 column
    assert _negative_ok(q["question"].replace("Norvalis Energy", "Quintara Foods"), page, q["question"])
    assert not _negative_ok(q["question"].replace("total revenue", "net income"), page, q["question"])  # on the page
    assert _negative_ok(q["question"].replace("total revenue", "free cash flow"), page, q["question"])
    assert judge_text("anything?", "", None) == (0.5, 0.5)  # no text layer: undecided


def test_every_given_positive_is_answerable_from_its_page(corpus):
    pages, questions, _, _ = corpus
    for q in questions:
        assert min(judge_text(q["question"], pages[(q["doc"], q["page_number"])])) >= 0.5, q


def test_rules_change_exactly_one_attribute(corpus):
    pages, questions, _, vocab = corpus
    seen_attrs = set()
    for q in questions:
        page = pages[(q["doc"], q["page_number"])]
        out = rewrite(q["question"], page, vocab, list(FINANCE_ATTRIBUTES), 12, seed="s")
        assert out, q
        assert len({r.text for r in out}) == len(out) and all(r.text != q["question"] for r in out)
        for r in out:
            seen_attrs.add(r.attribute)
            before, after = tokens(q["question"]), tokens(r.text)
            changed = set(before) ^ set(after)
            assert changed, r
            if r.attribute == "year":
                assert [t for t in changed if t.isdigit()] and len(changed) == 2, r
                assert all(t not in tokens(page) for t in set(after) - set(before))  # not a year the page shows
            if r.attribute == "company":
                assert set(key_tokens(r.text)) != set(key_tokens(q["question"]))
        assert rewrite(q["question"], page, vocab, list(FINANCE_ATTRIBUTES), 12, seed="s") == out  # seeded
    assert {"year", "company", "financial_metric"} <= seen_attrs


def test_company_swaps_come_from_the_corpus(corpus):
    """Companies are typed by what the corpus shows ("Quintara Foods | Annual Report 2021") and replaced by the
    corpus's other companies only: never its segments or people, never a name from outside the corpus."""
    pages, questions, _, vocab = corpus
    q = questions[1]
    out = [r for r in rewrite(q["question"], pages[(q["doc"], 2)], vocab, ["company"], 12, "s")]
    assert {r.text for r in out} == {q["question"].replace("Norvalis Energy", c)
                                     for c in ("Quintara Foods", "Helmsworth Logistics")}
    assert set(vocab.names["company"]) == {"Norvalis Energy", "Quintara Foods", "Helmsworth Logistics"}


def test_user_defined_attribute():
    attr = UserAttribute("product", "the product line", ("Model X200", "Model Z900", "Model A100"))
    out = rewrite("What is the battery life of the Model X200?", "Model X200 battery life 12 hours", Vocabulary(),
                  ["product"], 5, "s", user_attributes=[attr])
    assert {r.attribute for r in out} == {"product"}
    assert {r.text for r in out} == {"What is the battery life of the Model Z900?", "What is the battery life of the Model A100?"}


def test_dedup_reasons():
    pos = "What was Apple's revenue in 2021?"
    got = dedup(["What was Apple's revenue in 2020?", "what was apple's revenue in 2020", "What was Apple's revenue in 2021",
                 "What was IBM's revenue in 2021?", "What was Apple's revenues in 2020?", "  "], pos)
    assert [r for _, r in got] == [None, "duplicate", "same_as_positive", None, "near_duplicate", "empty"]
    # a changed number is never a near-duplicate, however similar the rest
    assert dedup(["Revenue in 2019 and 2020?", "Revenue in 2019 and 2021?"], "x")[1][1] is None


def test_select_strategies():
    pos = "What was Apple's revenue in 2021?"
    negs = ["What was Apple's revenue in 2020?", "What was Apple's revenue in 2019?", "How many staff did IBM have?",
            "What was Apple's net income in 2021?", "Where is Apple based?"]
    r1 = select(pos, negs, 3, "random", "seed", char_similarity)
    assert r1 == select(pos, negs, 3, "random", "seed", char_similarity) and len(set(r1)) == 3
    hard = select(pos, negs, 2, "hardest", "seed", char_similarity)
    assert set(hard) == {0, 1}
    div = select(pos, negs, 2, "diverse", "seed", char_similarity)
    assert div[0] in (0, 1) and div[1] in (2, 4)  # the second pick is far from the first
    assert select(pos, negs[:2], 3, "hardest", "s", char_similarity) == [0, 1]
    with pytest.raises(ValueError, match="strategy"):
        select(pos, negs, 2, "best", "s", char_similarity)


def _page(page_id, text, queries, image=b"png"):
    from docrerank.build.stages import Page
    from docrerank.core.schema import PageState

    return Page(page_id, image, "png", text, PageState(queries=list(queries)))


def test_negatives_stage_attribute_mode_with_a_user_defined_attribute():
    """The build's negatives stage (no Ray): attributes mode, rules engine, a user attribute next to the finance ones."""
    from collections import Counter

    from docrerank.build.config import BuildConfig
    from docrerank.build.stages import NegativesStage
    from docrerank.core.config import load_config
    from docrerank.core.schema import QueryRow

    cfg = load_config(BuildConfig, None, [
        "output=x", "pages=y", "positives_file=z", "negatives.attributes=[year]",
        "negatives.user_attributes=[{name: product, description: the product line, examples: [X200, Z900, A100]}]"])
    stage = NegativesStage(cfg, vocabulary=Vocabulary.from_texts(["Battery life in 2019, 2020 and 2022."]).to_dict())
    pos = QueryRow.new("p1", "What was the battery life of the X200 in 2021?", "positive", "given", verdict="kept")
    page = _page("p1", "X200 battery life 2021: 12 hours", [pos])
    stage.process([page], Counter())
    negs = page.state.of("negative")
    assert {q.attribute for q in negs} == {"year", "product"}
    assert all(q.parent_id == pos.query_id and q.origin == "rules" for q in negs)
    assert {q.text for q in negs if q.attribute == "product"} == {
        "What was the battery life of the Z900 in 2021?", "What was the battery life of the A100 in 2021?"}
    assert {q.text for q in negs if q.attribute == "year"} == {
        f"What was the battery life of the X200 in {y}?" for y in (2019, 2020, 2022)}  # corpus years, not on the page
    # the LLM's attribute list: descriptions from the prompt file, the user's own from the config
    assert stage.attribute_text() == ("- year: the year or period\n"
                                      "- product: the product line (e.g. X200, Z900, A100)")


def test_text_prefilter_skips_pages_without_a_text_layer(monkeypatch):
    """A scanned page (no text layer) tells the text prefilter nothing: its negatives go to the model judge
    instead of being rejected as 'text_layer_answerable' (the unknown score 0.5 used to pass the threshold)."""
    from collections import Counter

    from docrerank.build import stages as build_stages
    from docrerank.build.config import BuildConfig
    from docrerank.core.config import load_config
    from docrerank.core.schema import QueryRow
    from docrerank.engines.requests import JudgeResult

    class FakeJudge:
        calls = 0

        def judge(self, reqs):
            FakeJudge.calls += len(reqs)
            return [JudgeResult(p_yes=0.1) for _ in reqs]

    monkeypatch.setattr(build_stages, "_build", lambda cfg: FakeJudge())
    cfg = load_config(BuildConfig, None, ["output=x", "pages=y", "positives_file=z",
                                          'verify.engine={"backend": "http", "model": "m"}'])
    stage = build_stages.VerifyStage(cfg, "negative")
    pages = [_page(pid, text, [QueryRow.new(pid, "What was the revenue in 2020?", "negative", "rules")])
             for pid, text in (("scan", ""), ("digital", "Revenue 2021: $5.2 billion. Revenue 2020: $4.9 billion."))]
    m = Counter()
    stage.process(pages, m)
    scan, digital = (p.state.queries[0] for p in pages)
    assert digital.reason == "text_layer_answerable" and m["prefiltered"] == 1
    assert FakeJudge.calls == 2 and scan.p_answerable_a == pytest.approx(0.1)  # both prompts, by the model
    assert scan.verdict == "verified" and m["requests"] == 2


def test_page_state_round_trips_through_arrow_and_ray_blocks():
    """The typed state between build stages: a struct column that survives Arrow, Parquet-free pickling (as Ray
    blocks travel) and the queries table's own schema."""
    import pickle

    import pyarrow as pa

    from docrerank.build.stages import PAGE_COLUMNS, pages_of, with_states
    from docrerank.core.schema import (GivenPositive, PageState, QueryRow, QUERY_FIELDS, page_state_type,
                                       queries_schema, states_from_arrow, states_to_arrow)

    assert QUERY_FIELDS == tuple(queries_schema().names)  # a QueryRow is a queries-table row
    pos = QueryRow.new("p1", "What was the revenue in 2021?", "positive", "given", answer="5", verdict="kept",
                       p_answerable_a=0.75, p_answerable_b=0.5)
    neg = QueryRow.new("p1", "What was the revenue in 2019?", "negative", "rules", parent_id=pos.query_id,
                       attribute="year")
    states = [PageState([pos, neg], {"positives": {"seconds": 0.25, "requests": 2.0}, "select": {"seconds": 0.5}},
                        [GivenPositive("What was the revenue in 2021?", "5")], ["negatives: timeout: slow"]),
              PageState()]
    arr = pickle.loads(pickle.dumps(states_to_arrow(states)))
    assert arr.type == page_state_type()
    back = states_from_arrow(arr)
    assert back == states and list(back[0].metrics) == ["positives", "select"]
    assert back[0].negatives_of(pos, "kept") == [] and back[0].of("negative") == [neg]
    assert pa.Table.from_pylist([q.as_row() for q in back[0].queries], schema=queries_schema()).num_rows == 2
    t = pa.table({"page_id": ["p1", "p2"], "image": [b"a", b"b"], "image_format": ["png"] * 2, "text": ["x", None],
                  "state": arr})
    pages = pages_of(t)
    assert [p.page_id for p in pages] == ["p1", "p2"] and pages[1].text is None
    pages[1].state.errors.append("e")
    t2 = with_states(t, pages)
    assert t2.column_names == [*PAGE_COLUMNS, "state"] and states_from_arrow(t2.column("state"))[1].errors == ["e"]
    with pytest.raises(ValueError, match="role"):
        QueryRow.new("p1", "q", "neutral", "given")


def test_verify_rules_and_the_text_judge():
    """engines.verify: the decision rules of the build and the miner, the text judge, the text prefilter."""
    from docrerank.engines.base import JudgeResult
    from docrerank.engines.verify import (VerifyItem, answerable, is_verified_negative, is_verified_positive,
                                          verify)
    from docrerank.prompts import load_prompt

    assert is_verified_positive(0.5, 0.9, 0.5) and not is_verified_positive(0.49, 0.9, 0.5)
    assert is_verified_negative(0.1, 0.49, 0.5) and not is_verified_negative(0.1, 0.5, 0.5)
    assert answerable(0.1, 0.6, 0.5, "either") and not answerable(0.1, 0.6, 0.5, "both")
    with pytest.raises(ValueError, match="rule"):
        answerable(0.1, 0.6, 0.5, "most")
    page = "Revenue 2021: $5.2 billion. Revenue 2020: $4.9 billion."
    items = [VerifyItem("What was the revenue in 2020?", page, b"png", parent="What was the revenue in 2021?"),
             VerifyItem("What was the revenue in 2019?", page, b"png", parent="What was the revenue in 2021?"),
             VerifyItem("What was the revenue in 2019?", "", b"png")]
    text = verify(items, "text")
    assert [j.by for j in text] == ["text"] * 3 and text[0].p_a == judge_text(items[0].query, page, items[0].parent)[0]
    assert text[2].p_a == text[2].p_b == 0.5  # no text layer: undecided

    class Engine:
        def __init__(self, fail=False):
            self.reqs, self.fail = [], fail

        def judge(self, reqs):
            self.reqs += reqs
            return [JudgeResult(error="timeout: slow") if self.fail else JudgeResult(p_yes=0.2) for _ in reqs]

    eng = Engine()
    got = verify(items, eng, load_prompt("verify"), threshold=0.5, prefilter="text")
    assert [j.by for j in got] == ["prefilter", "model", "model"]  # 2020 is on the page; no text says nothing
    assert len(eng.reqs) == 4  # two prompts for each of the two items the text layer could not settle
    assert got[1].p_a == got[1].p_b == 0.2 and len(got[1].results) == 2
    bad = verify(items[2:], Engine(fail=True), load_prompt("verify"))
    assert bad[0].error == "timeout: slow" and bad[0].p_a is None and not bad[0].ok
    with pytest.raises(ValueError, match="prompt_a"):
        verify(items, eng, {"name": "x"})


def test_given_positives_start_at_the_negatives_unless_reverification_is_asked():
    """Given positives are labels: kept without a judge (and never over max_positives) by default; with
    verify.reverify_given the judge drops those it does not find answerable, and keeps every one it does."""
    from collections import Counter

    from docrerank.build.config import BuildConfig
    from docrerank.build.stages import PositivesStage, VerifyStage
    from docrerank.core.config import load_config
    from docrerank.core.schema import GivenPositive, PageState

    text = "Net sales 2021: $44.5 billion. Net sales 2020: $37.4 billion."
    given = [GivenPositive("What were net sales in fiscal 2021?", "44.5"),
             GivenPositive("What were net sales in FY2020?", "37.4"),
             GivenPositive("Which category grew fastest?", None)]  # a real question the text layer cannot show
    for reverify, kept in ((False, 3), (True, 2)):
        cfg = load_config(BuildConfig, None, ["output=x", "pages=y", "positives_file=z", "verify.max_positives=1",
                                              f"verify.reverify_given={str(reverify).lower()}"])
        from docrerank.build.stages import Page

        page = Page("p1", b"png", "png", text, PageState(given=list(given)))
        PositivesStage(cfg).process([page], Counter())
        VerifyStage(cfg, "positive").process([page], Counter())
        pos = page.state.of("positive")
        assert [q.origin for q in pos] == ["given"] * 3
        assert len([q for q in pos if q.verdict == "kept"]) == kept
        if reverify:
            assert pos[2].verdict == "rejected" and pos[2].reason == "not_answerable"
            assert all(q.p_answerable_a is not None for q in pos)
        else:
            assert all(q.p_answerable_a is None for q in pos)  # no judge was asked


def test_pool_checks_do_not_wait_for_the_slowest_ordered_batch():
    """The build's output is an ordered stream (preserve_order), so one slow batch held back every later one and
    with them the pools' checks: a stage failing all its requests went unnoticed until the slow batch finished.
    iter_checked checks on a clock while the stream waits, and a check's error stops the job at once."""
    import time

    from docrerank.core.raydata import iter_checked

    def stream():
        yield 1
        time.sleep(30)  # the slowest batch
        yield 2

    checks = []

    def check():
        checks.append(time.monotonic())
        if len(checks) == 3:
            raise RuntimeError("too many model requests failed")

    t0 = time.monotonic()
    got = []
    with pytest.raises(RuntimeError, match="too many model requests failed"):
        for item in iter_checked(stream(), check, every_s=0.2):
            got.append(item)
    assert got == [1] and time.monotonic() - t0 < 5  # not 30 s behind the slow batch
    assert list(iter_checked(iter([1, 2, 3]), lambda: None, every_s=0.1)) == [1, 2, 3]  # order kept

    def broken():
        yield 1
        raise ValueError("bad page")

    with pytest.raises(ValueError, match="bad page"):
        list(iter_checked(broken(), lambda: None))
