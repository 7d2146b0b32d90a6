"""The ``text`` judge as a classifier on real documents: the dev set's questions against their answer pages
(positives) and the other pages of the same document (negatives).

    python bench/judge_qa_dev.py --pages /tmp/qa_dev/pages [--qa-dev ../shared/data/qa_dev]

``--pages``: the dev set's PDFs ingested by ``jobs.ingest`` (only the text layer is read; render at a low DPI
as JPEG to save time: ``python -m jobs.ingest input=../shared/data/qa_dev/pdfs output=/tmp/qa_dev
render.dpi=36 render.image_format=jpeg``). Writes ``bench/results/text_judge_qa_dev.json``: ROC AUC of both
decision scores (min of the two estimates: the build's rule for positives; max: its rule for negatives and the
mining filter's ``either``); at each use's shipped threshold (``lexical.textjudge.THRESHOLDS``: positives,
negatives, mining) the false-rejection rate (answer pages judged not answerable: a given positive dropped, or a
false negative kept by the mining filter) and the false-acceptance rate (other pages judged answerable: a wrong
positive kept, or a good page removed); and both rates over a sweep of thresholds, the measurement the
thresholds were set from. Pages without a text layer score 0.5 and are reported apart. The two halves of the
documents (by a hash of the file name) are reported too: the judge was designed on half 0.

``--mined DIR ...``: outputs of ``jobs.mine_negatives`` on the dev set's questions (a query-page set of its
given positives, ``pages=`` the ingested dev set), e.g. one with ``filter.engine=none`` and one per threshold.
For each, the share of queries with k mined negatives and how many mined negatives are labelled answer pages of
their own question (false negatives kept), and of the pages the filter removed, how many were answer pages.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))


def auc(pos: list[float], neg: list[float]) -> float:
    """ROC AUC: the probability that a positive scores above a negative (ties count half)."""
    s = sorted(neg)
    wins = sum(bisect.bisect_left(s, p) + 0.5 * (bisect.bisect_right(s, p) - bisect.bisect_left(s, p)) for p in pos)
    return wins / (len(pos) * len(neg))


SWEEP = (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7)
RULE_OF = {"positive": "min", "negative": "max", "mine": "max"}  # both >= thr / either >= thr


def errors(pos: list[float], neg: list[float], threshold: float) -> dict:
    """False-rejection rate (answer pages below the threshold) and false-acceptance rate (others at or above)."""
    return {"false_rejection_rate": round(sum(p < threshold for p in pos) / len(pos), 4),
            "false_acceptance_rate": round(sum(p >= threshold for p in neg) / len(neg), 4)}


def rates(rows: list[tuple[bool, float, float]], thresholds: dict) -> dict:
    """AUC of both decision scores, the error rates at each use's threshold and over ``SWEEP``, over
    (is_answer_page, p_a, p_b) rows."""
    out = {"answer_pages": sum(r[0] for r in rows), "other_pages": sum(not r[0] for r in rows)}
    scores = {}
    for name, f in (("min", min), ("max", max)):
        pos = [f(a, b) for y, a, b in rows if y]
        neg = [f(a, b) for y, a, b in rows if not y]
        scores[name] = (pos, neg)
        out[name] = {"auc": round(auc(pos, neg), 4), "sweep": {str(t): errors(pos, neg, t) for t in SWEEP}}
    out["operating_points"] = {use: {"threshold": t, "score": RULE_OF[use], **errors(*scores[RULE_OF[use]], t)}
                               for use, t in thresholds.items()}
    return out


def mined_false_negatives(mine_dir: Path, page_of: dict, relevant: dict) -> dict:
    """Labelled false negatives among a mining run's negatives (see the module doc). ``page_of``: page_id ->
    (file name, page number); ``relevant``: (file name, question) -> its answer pages (numbered from 1)."""
    import pyarrow.dataset as pads

    stats = json.loads((mine_dir / "mining_stats.json").read_text())
    rows = pads.dataset(str(mine_dir / "mining_status"), format="parquet").to_table().to_pylist()
    out = {"filter": stats["settings"].get("filter"), "queries": len(rows), "complete": 0, "negatives": 0,
           "negatives_answer_pages": 0, "removed": 0, "removed_answer_pages": 0}
    for r in rows:
        doc = page_of[r["page_id"]][0]
        answers = relevant[(doc, r["query"])]
        out["complete"] += r["status"] == "complete"
        out["negatives"] += len(r["negatives"])
        out["negatives_answer_pages"] += sum(page_of[p] in answers for p in r["negatives"])
        out["removed"] += len(r["false_negatives"])
        out["removed_answer_pages"] += sum(page_of[p] in answers for p in r["false_negatives"])
    out["false_negative_rate"] = round(out["negatives_answer_pages"] / max(1, out["negatives"]), 4)
    return out


def main() -> int:
    """Score every (question, page of its document) pair; write the result file."""
    import pyarrow.dataset as pads

    from docrerank.lexical.textjudge import THRESHOLDS, judge_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", required=True, help="pages table of the ingested dev set")
    shared = Path(os.environ.get("DOCRERANK_SHARED", REPO.parent / "shared"))  # a worktree sets it
    ap.add_argument("--qa-dev", default=str(shared / "data" / "qa_dev"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "text_judge_qa_dev.json"))
    ap.add_argument("--mined", nargs="*", default=[], help="mining outputs on the dev set's questions (module doc)")
    args = ap.parse_args()
    t = pads.dataset(args.pages, format="parquet").to_table(
        columns=["page_id", "source_uri", "page_number", "text"]).to_pylist()
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
        "metric": "text_judge_qa_dev", "unit": "ROC AUC / rates", "thresholds": THRESHOLDS,
        "questions": len(queries), "pairs_with_text": len(rows), "pairs_without_text": no_text,
        "all": rates(rows, THRESHOLDS), "half0_design": rates(halves[0], THRESHOLDS),
        "half1_check": rates(halves[1], THRESHOLDS),
        "baseline": 0.5, "value": None, "ratio": None,  # baseline: chance (AUC of a judge that cannot tell)
        "device": "CPU", "command": "python bench/judge_qa_dev.py --pages " + args.pages,
        "date": dt.date.today().isoformat(),
    }
    if args.mined:
        page_of = {r["page_id"]: (r["source_uri"].rsplit("/", 1)[-1], r["page_number"]) for r in t}
        relevant = {(q["pdf"].rsplit("/", 1)[-1], q["query"]): {(q["pdf"].rsplit("/", 1)[-1], p + 1)
                                                                for p in q["relevant_pages"]} for q in queries}
        result["mining"] = [mined_false_negatives(Path(d), page_of, relevant) for d in args.mined]
        result["command"] += " --mined " + " ".join(args.mined)
    result["value"] = result["all"]["max"]["auc"]
    result["ratio"] = round(result["value"] / result["baseline"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for part in ("all", "half0_design", "half1_check"):
        r = result[part]
        print(f"{part}: AUC min {r['min']['auc']} max {r['max']['auc']}; " + "; ".join(
            f"{u} at {o['threshold']} ({o['score']}): FRR {o['false_rejection_rate']} FAR {o['false_acceptance_rate']}"
            for u, o in r["operating_points"].items()))
    print("pairs without text:", result["pairs_without_text"])
    for m in result.get("mining", []):
        print("mining", json.dumps(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
