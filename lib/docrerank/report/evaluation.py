"""The evaluation report: Markdown tables (values x100, like the paper), a plot of the primary metric, a text table.

``results`` (what the evaluation job builds and these functions read)::

    {
      "datasets": {
        "<dataset>": {
          "num_queries": 52,
          "systems": {                      # insertion order = column order; the FIRST is retrieval-only
            "bm25": {"metrics": {"ndcg@5": 0.412, "recall@5": 0.55, ...}},
            "bm25+minilm-sample": {"metrics": {...}},
          },
          "tests": {                        # per reranker, per metric: paired_test(retrieval-only, reranker)
            "bm25+minilm-sample": {"ndcg@5": {"n": 52, "delta": 0.061, "p_randomization": 0.002, ...}},
          },
        },
      },
      "average": {"bm25": {"ndcg@5": 0.40, ...}, ...},   # optional: unweighted mean over datasets if absent
      "primary": "ndcg@5",                              # optional, default ndcg@5
      "first_stage": "bm25",
      "top_k": 20,
      "setup": {"reranker": "/models/minilm", ...},     # optional, listed under "Setup"
    }

Metric values are fractions in [0, 1]; the report shows them x100 with one decimal.
"""

from __future__ import annotations

import io
import re

from docrerank.core import storage
from docrerank.core.runtime import format_table as _plain_table

AVERAGE = "average"


def _systems(results: dict) -> list[str]:
    seen: dict[str, None] = {}
    for ds in results.get("datasets", {}).values():
        for s in ds.get("systems", {}):
            seen.setdefault(s, None)
    return list(seen)


def _metrics(results: dict) -> list[str]:
    seen: dict[str, None] = {}
    primary = results.get("primary", "ndcg@5")
    seen[primary] = None
    for ds in results.get("datasets", {}).values():
        for sysres in ds.get("systems", {}).values():
            for m in sysres.get("metrics", {}):
                seen.setdefault(m, None)
    return list(seen)


def _value(results: dict, dataset: str, system: str, metric: str) -> float | None:
    """A metric value of a dataset row or of the average row (mean over datasets when not given)."""
    if dataset != AVERAGE:
        return results["datasets"][dataset].get("systems", {}).get(system, {}).get("metrics", {}).get(metric)
    given = results.get("average", {}).get(system, {}).get(metric)
    if given is not None:
        return given
    vals = [_value(results, d, system, metric) for d in results.get("datasets", {})]
    return sum(vals) / len(vals) if vals and None not in vals else None


def _rows(results: dict) -> list[str]:
    """Dataset rows, then the average row when it says something (several datasets, or an average without any)."""
    names = list(results.get("datasets", {}))
    return names + [AVERAGE] if len(names) > 1 or (not names and results.get("average")) else names


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _p(p: float | None) -> str:
    if p is None:
        return "p=?"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _test(results: dict, dataset: str, system: str, metric: str) -> dict | None:
    if dataset == AVERAGE:
        return None
    return results["datasets"][dataset].get("tests", {}).get(system, {}).get(metric)


def markdown_table(results: dict, metric: str) -> str:
    """One Markdown table of ``metric``: rows = datasets + average, columns = systems, best bolded.

    For the primary metric each reranker cell also shows the change vs the retrieval-only system and the
    paired randomization p-value.
    """
    systems = _systems(results)
    primary = metric == results.get("primary", "ndcg@5")
    lines = ["| dataset | queries | " + " | ".join(systems) + " |", "|---|---:|" + "---:|" * len(systems)]
    for row in _rows(results):
        vals = {s: _value(results, row, s, metric) for s in systems}
        best = max((round(100 * v, 1) for v in vals.values() if v is not None), default=None)
        cells = []
        for i, s in enumerate(systems):
            cell = _pct(vals[s])
            if vals[s] is not None and round(100 * vals[s], 1) == best and len(systems) > 1:
                cell = f"**{cell}**"
            base = vals[systems[0]]
            if primary and i > 0 and vals[s] is not None and base is not None:
                test = _test(results, row, s, metric)
                delta = f"{100 * (vals[s] - base):+.1f}"
                cell += f" ({delta}, {_p(test.get('p_randomization'))})" if test else f" ({delta})"
            cells.append(cell)
        n = "" if row == AVERAGE else str(results["datasets"][row].get("num_queries", ""))
        label = f"*{row}*" if row == AVERAGE else row
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(results: dict) -> str:
    """The aligned plain-text table the job prints: one line per dataset and system, metrics x100."""
    systems, metrics = _systems(results), _metrics(results)
    primary = results.get("primary", "ndcg@5")
    header = ["dataset", "system", "n"] + metrics + [f"d {primary}", "p"]
    rows = []
    for row in _rows(results):
        base = _value(results, row, systems[0], primary) if systems else None
        for i, s in enumerate(systems):
            vals = [_value(results, row, s, m) for m in metrics]
            if all(v is None for v in vals):
                continue
            v = _value(results, row, s, primary)
            delta = f"{100 * (v - base):+.1f}" if i > 0 and v is not None and base is not None else ""
            test = _test(results, row, s, primary) if i > 0 else None
            p = _p(test.get("p_randomization")).removeprefix("p=").removeprefix("p") if test else ""
            n = "" if row == AVERAGE else results["datasets"][row].get("num_queries", "")
            rows.append([row, s, n] + [_pct(x) for x in vals] + [delta, p])
    return _plain_table(header, rows)


