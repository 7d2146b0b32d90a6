"""Build a hard-negative dataset from the dev set's real documents and human questions (model-free engines), and
report the funnel of the given positives and a seeded sample of kept negatives.

    python bench/build_qa_dev.py --pages /tmp/qa_dev/pages --output /tmp/qa_dev_build [--qa-dev ../shared/data/qa_dev]

``--pages``: the dev set's PDFs ingested by ``jobs.ingest`` (see ``bench/judge_qa_dev.py``). The questions
(``queries.jsonl``, 0-based ``relevant_pages``) become the build's ``positives_file``: one positive per
relevant page (``doc`` = file name, ``page_number`` = page + 1, the pages table numbers from 1), since each
labelled page answers the question. Then ``jobs.build_dataset`` runs with ``pages=`` and ``positives_file=``
(extra ``key=value`` arguments go to it), and this prints and writes ``<output>/qa_dev_report.json``: given
positives, how many reached the negatives stage, how many got k negatives, negatives by attribute, what the
rules engine left unchanged, and 30 kept negatives with their positives (seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_positives(qa_dev: Path, out: Path) -> int:
    """The dev set's questions as a positives file (one row per relevant page); returns the row count."""
    rows = []
    for line in (qa_dev / "queries.jsonl").read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            rows += [{"doc": q["pdf"].rsplit("/", 1)[-1], "page_number": p + 1, "question": q["query"],
                      "answer": str(q.get("answer", ""))} for p in q["relevant_pages"]]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def report(output: Path, k: int, n_sample: int = 30, seed: int = 0) -> dict:
    """The given positives' funnel and a seeded sample of kept negatives, from the build's output."""
    import pyarrow.dataset as pads

    q = pads.dataset(str(output / "queries"), format="parquet").to_table(
        columns=["query_id", "text", "role", "origin", "parent_id", "attribute", "verdict", "reason"]).to_pylist()
    pos = {r["query_id"]: r for r in q if r["role"] == "positive" and r["origin"] == "given"}
    negs = [r for r in q if r["role"] == "negative"]
    kept = Counter(r["parent_id"] for r in negs if r["verdict"] == "kept")
    candidates = Counter(r["parent_id"] for r in negs)
    reached = [p for p in pos if candidates[p] or pos[p]["verdict"] == "kept" or "too_few_negatives" in
               (pos[p]["reason"] or "")]
    stats = json.loads((output / "stats.json").read_text())
    rules = {k_.split(":", 1)[1]: round(v) for k_, v in stats.get("stages", {}).get("negatives", {}).items()
             if k_.startswith("rules:")}
    sample = [r for r in negs if r["verdict"] == "kept"]
    random.Random(seed).shuffle(sample)
    out = {
        "given_positives": len(pos),
        "reached_negatives_stage": len(reached),
        "with_candidates": sum(1 for p in pos if candidates[p]),
        "with_k_negatives": sum(1 for p in pos if kept[p] >= k),
        "with_some_negatives": sum(1 for p in pos if kept[p]),
        "kept_positives": sum(1 for p in pos.values() if p["verdict"] == "kept"),
        "negatives_by_attribute": stats.get("by_attribute"),
        "negatives_rejected_by_reason": stats["negatives"]["rejected_by_reason"],
        "rules_not_changed": dict(sorted(rules.items(), key=lambda x: -x[1])),
        "sample": [{"positive": pos[r["parent_id"]]["text"], "negative": r["text"], "attribute": r["attribute"]}
                   for r in sample[:n_sample] if r["parent_id"] in pos],
    }
    return out


def main() -> int:
    """Write the positives file, run the build, print and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", required=True, help="pages table of the ingested dev set")
    ap.add_argument("--output", required=True, help="build output directory")
    shared = Path(os.environ.get("DOCRERANK_SHARED", REPO.parent / "shared"))  # a worktree sets it
    ap.add_argument("--qa-dev", default=str(shared / "data" / "qa_dev"))
    ap.add_argument("--k", type=int, default=3, help="select.k of the build")
    args, extra = ap.parse_known_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    n = write_positives(Path(args.qa_dev), out / "qa_dev_positives.jsonl")
    print(f"{n} given positives (one per relevant page) -> {out / 'qa_dev_positives.jsonl'}")
    cmd = [sys.executable, "-m", "jobs.build_dataset", f"output={out}", f"pages={args.pages}",
           f"positives_file={out / 'qa_dev_positives.jsonl'}", f"select.k={args.k}", "select.strategy=diverse", *extra]
    print(" ".join(cmd))
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        return 1
    rep = report(out, args.k)
    (out / "qa_dev_report.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(json.dumps({k: v for k, v in rep.items() if k != "sample"}, indent=1))
    for s in rep["sample"]:
        print(f"- [{s['attribute']}] {s['negative']}\n    (positive: {s['positive']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
