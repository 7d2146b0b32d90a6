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
import sys


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


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.analysis.config import AnalyseConfig
    from docrerank.core.config import parse_job_args

    argv = split_flags(sys.argv[1:] if argv is None else argv)
    cfg, ns = parse_job_args(AnalyseConfig, argv, prog="python -m jobs.analyse_negatives", description=__doc__)
    from docrerank.analysis.negatives import format_analysis
    from docrerank.analysis.plan import plan_analyse
    from docrerank.core import plan, runtime
    from docrerank.pipeline.steps import run_analyse

    def make_plan():
        return plan_analyse(cfg, plan.local_resources())

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()

    done = runtime.run_job("analyse_negatives", cfg, lambda: run_analyse(cfg),
                           summarise=lambda r: {"groups": r[0]["groups"], "files": r[1]},
                           errors=(ValueError, OSError), checks=plan.start_checks(make_plan))
    if done is None:
        return 1
    result, written = done
    print(format_analysis(result))
    for uri in written:
        print(f"wrote {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