def plot_primary(results: dict) -> bytes:
    """PNG bytes: grouped horizontal bars of the primary metric (x100) per dataset and the average."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    primary = results.get("primary", "ndcg@5")
    systems, rows = _systems(results), _rows(results)
    n_sys = max(1, len(systems))
    height = 0.8 / n_sys
    fig = Figure(figsize=(9, 1.6 + 0.35 * len(rows) * n_sys + 0.3 * len(rows)), dpi=120)
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(n_sys)]
    top = 0.0
    for j, s in enumerate(systems):
        vals = [_value(results, r, s, primary) for r in rows]
        ys = [len(rows) - 1 - i + 0.4 - height * (j + 0.5) for i in range(len(rows))]
        xs = [100 * v if v is not None else 0.0 for v in vals]
        bars = ax.barh(ys, xs, height=height * 0.95, color=colors[j], label=s)
        ax.bar_label(bars, labels=[_pct(v) for v in vals], padding=3, fontsize=8)
        top = max([top] + xs)
    ax.set_yticks(range(len(rows)), [r for r in reversed(rows)])
    ax.set_xlim(0, top + max(8.0, 0.12 * top) if top else 100.0)  # room for the value labels
    ax.set_xlabel(f"{primary} (x100)")
    title = f"{primary}: first stage {results.get('first_stage', '?')}, top-{results.get('top_k', '?')} reranked"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(n_sys, 3), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_markdown(results: dict, plot_name: str) -> str:
    """The text of ``report.md``."""
    primary = results.get("primary", "ndcg@5")
    systems = _systems(results)
    lines = ["# Reranking evaluation", "", "## Setup", "",
             f"- first stage: {results.get('first_stage', '?')}, top-{results.get('top_k', '?')} pages reranked",
             f"- systems: {', '.join(f'`{s}`' for s in systems)} (the first is retrieval only)",
             f"- primary metric: {primary}; values x100"]
    for key, value in (results.get("setup") or {}).items():
        lines.append(f"- {key}: {value}")
    legend = (f"In the {primary} table, reranker cells show the change vs `{systems[0] if systems else '?'}` "
              "and the p-value of a two-sided paired randomization test over queries; best value per row in bold. "
              "The average row is the unweighted mean over datasets.")
    lines += ["", legend, "", f"![{primary} per dataset]({plot_name})", ""]
    for metric in _metrics(results):
        lines += [f"## {metric}", "", markdown_table(results, metric), ""]
    return "\n".join(lines)


def write_report(directory: str, results: dict) -> dict[str, str]:
    """Write ``report.md`` and the primary-metric plot into ``directory`` (local or URI); returns their paths."""
    if not results.get("datasets"):
        raise ValueError("results has no datasets to report")
    out = storage.resolve(directory)
    plot_name = re.sub(r"[^A-Za-z0-9_.-]", "", results.get("primary", "ndcg@5")) + ".png"
    plot_loc, report_loc = out.join(plot_name), out.join("report.md")
    storage.write_bytes_atomic(plot_loc, plot_primary(results))
    storage.write_bytes_atomic(report_loc, render_markdown(results, plot_name).encode("utf-8"))
    return {"report": report_loc.uri, "plot": plot_loc.uri}
