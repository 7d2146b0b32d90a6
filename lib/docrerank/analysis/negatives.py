"""Hardness and diversity of negatives, measured: generated vs document-mined negatives (and generated ones per
attribute) compared on MiniLM embeddings and, optionally, on the scores of a reranker before training.

Per negative (``q+``/``p+`` the positive's query and page, ``q``/``p`` the negative example's query and page; cos
on all-MiniLM-L6-v2 embeddings, a page embedded from its text layer, first 256 word pieces):

- ``sim_to_positive``: how close the negative is to its positive on the side that differs: cos(q, q+) for a
  negative on the positive's page (generated: another query), cos(text(p), text(p+)) for a negative on another page
  (mined: another page). The two kinds compare different things: read it within a kind.
- ``margin`` (the headline, comparable across kinds): cos(q+, p+) - cos(q, p), how much closer the positive pair
  is than the negative pair (generated: (negative query, the page); mined: (the query, the negative page)).
  Smaller = harder; below 0 the negative pair looks more relevant than the positive one.
- ``spread``: within a group, the mean pairwise cosine distance (1 - cos) among its negatives of one kind, on
  the side that differs, averaged over groups: 0 = identical negatives, higher = more diverse.
- ``score`` (with a scorer): mean score of positives and negatives and the fraction of negatives scoring above
  their own group's positive (strictly), for a reranker before training.

Pages without a text layer are left out of the page-side measures. Pure Python + numpy, no Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

SECTION = "## Negatives: hardness and diversity"
READ_COLUMNS = ["group_id", "query", "page_id", "text", "label", "kind", "attribute"]
Scorer = Callable[[list[str], list[dict]], Sequence[float]]


# ------------------------------------------------------------------------------------------- reading
def sample_groups(uri: str, max_groups: int, seed: int = 0, images: bool = False) -> tuple[list[list[dict]], int]:
    """(rows of each sampled group, groups in the source): at most ``max_groups`` groups, a seeded sample in file
    order; only the row groups holding them are read (images only when ``images``)."""
    import pyarrow.parquet as pq

    from docrerank.core import storage
    from docrerank.data.mix import scan_source

    chunks = scan_source(uri, chunk_groups=64)
    ids = [(k, g) for k, c in enumerate(chunks) for g in c.group_ids]
    # seeded by the data, not its path: the same groups copied elsewhere give the same sample (and table)
    content = hashlib.sha1("\n".join(g for _, g in ids).encode()).hexdigest()
    pick = sorted(random.Random(f"{seed}/{content}").sample(range(len(ids)), min(max_groups, len(ids))))
    wanted: dict[int, list[str]] = {}
    for i in pick:
        wanted.setdefault(ids[i][0], []).append(ids[i][1])
    out = []
    for k, gids in wanted.items():
        loc = storage.resolve(chunks[k].uri)
        pf = pq.ParquetFile(loc.path, filesystem=loc.fs)
        cols = [c for c in READ_COLUMNS + (["image", "image_format"] if images else []) if c in pf.schema_arrow.names]
        rows_of: dict[str, list[dict]] = {g: [] for g in gids}
        for r in pf.read_row_groups(chunks[k].row_groups, columns=cols).to_pylist():
            if r["group_id"] in rows_of:
                rows_of[r["group_id"]].append(r)
        out += [rows_of[g] for g in gids]
    return out, len(ids)


# ------------------------------------------------------------------------------------------- measures
def summarise(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, median, p10, p90 of the finite values (None when there are none)."""
    import numpy as np

    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None}
    p10, med, p90 = np.percentile(v, [10, 50, 90])  # type: ignore[misc]  # an array of three
    return {"n": len(v), "mean": float(v.mean()), "median": float(med), "p10": float(p10), "p90": float(p90)}


def mean_pairwise_distance(vectors) -> float:
    """Mean cosine distance (1 - cos) over the pairs of unit ``vectors``; nan for fewer than two."""
    import numpy as np

    n = len(vectors)
    if n < 2:
        return math.nan
    m = np.asarray(vectors, dtype=np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)  # float32 unit rows are not quite unit in float64
    dist = np.clip(1.0 - (m @ m.T)[np.triu_indices(n, k=1)], 0.0, 2.0)
    return float(np.mean(dist))


def _split(rows: list[dict]) -> tuple[dict, list[dict]] | None:
    pos = [r for r in rows if int(r["label"]) == 1]
    negs = [r for r in rows if int(r["label"]) == 0]
    return (pos[0], negs) if len(pos) == 1 and negs else None


