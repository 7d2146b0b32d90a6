"""The dataset card: what was built, how, the funnel, and examples a person can read."""

from __future__ import annotations

import json

from docrerank.core import storage
from docrerank.core.runtime import format_table


def _examples(out: storage.Location, n: int = 4) -> list[dict]:
    import pyarrow.parquet as pq

    files = storage.list_files(out.join("export"), suffixes=(".parquet",))
    rows = []
    for f in files:
        rows += pq.read_table(f, columns=["positive_queries", "negative_queries"], filesystem=out.fs).to_pylist()
        if len(rows) >= n:
            break
    return rows[:n]


def funnel_table(stats: dict) -> str:
    """The build's funnel (pages, positives, negatives, groups) as a text table."""
    p, n = stats["positives"], stats["negatives"]
    rows = [
        ["pages processed", stats["pages"]["processed"]],
        ["  complete (k negatives)", stats["pages"].get("complete", 0)],
        ["  incomplete (fewer)", stats["pages"].get("incomplete", 0)],
        ["  no positive kept", stats["pages"].get("no_positive", 0)],
        ["positive candidates", p["candidates"]],
        ["positives kept", p["kept"]],
        ["negative candidates", n["candidates"]],
        ["  after dedup", n["after_dedup"]],
        ["  verified not answerable", n["verified"]],
        ["  kept (selected)", n["kept"]],
        ["training groups", stats["groups"]],
        ["  held out (not for training)", stats.get("heldout_groups", 0)],
        ["training examples", stats["examples"]],
    ]
    return format_table(["funnel", "count"], rows)


def attribute_table(stats: dict) -> str:
    """Negatives by attribute through the funnel, as a text table."""
    rows = [[a, c.get("candidates", 0), c.get("after_dedup", 0), c.get("verified", 0), c.get("kept", 0)]
            for a, c in stats["by_attribute"].items()]
    return format_table(["attribute", "candidates", "after dedup", "verified", "kept"], rows)


def rules_table(stats: dict) -> str | None:
    """What the ``rules`` engine left unchanged, by attribute and reason (None when it ran without refusals)."""
    m = stats.get("stages", {}).get("negatives", {})
    rows = sorted(((k.split(":", 1)[1], round(v)) for k, v in m.items() if k.startswith("rules:") and round(v)),
                  key=lambda r: -r[1])
    return format_table(["rules: not changed (attribute:reason)", "spans"], [list(r) for r in rows]) if rows else None


def positives_line(cfg) -> str:
    """How the card describes the positives: their engine, whether given ones were re-verified, the limit."""
    if cfg.positives.engine == "given" or cfg.query_pages:
        how = "re-verified by the judge" if cfg.verify.reverify_given else "not re-verified (they start at the negatives)"
        return f"- positives: given, {how}"
    e = cfg.positives.engine
    return f"- positives: {e.backend}: {e.model}, verified (up to {cfg.verify.max_positives} kept per page)"


def write_card(out: storage.Location, cfg, stats: dict) -> None:
    """Write ``card.md``."""
    from docrerank.build.stages import verify_threshold
    from docrerank.core.runtime import redact

    conf = redact(cfg.model_dump(mode="json"))
    engines = {k: (conf[k]["engine"] if isinstance(conf[k]["engine"], str) else
                   f"{conf[k]['engine']['backend']}: {conf[k]['engine']['model']}")
               for k in ("positives", "verify", "negatives", "rephrase")}
    lines = [
        "# Dataset card", "",
        "Hard negative query data for training multimodal rerankers, built by docrerank "
        "(single-page hard negative query generation, DocReRank).", "",
        "## How it was built", "",
        f"- source: `{cfg.input or cfg.pages or cfg.query_pages}`",
        positives_line(cfg),
        f"- verification: {engines['verify']}, two prompts, thresholds {verify_threshold(cfg, 'positive')} for "
        f"positives (both >=) and {verify_threshold(cfg, 'negative')} for negatives (both <); text pre-filter: "
        f"{cfg.verify.prefilter}",
        f"- negatives: {engines['negatives']}, mode `{cfg.negatives.mode}`, {cfg.negatives.num_candidates} per positive",
        f"- selection: {cfg.select.k} per positive, strategy `{cfg.select.strategy}`, seed {cfg.seed}",
        f"- rephrasing: {engines['rephrase']}", "",
        "## Funnel", "", "```", funnel_table(stats), "```", "",
        "## Negatives by attribute", "", "```", attribute_table(stats), "```", "",
        "Rejections by reason: positives " + json.dumps(stats["positives"]["rejected_by_reason"]) +
        "; negatives " + json.dumps(stats["negatives"]["rejected_by_reason"]), "",
        *(["## What the rules engine did not change", "",
           "Spans of the positives it could not type, or for which the corpus had no other value of the same "
           "type (or only values the page shows):", "", "```", rules_table(stats), "```", ""]
          if rules_table(stats) else []),
        "## Examples", "",
    ]
    for r in _examples(out):
        for pos, negs in zip(r["positive_queries"], r["negative_queries"]):
            lines.append(f"- positive: {pos}")
            lines += [f"  - negative: {n}" for n in negs]
    lines += [
        "", "## Files", "",
        "- `examples/`: groups of 1 positive + k negatives on the same page (`group_id`, `query`, `page_id`, "
        "`image`, `label`, `kind`, `attribute`); a group is never split across shards",
        "- `export/`: the published ColHNQue layout (`image`, `positive_queries`, `negative_queries`, `answer`)",
        "- `queries/`: every candidate with both verifier scores, verdict and reason",
        "- `page_status/`, `stats.json`: per-page outcome and the funnel; `_meta/`: resolved config and commit", "",
        "## Limits", "",
        "Verifiers make mistakes: the paper's human check still found about 8% false negatives among verified "
        "negatives. The model-free engines (`rules`, `text`) are lexical: they cannot read charts or scanned "
        "pages, and the text judge only sees the text layer.", "",
    ]
    storage.write_bytes_atomic(out.join("card.md"), "\n".join(lines).encode())
