"""The evaluation job: for each benchmark, a first-stage run, each reranker's re-sorted top-k, metrics side by side
with paired significance tests, run files, ``metrics.json`` and ``report.md`` with a plot. No Ray needed.

Output layout::

    <output>/runs/<dataset>/<system>.trec      first stage and every reranker (TREC run files)
    <output>/runs/<dataset>/<system>.json      what produced a reranked run (reused on rerun when it matches)
    <output>/metrics.json                      the results (see docrerank.eval.report), per-query values too
    <output>/report.md, <output>/ndcg5.png     the report
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

from docrerank.core import storage
from docrerank.eval.config import DatasetSpec, EvalConfig
from docrerank.rerank.config import RerankerSpec

log = logging.getLogger(__name__)


def load_dataset(spec: DatasetSpec, load_images: bool):
    """The ``Benchmark`` of one dataset spec."""
    from docrerank.eval.beir import load_beir, load_build_split

    fmt = spec.format
    if fmt == "auto":
        loc = storage.resolve(spec.path)
        fmt = "build" if any(storage.exists(loc.join(d)) for d in ("examples_heldout", "examples")) else "beir"
    if fmt == "build":
        return load_build_split(spec.path, split=spec.split or "heldout", name=spec.name, load_images=load_images)
    return load_beir(spec.path, name=spec.name, split=spec.split, load_images=load_images,
                     text_column=spec.text_column, language=spec.language)


def reranker_name(spec: RerankerSpec) -> str:
    """The reranker's column name: ``name`` or the path's last meaningful component."""
    if spec.name:
        return spec.name
    parts = [p for p in Path(spec.path.rstrip("/")).parts if p not in ("model", "merged")]
    return parts[-1] if parts else spec.path


def rerank_run(reranker, bench, first: dict[str, dict[str, float]], top_k: int) -> tuple[dict, dict]:
    """Each query's first-stage top-k re-sorted by ``reranker``; all pairs of a dataset in one ``score`` call
    (batched across queries, pages shared). Pairs that cannot be scored (a page without an image for a vlm)
    rank after every scored page, in first-stage order. Returns (run, info)."""
    from docrerank.eval.metrics import order

    pairs_q, pairs_p, owners = [], [], []
    for qid in sorted(first):
        for pid in order(first[qid])[:top_k]:
            pairs_q.append(bench.queries[qid])
            pairs_p.append(bench.page(pid))
            owners.append((qid, pid))
    t0 = time.perf_counter()
    scores = reranker.score(pairs_q, pairs_p) if pairs_q else []
    seconds = time.perf_counter() - t0
    run: dict[str, dict[str, float]] = {q: {} for q in first}
    unscored = 0
    for (qid, pid), s in zip(owners, scores):
        run[qid][pid] = float(s)
    for qid, docs in run.items():  # unscorable pairs: below every score, first-stage order kept
        bad = [pid for pid in order(first[qid])[:top_k] if math.isnan(docs.get(pid, 0.0))]
        unscored += len(bad)
        floor = min((v for v in docs.values() if not math.isnan(v)), default=0.0) - 1.0
        for r, pid in enumerate(bad):
            docs[pid] = floor - r
    info = {"pairs": len(owners), "seconds": round(seconds, 3),
            "pairs_per_s": round(len(owners) / seconds, 2) if seconds > 0 else None, "unscored_pairs": unscored}
    return run, info


def _fingerprint(spec: RerankerSpec, cfg: EvalConfig, dataset: str) -> dict:
    return {"reranker": spec.model_dump(mode="json"), "first_stage": cfg.first_stage.model_dump(mode="json"),
            "dataset": dataset, "max_queries": cfg.max_queries, "dtype": cfg.dtype}


def run_evaluation(cfg: EvalConfig, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Evaluate every reranker on every dataset; write run files, metrics.json and the report; return results.

    ``progress`` receives one line per dataset and reranker (default: the log; the job prints them)."""
    progress = progress or log.info
    from docrerank.eval.metrics import evaluate, paired_test
    from docrerank.models.hub import resolve_device
    from docrerank.eval.report import write_report
    from docrerank.eval.retrievers import read_trec_run, retrieve, write_trec_run

    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    device = resolve_device(cfg.device)
    first_name = cfg.first_stage.label
    names = [reranker_name(r) for r in cfg.rerankers]
    if len(set(names)) != len(names):
        raise ValueError(f"rerankers: two rerankers would be reported as the same name ({names}); set names")
    loaded: dict[str, Any] = {}
    results: dict[str, Any] = {"datasets": {}, "primary": cfg.primary, "first_stage": first_name,
                               "top_k": cfg.first_stage.top_k, "device": device,
                               "setup": {"device": device, **({"first-stage model": cfg.first_stage.model}
                                                                 if cfg.first_stage.model else {}),
                                         **{f"reranker {n}": r.path for n, r in zip(names, cfg.rerankers)}}}
    from docrerank.rerank.reranker import Reranker, find_model_dir, read_card

    # page images are read only when something looks at them (a vlm reranker, a ColPali first stage)
    need_images = cfg.first_stage.kind == "colpali" or any(
        read_card(find_model_dir(r.path))["backbone"] == "vlm" for r in cfg.rerankers)
    for spec in cfg.datasets:
        bench = load_dataset(spec, load_images=need_images)
        if cfg.max_queries:
            keep = sorted(bench.queries)[:cfg.max_queries]
            bench.queries = {q: bench.queries[q] for q in keep}
            bench.qrels = {q: bench.qrels[q] for q in keep}
        name = bench.name
        progress(f"[{name}] {len(bench.queries)} queries, {len(bench.corpus_ids)} pages; first stage {first_name}")
        runs_dir = out.join("runs", name)
        storage.makedirs(runs_dir)
        first = retrieve(bench, cfg.first_stage.kind, cfg.first_stage.top_k, run_file=spec.run_file,
                         model=cfg.first_stage.model, device=device, batch_size=cfg.first_stage.batch_size)
        write_trec_run(runs_dir.join(f"{first_name}.trec").uri, first, first_name)
        means, per_query = evaluate(bench.qrels, first, cfg.metrics)
        systems = {first_name: {"metrics": means}}
        per_query_all = {first_name: per_query}
        tests: dict[str, Any] = {}
        for rspec, rname in zip(cfg.rerankers, names):
            system = f"{first_name}+{rname}"
            run_loc, meta_loc = runs_dir.join(f"{system}.trec"), runs_dir.join(f"{system}.json")
            fp = _fingerprint(rspec, cfg, name)
            info: Optional[dict] = None
            if cfg.resume and storage.exists(run_loc) and storage.exists(meta_loc):
                meta = json.loads(storage.read_bytes(meta_loc))
                if meta.get("fingerprint") == fp:
                    run, info = read_trec_run(run_loc.uri), {**meta.get("info", {}), "reused": True}
                    progress(f"[{name}] {system}: reusing {run_loc.uri}")
            if info is None:
                if rname not in loaded:
                    loaded[rname] = Reranker.load(rspec.path, device=device, dtype=cfg.dtype,
                                                  batch_size=rspec.batch_size, max_pixels=rspec.max_pixels,
                                                  max_seq_len=rspec.max_seq_len, name=rname)
                rr = loaded[rname]
                run, info = rerank_run(rr, bench, first, cfg.first_stage.top_k)
                info["backbone"] = rr.backbone
                write_trec_run(run_loc.uri, run, system)
                storage.write_bytes_atomic(meta_loc, json.dumps({"fingerprint": fp, "info": info}, indent=2).encode())
                progress(f"[{name}] {system}: {info['pairs']} pairs in {info['seconds']} s")
            r_means, r_per_query = evaluate(bench.qrels, run, cfg.metrics)
            systems[system] = {"metrics": r_means, "rerank": info}
            per_query_all[system] = r_per_query
            tests[system] = {m: paired_test(per_query[m], r_per_query[m], n_resamples=cfg.n_resamples)
                             for m in cfg.metrics}
        results["datasets"][name] = {"num_queries": len(bench.qrels), "num_pages": len(bench.corpus_ids),
                                     "dropped_queries": getattr(bench, "dropped_queries", 0),
                                     "systems": systems, "tests": tests, "per_query": per_query_all}
    results["average"] = _average(results)
    storage.write_bytes_atomic(out.join("metrics.json"), (json.dumps(results, indent=2) + "\n").encode())
    results["files"] = write_report(out.uri, results)
    return results


def _average(results: dict) -> dict[str, dict[str, float]]:
    """Unweighted mean over datasets of each system's metrics (systems present in every dataset)."""
    sets = list(results["datasets"].values())
    if not sets:
        return {}
    systems = [s for s in sets[0]["systems"] if all(s in d["systems"] for d in sets)]
    return {s: {m: sum(d["systems"][s]["metrics"][m] for d in sets) / len(sets)
                for m in sets[0]["systems"][s]["metrics"]} for s in systems}
