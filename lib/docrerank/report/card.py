"""The dataset card: what was built, how, the funnel, and examples a person can read.

``write_card`` writes it twice with the same body: ``card.md`` and ``README.md``, a Hugging Face dataset card whose
YAML front matter (``front_matter``) declares one config per example table present (``export``, ``examples`` with
a ``test`` split for the held-out documents, ``mined`` after the mining job) with its ``data_files`` and features,
the page ``image`` as an ``Image`` feature. ``datasets.load_dataset(<output>, "examples")`` then decodes the pages
to PIL images with no code on the user's side; the Parquet files keep their plain binary column. The license is
left for the user (a commented line, or ``license=`` of ``jobs.push_to_hub``).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from docrerank.core import storage
from docrerank.core.runtime import format_table

# Hub configs of a build output: (config name, split, table directory). A config is declared when its directory
# holds Parquet files; mining writes mined/ into the build output later (the front matter is re-rendered on push).
HUB_TABLES = (
    ("export", "train", "export"),
    ("examples", "train", "examples"),
    ("examples", "test", "examples_heldout"),
    ("mined", "train", "mined"),
    ("mined", "test", "mined_heldout"),
)
TASK_CATEGORIES = ["visual-document-retrieval", "text-ranking"]


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


def requests_table(stats: dict) -> str | None:
    """Model requests per stage: sent, answered, failed by error kind, tokens, seconds (None when no stage called a
    model, e.g. the model-free local default)."""
    rows = []
    for stage, m in stats.get("stages", {}).items():
        if not m.get("requests"):
            continue
        errors = {k.split(":", 1)[1]: round(v) for k, v in m.items() if k.startswith("error:") and round(v)}
        failed = sum(errors.values())
        rows.append([stage, round(m["requests"]), round(m["requests"]) - failed,
                     ", ".join(f"{k} {v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])) or "-",
                     round(m.get("prompt_tokens", 0)), round(m.get("completion_tokens", 0)), m.get("seconds", 0)])
    return format_table(["stage", "requests", "answered", "failed (by kind)", "prompt tokens", "output tokens",
                         "seconds"], rows) if rows else None


def pools_table(stats: dict) -> str | None:
    """The model pools: model, actors, load time, requests by stage, calls and engine runs (None without pools)."""
    rows = [[p["pool"], f"{p['backend']} {p['model']}", p["actors"], ", ".join(f"{s:.0f}" for s in p.get("load_s", [])),
             ", ".join(f"{k} {v}" for k, v in p.get("requests", {}).items()), p.get("calls", 0),
             p.get("engine_runs", 0), p.get("busy_s", 0)] for p in stats.get("pools") or []]
    return format_table(["pool", "model", "actors", "load s", "requests", "calls", "engine runs", "busy s"],
                        rows) if rows else None


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


def hf_feature(name: str, arrow_type) -> dict:
    """One column as a ``dataset_info.features`` YAML entry of the ``datasets`` library: ``image`` (binary page
    bytes) becomes an ``Image`` feature, lists nest as ``list:``, other types keep their Arrow name."""
    import pyarrow as pa

    def dtype(t) -> Any:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            inner = dtype(t.value_type)
            return {"list": inner if isinstance(inner, str) else inner}
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "binary"
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return str(t)  # int8, int32, int64, float, double: the datasets Value names
        raise TypeError(f"column {name!r}: no datasets feature for Arrow type {t}")

    if name == "image" and (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)):
        return {"name": name, "dtype": "image"}
    d = dtype(arrow_type)
    return {"name": name, **({"dtype": d} if isinstance(d, str) else d)}


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def hub_configs(out: storage.Location) -> list[dict]:
    """The example tables present under ``out`` (see ``HUB_TABLES``) as ``[{"config_name", "data_files": [{"split",
    "path"}], "features", "splits": [{"name", "num_bytes", "num_examples"}]}]``; rows from the Parquet footers.

    ``datasets`` checks each split's ``num_examples`` when it loads (a card that no longer matches its files fails
    loudly) and keys its cache on this block, so ``num_bytes`` (here the Parquet bytes, not the Arrow size) makes a
    rebuilt folder load afresh instead of from the cache of the previous build."""
    import pyarrow.parquet as pq

    configs: dict[str, dict] = {}
    for config, split, table in HUB_TABLES:
        files = storage.list_files(out.join(table), suffixes=(".parquet",))
        if not files:
            continue
        c = configs.setdefault(config, {"config_name": config, "data_files": [], "features": None, "splits": []})
        c["data_files"].append({"split": split, "path": f"{table}/*.parquet"})
        if c["features"] is None:
            schema = pq.read_schema(files[0], filesystem=out.fs)
            c["features"] = [hf_feature(f.name, f.type) for f in schema]
        rows = sum(pq.read_metadata(f, filesystem=out.fs).num_rows for f in files)
        size = sum(info.size for info in out.fs.get_file_info(files))
        c["splits"].append({"name": split, "num_bytes": size, "num_examples": rows})
    return list(configs.values())


def front_matter(out: storage.Location, n_examples: int, license: Optional[str] = None,
                 pretty_name: str = "docrerank hard negative queries") -> str:
    """The dataset card's YAML block (with its ``---`` lines): configs and features of the tables present, task
    categories, size, tags; ``license`` when given, else a commented line for the user to fill in."""
    import yaml

    configs = hub_configs(out)
    meta: dict = {"pretty_name": pretty_name}
    if license:
        meta["license"] = license
    meta.update({"task_categories": TASK_CATEGORIES, "tags": ["docrerank", "hard-negatives", "reranking",
                                                             "document-pages"],
                 "size_categories": [_size_category(n_examples)],
                 "configs": [{"config_name": c["config_name"], "data_files": c["data_files"]} for c in configs],
                 "dataset_info": [{"config_name": c["config_name"], "features": c["features"], "splits": c["splits"]}
                                  for c in configs]})
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    lic = "" if license else ("# license: set the license of the source documents before publishing "
                              "(e.g. cc-by-4.0), or pass license= to jobs.push_to_hub\n")
    return "---\n" + lic + body + "---\n"


def set_front_matter(readme: str, block: str) -> str:
    """``readme`` with its leading YAML block replaced by ``block`` (added when it has none)."""
    if readme.startswith("---\n"):
        end = readme.find("\n---\n", 4)
        if end >= 0:
            return block + readme[end + 5:]
    return block + readme


def write_card(out: storage.Location, cfg, stats: dict) -> None:
    """Write ``card.md`` and ``README.md`` (the same card after a Hugging Face front matter, see ``front_matter``)."""
    from docrerank.core.runtime import redact
    from docrerank.engines.verify import judge_threshold

    conf = redact(cfg.model_dump(mode="json"))
    t_pos, t_neg = (judge_threshold(cfg.verify.threshold, cfg.verify.engine, role) for role in ("positive", "negative"))
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
        f"- verification: {engines['verify']}, two prompts, thresholds {t_pos} for "
        f"positives (both >=) and {t_neg} for negatives (both <); text pre-filter: "
        f"{cfg.verify.prefilter}",
        f"- negatives: {engines['negatives']}, mode `{cfg.negatives.mode}`, {cfg.negatives.num_candidates} per positive",
        f"- selection: {cfg.select.k} per positive, strategy `{cfg.select.strategy}`, seed {cfg.seed}",
        f"- rephrasing: {engines['rephrase']}", "",
        "## Funnel", "", "```", funnel_table(stats), "```", "",
        "## Negatives by attribute", "", "```", attribute_table(stats), "```", "",
        "Rejections by reason: positives " + json.dumps(stats["positives"]["rejected_by_reason"]) +
        "; negatives " + json.dumps(stats["negatives"]["rejected_by_reason"]), "",
        *(["## Model requests", "", "```", requests_table(stats), *(["", pools_table(stats)] if pools_table(stats) else []),
           "```", ""] if requests_table(stats) else []),
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
    has_heldout = bool(storage.list_files(out.join("examples_heldout"), suffixes=(".parquet",)))
    lines += [
        "", "## Load it", "",
        "With the `datasets` library (the page `image` decodes to a PIL image):", "", "```python",
        "from datasets import load_dataset", "",
        f'examples = load_dataset("{out.uri}", "examples")' + ("  # splits: train, test (held-out documents)"
                                                             if has_heldout else "  # split: train"),
        f'export = load_dataset("{out.uri}", "export", split="train")  # one row per page', "```",
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
    body = "\n".join(lines)
    storage.write_bytes_atomic(out.join("card.md"), body.encode())
    readme = front_matter(out, stats.get("examples", 0)) + "\n" + body
    storage.write_bytes_atomic(out.join("README.md"), readme.encode())
