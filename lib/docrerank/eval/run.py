"""The evaluation job: for each benchmark, a first-stage run, each reranker's re-sorted top-k, metrics side by side
with paired significance tests, run files, ``metrics.json`` and ``report.md`` with a plot. No Ray needed.

Output layout::

    <output>/runs/<dataset>/<system>.trec      first stage and every reranker (TREC run files)
    <output>/runs/<dataset>/<system>.json      what produced a reranked run (reused on rerun when it matches)
    <output>/metrics.json                      the results (see docrerank.report.evaluation), per-query values too
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
from docrerank.models.config import RerankerSpec

log = logging.getLogger(__name__)


def load_dataset(spec: DatasetSpec, load_images: bool):
    """The ``Benchmark`` of one dataset spec."""
    from docrerank.eval.beir import load_beir, load_build_split

    fmt = spec.format
    if fmt == "auto":
        loc = storage.resolve(spec.path)
        fmt = "build" if any(storage.exists(loc.join(d)) for d in ("examples_heldout", "examples")) else "beir"
    if fmt == "build":
        return load_build_split(spec.path, split=spec.split or "heldout", name=spec.name, load_images=load_images,
                                part=spec.part, questions=spec.questions, seed=spec.seed)
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
    from docrerank.retrieval.metrics import order

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


def _fingerprint(spec: RerankerSpec, cfg: EvalConfig, dataset: DatasetSpec, name: str) -> dict:
    return {"reranker": spec.model_dump(mode="json"), "first_stage": cfg.first_stage.model_dump(mode="json"),
            "dataset": name, "data": dataset.model_dump(mode="json", exclude={"name"}),
            "max_queries": cfg.max_queries, "dtype": cfg.dtype}


class _Runner:
    """Loads datasets and rerankers once and makes (or reuses) their runs: the parts of one evaluation."""

    def __init__(self, cfg: EvalConfig, out, device: str, names: list[str], progress: Callable[[str], None]):
        self.cfg, self.out, self.device, self.names, self.progress = cfg, out, device, names, progress
        self.loaded: dict[str, Any] = {}
        from docrerank.models.reranker import find_model_dir, read_card

        # page images are read only when something looks at them (a vlm reranker, a ColPali first stage)
        self.need_images = cfg.first_stage.kind == "colpali" or any(
            read_card(find_model_dir(r.path))["backbone"] == "vlm" for r in cfg.rerankers)

    def first_stage(self, spec: DatasetSpec):
        """(benchmark, first-stage run, runs directory) of a dataset; the first stage's run file is written."""
        from docrerank.retrieval.retrievers import retrieve, write_trec_run

        cfg = self.cfg
        bench = load_dataset(spec, load_images=self.need_images)
        if cfg.max_queries:
            keep = sorted(bench.queries)[:cfg.max_queries]
            bench.queries = {q: bench.queries[q] for q in keep}
            bench.qrels = {q: bench.qrels[q] for q in keep}
        self.progress(f"[{bench.name}] {len(bench.queries)} queries, {len(bench.corpus_ids)} pages; first stage "
                      f"{cfg.first_stage.label}")
        runs_dir = self.out.join("runs", bench.name)
        storage.makedirs(runs_dir)
        first = retrieve(bench, cfg.first_stage.kind, cfg.first_stage.top_k, run_file=spec.run_file,
                         model=cfg.first_stage.model, device=self.device, batch_size=cfg.first_stage.batch_size)
        write_trec_run(runs_dir.join(f"{cfg.first_stage.label}.trec").uri, first, cfg.first_stage.label)
        return bench, first, runs_dir

    def reranked(self, rspec: RerankerSpec, rname: str, spec: DatasetSpec, bench, first, runs_dir):
        """(run, info) of one reranker on one dataset: reused from its run file when made with the same settings."""
        from docrerank.models.reranker import Reranker
        from docrerank.retrieval.retrievers import read_trec_run, write_trec_run

        cfg = self.cfg
        system = f"{cfg.first_stage.label}+{rname}"
        run_loc, meta_loc = runs_dir.join(f"{system}.trec"), runs_dir.join(f"{system}.json")
        fp = _fingerprint(rspec, cfg, spec, bench.name)
        if cfg.resume and storage.exists(run_loc) and storage.exists(meta_loc):
            meta = json.loads(storage.read_bytes(meta_loc))
            if meta.get("fingerprint") == fp:
                self.progress(f"[{bench.name}] {system}: reusing {run_loc.uri}")
                return read_trec_run(run_loc.uri), {**meta.get("info", {}), "reused": True}
        if rname not in self.loaded:
            self.loaded[rname] = Reranker.load(rspec.path, device=self.device, dtype=cfg.dtype,
                                               batch_size=rspec.batch_size, max_pixels=rspec.max_pixels,
                                               max_seq_len=rspec.max_seq_len, name=rname)
        rr = self.loaded[rname]
        run, info = rerank_run(rr, bench, first, cfg.first_stage.top_k)
        info["backbone"] = rr.backbone
        write_trec_run(run_loc.uri, run, system)
        storage.write_bytes_atomic(meta_loc, json.dumps({"fingerprint": fp, "info": info}, indent=2).encode())
        self.progress(f"[{bench.name}] {system}: {info['pairs']} pairs in {info['seconds']} s")
        return run, info

    def fusion_weights(self) -> dict[str, dict]:
        """Each reranker's fusion weight: fixed, or the best on ``fusion.validation`` (with every weight's value)."""
        from docrerank.retrieval.fusion import choose_weight
        from docrerank.retrieval.metrics import evaluate

        f, primary = self.cfg.fusion, self.cfg.primary
        if f.method == "none" or not self.cfg.rerankers:
            return {}
        if f.weight is not None:
            return {n: {"method": f.method, "weight": f.weight, "chosen_on": None} for n in self.names}
        bench, first, runs_dir = self.first_stage(f.validation)
        out = {}
        for rspec, rname in zip(self.cfg.rerankers, self.names):
            run, _ = self.reranked(rspec, rname, f.validation, bench, first, runs_dir)
            weight, values = choose_weight(first, run, lambda r: evaluate(bench.qrels, r, [primary])[0][primary],
                                           f.weights, f.method, f.rrf_k)
            out[rname] = {"method": f.method, "weight": weight, "chosen_on": bench.name,
                          "queries": len(bench.qrels), f"validation {primary} by weight": values}
            self.progress(f"[{bench.name}] {rname}: fusion weight {weight} ({primary} "
                          f"{100 * values[weight]:.1f} on validation; reranker alone {100 * values.get(1.0, 0):.1f},"
                          f" first stage alone {100 * values.get(0.0, 0):.1f})")
        return out