def analyse_groups(groups: list[list[dict]], embedder, scorer: Scorer | None = None,
                   batch_size: int = 64) -> dict[str, Any]:
    """The measures of the module docstring for groups given as their example rows (``query``, ``page_id``,
    ``text``, ``label``, ``kind``, ``attribute``; ``image``/``image_format`` for a vlm scorer), per negative kind
    and, within a kind, per attribute. Groups without exactly one positive and a negative are skipped (counted)."""
    import numpy as np

    split = [s for s in (_split(g) for g in groups) if s is not None]
    page_text = {r["page_id"]: (r.get("text") or "") for pos, negs in split for r in [pos, *negs]}
    strings = sorted({r["query"] for pos, negs in split for r in [pos, *negs]} | set(page_text.values()))
    vecs = embedder.embed(strings, batch_size=batch_size) if strings else np.zeros((0, 1), np.float32)
    index = {s: i for i, s in enumerate(strings)}

    def q_vec(r):
        return vecs[index[r["query"]]]

    def p_vec(r):
        text = page_text[r["page_id"]]
        return vecs[index[text]] if text.strip() else None

    def cos(a, b) -> float:
        return math.nan if a is None or b is None else float(np.dot(a, b))

    scores: list[float] | None = None
    if scorer is not None:  # one call: the scorer batches, and encodes each distinct query and page once
        rows = [r for pos, negs in split for r in [pos, *negs]]
        pages = [{"page_id": r["page_id"], "image": r.get("image"), "image_format": r.get("image_format"),
                  "text": r.get("text") or ""} for r in rows]
        scores = [float(x) for x in scorer([r["query"] for r in rows], pages)] if rows else []
        if len(scores) != len(rows):
            raise ValueError(f"scorer: expected {len(rows)} scores, got {len(scores)}")
    per: dict[str, dict[str, Any]] = {}
    at = 0
    for pos, negs in split:
        pos_qp = cos(q_vec(pos), p_vec(pos))
        pos_score = scores[at] if scores is not None else None
        group_kinds: dict[str, list] = {}
        for j, n in enumerate(negs):
            kind = n.get("kind") or "unknown"
            rec = per.setdefault(kind, {"groups": set(), "sides": set(), "sim": [], "qp_neg": [], "qp_pos": [],
                                        "margin": [], "spread": [], "pos_scores": [], "neg_scores": [], "above": [],
                                        "attrs": {}})
            same_page = n["page_id"] == pos["page_id"]
            side_vec = q_vec(n) if same_page else p_vec(n)
            sim = cos(q_vec(n), q_vec(pos)) if same_page else cos(p_vec(n), p_vec(pos))
            margin = pos_qp - cos(q_vec(n), p_vec(n))
            if id(pos) not in rec["groups"]:
                rec["groups"].add(id(pos))
                rec["qp_pos"].append(pos_qp)
                if scores is not None:
                    rec["pos_scores"].append(pos_score)
            rec["sides"].add("query" if same_page else "page")
            rec["sim"].append(sim)
            rec["qp_neg"].append(cos(q_vec(n), p_vec(n)))
            rec["margin"].append(margin)
            if scores is not None:
                s = scores[at + 1 + j]
                rec["neg_scores"].append(s)
                rec["above"].append(1.0 if s > pos_score else 0.0)
            attr = rec["attrs"].setdefault(n.get("attribute") or "none", {"sim": [], "margin": [], "above": []})
            attr["sim"].append(sim)
            attr["margin"].append(margin)
            if scores is not None:
                attr["above"].append(rec["above"][-1])
            if side_vec is not None:
                group_kinds.setdefault(kind, []).append(side_vec)
        for kind, vs in group_kinds.items():
            if len(vs) >= 2:
                per[kind]["spread"].append(mean_pairwise_distance(vs))
        at += 1 + len(negs)
    by_kind = {}
    for kind, rec in sorted(per.items()):
        out: dict[str, Any] = {
            "groups": len(rec["groups"]), "negatives": len(rec["sim"]),
            "compares": "+".join(sorted(rec["sides"])),
            "sim_to_positive": summarise(rec["sim"]), "margin": summarise(rec["margin"]),
            "query_page_sim_positive": summarise(rec["qp_pos"]), "query_page_sim_negative": summarise(rec["qp_neg"]),
            "spread": summarise(rec["spread"]),
        }
        if scores is not None:
            out["score"] = {"positive_mean": float(np.mean(rec["pos_scores"])),
                            "negative_mean": float(np.mean(rec["neg_scores"])),
                            "negative_above_positive": float(np.mean(rec["above"])), "negatives": len(rec["above"])}
        if set(rec["attrs"]) != {"none"}:
            out["by_attribute"] = {
                a: {"negatives": len(v["sim"]), "sim_to_positive": summarise(v["sim"]), "margin": summarise(v["margin"]),
                    **({"negative_above_positive": float(np.mean(v["above"]))} if v["above"] else {})}
                for a, v in sorted(rec["attrs"].items())}
        by_kind[kind] = out
    return {"groups": len(split), "skipped_groups": len(groups) - len(split), "by_kind": by_kind}


