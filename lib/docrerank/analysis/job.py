"""Measure how hard and how diverse the negatives of example sets are: generated vs document-mined negatives (and
generated ones per attribute) on MiniLM embeddings, optionally with a reranker's scores before training.

    python -m jobs.analyse_negatives --examples out/local/examples [--examples out/local/mined ...]
        [--reranker PATH] [--output out/local] [--config jobs/configs/analyse_local.yaml] [key=value ...]

``--examples`` (repeatable), ``--reranker`` and ``--output`` set the config keys of the same names. Writes
<output>/negatives_analysis.json; a dataset build output (with card.md) also gets the card section
"Negatives: hardness and diversity" (replaced on rerun) and a ``negatives_analysis`` key in stats.json.
Definitions of the measures: docrerank/analysis/negatives.py. No Ray.
"""

from __future__ import annotations

import argparse
import json

from docrerank.analysis.config import AnalyseConfig
from docrerank.core.job import Job


def split_flags(argv: list[str]) -> list[str]:
    """``argv`` with ``--examples/--reranker/--output VALUE`` turned into ``key=value`` overrides."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--examples", action="append")
    pre.add_argument("--reranker")
    pre.add_argument("--output")
    ns, rest = pre.parse_known_args(argv)
    overrides = [f"examples={json.dumps(ns.examples)}"] if ns.examples else []
    overrides += [f"{k}={json.dumps(v)}" for k, v in (("reranker", ns.reranker), ("output", ns.output)) if v]
    return rest + overrides


def run_analyse(cfg: AnalyseConfig, progress=None) -> tuple[dict, list[str]]:
    """The analysis: (result, files written)."""
    from docrerank.analysis.negatives import analyse_examples, write_outputs
    from docrerank.models.embed import Embedder
    from docrerank.models.hub import resolve_device

    device = resolve_device(cfg.device)
    embedder = Embedder.load(cfg.embedder, device=device)
    scorer = None
    if cfg.reranker:
        from docrerank.models.reranker import Reranker

        scorer = Reranker.load(cfg.reranker, device=device).score
    result = analyse_examples(cfg.examples, embedder, scorer, cfg.max_groups, cfg.seed, cfg.batch_size)
    return result, write_outputs(result, cfg.output) if cfg.output else []


def _plan(cfg: AnalyseConfig, res):
    from docrerank.analysis.plan import plan_analyse

    return plan_analyse(cfg, res)


def _report(cfg: AnalyseConfig, done: tuple[dict, list[str]]) -> str:
    from docrerank.analysis.negatives import format_analysis

    result, written = done
    return format_analysis(result) + "".join(f"\nwrote {uri}" for uri in written)


JOB = Job(
    name="analyse_negatives", aliases=("analyse", "analyze"), doc=__doc__, config=AnalyseConfig,
    summary="how hard and how diverse the negatives are",
    run=run_analyse, plan=_plan, report=_report, headline=lambda done: f"{done[0]['groups']} groups measured",
    outputs=lambda cfg: (cfg.output, ["negatives_analysis.json"]) if cfg.output else ("", []),
    needs_ray=lambda cfg: False, errors=(ValueError, OSError), argv=split_flags,
    summarise=lambda done: {"groups": done[0]["groups"], "files": done[1]},
)
