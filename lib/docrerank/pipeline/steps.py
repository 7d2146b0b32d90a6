"""The pipeline's steps: for each job, what it runs (the library call its entry point makes), what it prints, the
one-line result of the final summary and the outputs it lists.

Each ``run`` is what ``jobs.<job>``'s ``work()`` does once Ray is up; the pipeline starts Ray once for all steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from docrerank.core import runtime

log = logging.getLogger("docrerank.pipeline")


@dataclass(frozen=True)
class Step:
    """One job of the pipeline."""

    name: str
    job: str  # the job's name in ``_meta/<job>.json``, as ``jobs.<job>`` records it
    run: Callable[[Any], Any]
    report: Callable[[Any, Any], str]  # (config, result) -> the tables printed after the step
    headline: Callable[[Any], str]  # result -> one line for the final summary
    outputs: Callable[[Any], tuple[str, list[str]]]  # config -> (directory, what a person opens in it)
    plan: Callable[[Any, Any], Any]  # (config, Ray address or None) -> the job's PlanReport (``--plan``, start checks)
    ray: Callable[[Any], bool] = lambda cfg: True  # whether the step needs Ray (started once, before the first)
    progress: bool = True  # Ray Data progress bars during the step
    errors: tuple = (ValueError, RuntimeError)  # failures reported as "<job> failed: <why>" (as the job does)
    summarise: Callable[[Any], Any] | None = None  # result -> what ``_meta/<job>.json`` keeps (default: the result)


# ------------------------------------------------------------------------------------------------- ingest
def _run_ingest(cfg):
    from docrerank.render.run import run_ingest

    return run_ingest(cfg)


def _report_ingest(cfg, stats) -> str:
    from docrerank.render.books import summary_table

    return f"ingest summary for {cfg.output}\n{summary_table(stats)}"


def _headline_ingest(stats) -> str:
    d, p = stats["documents"], stats["pages"]
    return f"{p.get('written', 0)} pages of {d.get('written', 0)} documents; books balance: " \
           f"{'yes' if stats.get('balanced') else 'NO'}"


# -------------------------------------------------------------------------------------------------- build
def _run_build(cfg):
    from docrerank.build.run import run_build

    return run_build(cfg)


def _report_build(cfg, stats) -> str:
    from docrerank.report.card import funnel_table

    ingest = stats.get("ingest")
    head = ""
    if ingest:
        head = (f"ingest: {ingest['pages'].get('written', 0)} pages of {ingest['documents'].get('written', 0)} "
                f"documents, {ingest['documents'].get('quarantined', 0)} quarantined; books balance: "
                f"{'yes' if ingest.get('balanced') else 'NO'}\n")
    return f"{head}dataset build for {cfg.output}\n{funnel_table(stats)}"


def _headline_build(stats) -> str:
    return f"{stats['groups']} groups ({stats.get('heldout_groups', 0)} held out), " \
           f"{stats['negatives']['kept']} negatives kept of {stats['negatives']['candidates']}"


def _outputs_build(cfg) -> tuple[str, list[str]]:
    names = ["examples/", "examples_heldout/", "queries/", "card.md", "stats.json"]
    return cfg.output, names + (["viewer/index.html"] if getattr(cfg, "viewer", False) else [])


# --------------------------------------------------------------------------------------------------- mine
def _run_mine(cfg):
    from docrerank.mine.run import run_mine

    return run_mine(cfg)


def _report_mine(cfg, stats) -> str:
    st = stats["status"]
    rows = [["queries", stats["queries"]], ["complete (k negatives)", st.get("complete", 0)],
            ["short (< k)", st.get("short", 0)], ["skipped", st.get("skipped", 0)]]
    rows += [[f"groups in {d}/", n] for d, n in stats["groups"].items()]
    rows += [["false negatives removed", stats["false_negatives_removed"]],
             ["positive in top N", stats["positive_in_top_n"]],
             ["mean rank of the positive", stats["positive_rank_mean"]]]
    return f"mined negatives for {cfg.output} ({cfg.retriever} top {cfg.top_n}, k={cfg.k})\n" + \
        runtime.format_table(["mine_negatives", "value"], rows)


def _headline_mine(stats) -> str:
    groups = " + ".join(f"{n}" for n in stats["groups"].values())
    return f"{groups} mined groups, {stats['false_negatives_removed']} false negatives removed"


# ------------------------------------------------------------------------------------------------ analyse
def run_analyse(cfg):
    """The analysis job's work (also ``jobs.analyse_negatives``'): (result, files written)."""
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


def _report_analyse(cfg, done) -> str:
    from docrerank.analysis.negatives import format_analysis

    return format_analysis(done[0])


def _headline_analyse(done) -> str:
    return f"{done[0]['groups']} groups measured"


# -------------------------------------------------------------------------------------------------- train
def _run_train(cfg):
    if cfg.scaling.use_ray:
        from docrerank.train.ray_train import run_training

        return run_training(cfg)
    from docrerank.train.local import train_local

    res = train_local(cfg)
    return {"steps": res.steps, "device": "local", "workers": 1, "model": res.model_uri, "metrics": res.metrics,
            "mix": res.mix}


def _report_train(cfg, summary) -> str:
    # The realised mix is logged by the training itself (data/mix.py) when the step starts.
    metrics = summary.get("metrics") or {}
    rows = [[k, summary.get(k)] for k in ("steps", "groups", "device", "model") if summary.get(k) is not None]
    rows += [[k, round(v, 4) if isinstance(v, float) else v] for k, v in metrics.items()
             if k in ("loss", "val_pairwise_accuracy", "val_loss", "samples_per_s")]
    return runtime.format_table(["train_reranker", "value"], rows)


def _headline_train(summary) -> str:
    metrics = summary.get("metrics") or {}
    acc = metrics.get("val_pairwise_accuracy")
    return f"{summary.get('steps')} steps" + (f", validation pairwise accuracy {acc:.3f}" if acc is not None else "")


# ----------------------------------------------------------------------------------------------- evaluate
def _run_evaluate(cfg):
    from docrerank.eval.run import run_evaluation

    return run_evaluation(cfg, progress=log.info)


def _report_evaluate(cfg, results) -> str:
    from docrerank.report.evaluation import format_table

    return format_table(results)


def _headline_evaluate(results) -> str:
    primary = results.get("primary", "ndcg@5")
    avg = results.get("average") or {}
    parts = [f"{system} {100 * m[primary]:.1f}" for system, m in avg.items() if m.get(primary) is not None]
    return f"{primary}: " + ", ".join(parts)


def _resources(address, cluster: bool = True):
    from docrerank.core import plan

    return plan.detect_resources(address) if cluster else plan.local_resources()


def _plan_ingest(cfg, address):
    from docrerank.render.plan import plan_ingest

    return plan_ingest(cfg, _resources(address))


def _plan_build(cfg, address):
    from docrerank.build.plan import plan_build

    return plan_build(cfg, _resources(address))


def _plan_mine(cfg, address):
    from docrerank.mine.plan import plan_mine

    return plan_mine(cfg, _resources(address))


def _plan_analyse(cfg, address):
    from docrerank.analysis.plan import plan_analyse

    return plan_analyse(cfg, _resources(address, cluster=False))


def _plan_train(cfg, address):
    from docrerank.train.plan import plan_train

    return plan_train(cfg, _resources(address, cluster=cfg.scaling.use_ray))


def _plan_evaluate(cfg, address):
    from docrerank.eval.plan import plan_eval

    return plan_eval(cfg, _resources(address, cluster=False))


STEPS: dict[str, Step] = {
    "ingest": Step("ingest", "ingest", _run_ingest, _report_ingest, _headline_ingest,
                   lambda c: (c.output, ["pages/", "quarantine/", "ingest_stats.json"]), _plan_ingest),
    "build": Step("build", "build_dataset", _run_build, _report_build, _headline_build, _outputs_build, _plan_build),
    "mine": Step("mine", "mine_negatives", _run_mine, _report_mine, _headline_mine,
                 lambda c: (c.output, ["mined/", "mined_heldout/", "mining_stats.json"]), _plan_mine),
    "analyse": Step("analyse", "analyse_negatives", run_analyse, _report_analyse, _headline_analyse,
                    lambda c: (c.output, ["negatives_analysis.json"]) if c.output else ("", []), _plan_analyse,
                    ray=lambda c: False, errors=(ValueError, OSError),
                    summarise=lambda r: {"groups": r[0]["groups"], "files": r[1]}),
    "train": Step("train", "train_reranker", _run_train, _report_train, _headline_train,
                  lambda c: (c.output, ["model/merged/", "metrics.jsonl", "mix.json"]), _plan_train,
                  ray=lambda c: c.scaling.use_ray, progress=False),
    "evaluate": Step("evaluate", "evaluate", _run_evaluate, _report_evaluate, _headline_evaluate,
                     lambda c: (c.output, ["report.md", "metrics.json", "runs/"]), _plan_evaluate,
                     ray=lambda c: False, errors=(ValueError, RuntimeError, FileNotFoundError, ImportError),
                     summarise=lambda r: {"average": r["average"], "files": r.get("files")}),
}
