"""The ``text`` judge as a classifier on real documents: the dev set's questions against their answer pages
(positives) and the other pages of the same document (negatives).

    python bench/judge_qa_dev.py --pages /tmp/qa_dev/pages [--qa-dev ../shared/data/qa_dev]

``--pages``: the dev set's PDFs ingested by ``jobs.ingest`` (only the text layer is read; render at a low DPI
as JPEG to save time: ``python -m jobs.ingest input=../shared/data/qa_dev/pdfs output=/tmp/qa_dev
render.dpi=36 render.image_format=jpeg``). Writes ``bench/results/text_judge_qa_dev.json``: ROC AUC of both
decision scores (min of the two estimates: the build's rule for positives; max: its rule for negatives and the
mining filter's ``either``), and at the shipped threshold the false-rejection rate (answer pages judged not
answerable: a given positive dropped, or a false negative kept by the mining filter) and the false-acceptance
rate (other pages judged answerable). Pages without a text layer score 0.5 and are reported apart. The two
halves of the documents (by a hash of the file name) are reported too: the judge was designed on half 0.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))


def auc(pos: list[float], neg: list[float]) -> float:
    """ROC AUC: the probability that a positive scores above a negative (ties count half)."""
    s = sorted(neg)
    wins = sum(bisect.bisect_left(s, p) + 0.5 * (bisect.bisect_right(s, p) - bisect.bisect_left(s, p)) for p in pos)
    return wins / (len(pos) * len(neg))


def rates(rows: list[tuple[bool, float, float]], threshold: float) -> dict:
    """AUC and error rates of both decision scores over (is_answer_page, p_a, p_b) rows."""
    out = {"answer_pages": sum(r[0] for r in rows), "other_pages": sum(not r[0] for r in rows)}
    for name, f in (("min", min), ("max", max)):
        pos = [f(a, b) for y, a, b in rows if y]
        neg = [f(a, b) for y, a, b in rows if not y]
        out[name] = {"auc": round(auc(pos, neg), 4),
                     "false_rejection_rate": round(sum(p < threshold for p in pos) / len(pos), 4),
                     "false_acceptance_rate": round(sum(p >= threshold for p in neg) / len(neg), 4)}
    return out


def main() -> int:
    """Score every (question, page of its document) pair; write the result file."""
    import pyarrow.dataset as pads

    from docrerank.lexical.textjudge import judge_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", required=True, help="pages table of the ingested dev set")
    ap.add_argument("--qa-dev", default=str(REPO.parent / "shared" / "data" / "qa_dev"))
    ap.add_argument("--threshold", type=float, default=0.5, help="the shipped verify.threshold")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "text_judge_qa_dev.json"))
    args = ap.parse_args()
    t = pads.dataset(args.pages, format="parquet").to_table(columns=["source_uri", "page_number", "text"]).to_pylist()
    pages = {(r["source_uri"].rsplit("/", 1)[-1], r["page_number"]): r["text"] or "" for r in t}
    queries = [json.loads(line) for line in (Path(args.qa_dev) / "queries.jsonl").read_text().splitlines() if line]
    rows, halves, no_text = [], {0: [], 1: []}, {"answer_pages": 0, "other_pages": 0}
    for q in queries:
        doc = q["pdf"].rsplit("/", 1)[-1]
        half = int(hashlib.sha256(doc.encode()).hexdigest(), 16) % 2
        for n in range(q["num_pages"]):
            text = pages[(doc, n + 1)]  # the pages table numbers pages from 1, relevant_pages from 0
            answer = n in q["relevant_pages"]
            if not text.strip():
                no_text["answer_pages" if answer else "other_pages"] += 1
                continue
            a, b = judge_text(q["query"], text)
            rows.append((answer, a, b))
            halves[half].append((answer, a, b))
    result = {
        "metric": "text_judge_qa_dev", "unit": "ROC AUC / rates", "threshold": args.threshold,
        "questions": len(queries), "pairs_with_text": len(rows), "pairs_without_text": no_text,
        "all": rates(rows, args.threshold), "half0_design": rates(halves[0], args.threshold),
        "half1_check": rates(halves[1], args.threshold),
        "baseline": 0.5, "value": None, "ratio": None,  # baseline: chance (AUC of a judge that cannot tell)
        "device": "CPU", "command": "python bench/judge_qa_dev.py --pages " + args.pages,
        "date": dt.date.today().isoformat(),
    }
    result["value"] = result["all"]["max"]["auc"]
    result["ratio"] = round(result["value"] / result["baseline"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("all", "half0_design", "half1_check", "pairs_without_text")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