def run_evaluation(cfg: EvalConfig, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Evaluate every reranker on every dataset; write run files, metrics.json and the report; return results.

    ``progress`` receives one line per dataset and reranker (default: the log; the job prints them)."""
    progress = progress or log.info
    from docrerank.models.hub import resolve_device
    from docrerank.report.evaluation import write_report
    from docrerank.retrieval.fusion import fuse_run
    from docrerank.retrieval.metrics import evaluate, paired_test
    from docrerank.retrieval.retrievers import write_trec_run

    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    device = resolve_device(cfg.device)
    first_name = cfg.first_stage.label
    names = [reranker_name(r) for r in cfg.rerankers]
    if len(set(names)) != len(names):
        raise ValueError(f"rerankers: two rerankers would be reported as the same name ({names}); set names")
    results: dict[str, Any] = {"datasets": {}, "primary": cfg.primary, "first_stage": first_name,
                               "top_k": cfg.first_stage.top_k, "device": device,
                               "setup": {"device": device, **({"first-stage model": cfg.first_stage.model}
                                                                 if cfg.first_stage.model else {}),
                                         **{f"reranker {n}": r.path for n, r in zip(names, cfg.rerankers)}}}
    runner = _Runner(cfg, out, device, names, progress)
    fusion = runner.fusion_weights()
    if fusion:
        results["fusion"] = fusion
        results["setup"].update({f"fusion {n}": f"{f['method']}, reranker weight {f['weight']}"
                                 + (f" (chosen on {f['chosen_on']})" if f["chosen_on"] else " (fixed)")
                                 for n, f in fusion.items()})
    for spec in cfg.datasets:
        bench, first, runs_dir = runner.first_stage(spec)
        name = bench.name
        means, per_query = evaluate(bench.qrels, first, cfg.metrics)
        systems = {first_name: {"metrics": means}}
        per_query_all = {first_name: per_query}
        tests: dict[str, Any] = {}

        def add(system: str, run: dict, info: Optional[dict]) -> None:
            r_means, r_per_query = evaluate(bench.qrels, run, cfg.metrics)
            systems[system] = {"metrics": r_means, **({"rerank": info} if info is not None else {})}
            per_query_all[system] = r_per_query
            tests[system] = {m: paired_test(per_query[m], r_per_query[m], n_resamples=cfg.n_resamples)
                             for m in cfg.metrics}

        fused = {}
        for rspec, rname in zip(cfg.rerankers, names):
            run, info = runner.reranked(rspec, rname, spec, bench, first, runs_dir)
            add(f"{first_name}+{rname}", run, info)
            if rname in fusion:
                f = fusion[rname]
                fused[rname] = fuse_run(first, run, f["weight"], f["method"], cfg.fusion.rrf_k)
        for rname, run in fused.items():  # after the pure rerankers, so the table reads pure then fused
            system = f"{first_name}+{rname}+fused"
            write_trec_run(runs_dir.join(f"{system}.trec").uri, run, system)
            add(system, run, None)
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