DEFINITIONS = {
    "sim_to_positive": "cos(negative query, positive query) for a negative on the positive's page (generated); "
                       "cos(negative page text, positive page text) for a negative on another page (mined)",
    "margin": "cos(q+, p+) - cos(q, p): the positive pair's query-page similarity minus the negative pair's "
              "(generated: negative query and the page; mined: the query and the negative page); smaller = harder",
    "spread": "mean pairwise cosine distance among a group's negatives of one kind (on the side that differs), "
              "averaged over groups with at least two",
    "score": "a reranker's scores before training: mean over positives and negatives, and the fraction of "
             "negatives scoring above their group's positive",
    "embedding": "all-MiniLM-L6-v2, mean pooling, L2-normalised; pages by their text layer (first 256 word "
                 "pieces); pages without text are left out of page-side measures",
}


def analyse_examples(uris: dict[str, str] | Sequence[str], embedder, scorer: Scorer | None = None,
                     max_groups: int = 500, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """``analyse_groups`` over a seeded sample of at most ``max_groups`` groups of each examples source
    (``uris``: name -> uri, or uris named by themselves), with per-source counts and the definitions."""
    named = dict(uris) if isinstance(uris, dict) else {u: u for u in uris}
    if not named:
        raise ValueError("analyse_examples: expected at least one examples uri, got none")
    groups, sources = [], {}
    for name, uri in named.items():
        got, total = sample_groups(uri, max_groups, seed, images=scorer is not None)
        groups += got
        sources[name] = {"uri": uri, "groups_total": total, "groups_analysed": len(got)}
    result = analyse_groups(groups, embedder, scorer, batch_size)
    return {"sources": sources, **result, "definitions": DEFINITIONS}


# ------------------------------------------------------------------------------------------- reporting
def _f(x: float | None, digits: int = 3) -> str | None:
    return None if x is None else f"{x:.{digits}f}"


def analysis_rows(result: dict[str, Any]) -> tuple[list[str], list[list]]:
    """(header, rows) of the summary table: one row per kind, then one per attribute of a kind."""
    scored = any("score" in k for k in result["by_kind"].values())
    header = ["negatives", "n", "compares", "sim to pos", "margin", "margin p10", "spread"]
    header += ["score pos", "score neg", "neg > pos"] if scored else []
    rows = []
    for kind, k in result["by_kind"].items():
        row = [kind, k["negatives"], k["compares"], _f(k["sim_to_positive"]["mean"]), _f(k["margin"]["mean"]),
               _f(k["margin"]["p10"]), _f(k["spread"]["mean"])]
        if scored:
            s = k.get("score") or {}
            row += [_f(s.get("positive_mean")), _f(s.get("negative_mean")), _f(s.get("negative_above_positive"))]
        rows.append(row)
        for a, v in (k.get("by_attribute") or {}).items():
            row = [f"  {kind}/{a}", v["negatives"], "", _f(v["sim_to_positive"]["mean"]), _f(v["margin"]["mean"]),
                   _f(v["margin"]["p10"]), ""]
            rows.append(row + (["", "", _f(v.get("negative_above_positive"))] if scored else []))
    return header, rows


def format_analysis(result: dict[str, Any]) -> str:
    """The summary table (``runtime.format_table``)."""
    from docrerank.core.runtime import format_table

    header, rows = analysis_rows(result)
    return format_table(header, rows)


def card_section(result: dict[str, Any]) -> str:
    """The dataset card section (markdown, starting with its ``## `` heading)."""
    sources = ", ".join(f"`{s['uri']}` ({s['groups_analysed']} of {s['groups_total']} groups)"
                        for s in result["sources"].values())
    defs = "\n".join(f"- {k}: {v}" for k, v in result["definitions"].items())
    return (f"{SECTION}\n\nHow close each negative is to its positive, and how different a group's negatives are, "
            f"measured on {sources}. Margin is the headline: smaller = harder.\n\n```\n{format_analysis(result)}\n"
            f"```\n\n{defs}\n")


def replace_section(card: str, section: str, heading: str = SECTION) -> str:
    """``card`` with its ``heading`` section (up to the next ``## `` heading) replaced by ``section``, or with
    ``section`` appended; idempotent."""
    lines = card.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return card.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")


def write_outputs(result: dict[str, Any], output: str) -> list[str]:
    """Write ``negatives_analysis.json`` to ``output``; a build output (with card.md) also gets its card section
    and the ``negatives_analysis`` key of stats.json. Returns the URIs written."""
    from docrerank.core import runtime, storage

    out = storage.resolve(output)
    written = [out.join("negatives_analysis.json")]
    runtime.write_json(written[0], result)
    card = out.join("card.md")
    if storage.exists(card):
        for name in ("card.md", "README.md"):  # README.md: the same card with its Hub front matter
            loc = out.join(name)
            if storage.exists(loc):
                text = storage.read_bytes(loc).decode()
                storage.write_bytes_atomic(loc, replace_section(text, card_section(result)).encode())
                written.append(loc)
        stats_loc = out.join("stats.json")
        stats = json.loads(storage.read_bytes(stats_loc)) if storage.exists(stats_loc) else {}
        stats["negatives_analysis"] = result
        runtime.write_json(stats_loc, stats)
        written.append(stats_loc)
    return [w.uri for w in written]
