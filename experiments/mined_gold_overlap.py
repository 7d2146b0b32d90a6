"""False negatives among mined negatives, against a QA set's own relevance labels.

For every mined group (``mine_negatives`` output: one query, its positive page, the mined negative pages), count the
negative pages that are a labelled answer page of the query (same document, page listed in ``relevant_pages``,
0-based in the dev set; page ids are 1-based). Unlabelled answer pages cannot be counted: this is a lower bound.

    python experiments/mined_gold_overlap.py --questions ../shared/data/qa_dev/queries.jsonl \
        --pdfs ../shared/data/qa_dev/pdfs --mined <twins work>/build/mined [--mined ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

from docrerank.core.schema import doc_id_of, doc_of_page  # noqa: E402


def page_index(page_id: str) -> int:
    """The 0-based page index of a page id (ids carry the 1-based page number)."""
    return int(page_id.rsplit("-p", 1)[1]) - 1


def overlap(mined: str, docs: dict[str, str], gold: dict[tuple[str, str], set[int]]) -> dict:
    """Counts for one mined output: groups, negatives, negatives from the query's own document, labelled answers."""
    import pyarrow.dataset as pads

    groups = defaultdict(list)
    for r in pads.dataset(mined).to_table(columns=["group_id", "query", "page_id", "kind"]).to_pylist():
        groups[r["group_id"]].append(r)
    out = {"groups": len(groups), "unlabelled_groups": 0, "negatives": 0, "same_document": 0, "labelled_answers": 0}
    for rows in groups.values():
        pos = next(r for r in rows if r["kind"] == "positive")
        key = (pos["query"].strip(), docs.get(doc_of_page(pos["page_id"]), ""))
        if page_index(pos["page_id"]) not in gold.get(key, ()):
            out["unlabelled_groups"] += 1  # not a question of the set (or its positive is not a labelled page)
            continue
        for r in rows:
            if r["kind"] == "positive":
                continue
            same = docs.get(doc_of_page(r["page_id"])) == key[1]
            out["negatives"] += 1
            out["same_document"] += same
            out["labelled_answers"] += same and page_index(r["page_id"]) in gold[key]
    out["labelled_answer_share"] = round(out["labelled_answers"] / max(1, out["negatives"]), 4)
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", required=True, help="JSONL: query, pdf (pdfs/<name>), relevant_pages (0-based)")
    ap.add_argument("--pdfs", required=True, help="the directory of the set's PDFs")
    ap.add_argument("--mined", action="append", required=True, help="a mined/ directory (repeatable)")
    args = ap.parse_args(argv)
    docs = {doc_id_of(p.read_bytes()): f"pdfs/{p.name}" for p in Path(args.pdfs).glob("*.pdf")}
    gold: dict[tuple[str, str], set[int]] = defaultdict(set)
    for line in Path(args.questions).read_text().splitlines():
        q = json.loads(line)
        gold[(q["query"].strip(), q["pdf"])] |= set(q["relevant_pages"])
    results = [{"mined": m, **overlap(m, docs, gold)} for m in args.mined]
    for r in results:
        print(json.dumps(r))
    return results


if __name__ == "__main__":
    main()
