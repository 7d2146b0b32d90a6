"""Ingest throughput: the ingest job on 1 and 2 CPUs vs a plain single-process PyMuPDF loop, same files, same
render settings, same run. Target: >= 0.9x the plain loop per CPU in the steady state, close to linear in CPUs.

    python bench/bench_ingest.py [--copies 2] [--shared ../shared] [--cpus 1 2]

The corpus is the project's sample corpus plus the real PDFs of ``../shared/data/pdfs`` (without the broken and
encrypted ``bad__``/``enc__`` files) and ``../shared/data/qa_dev/pdfs`` (``$DOCRERANK_SHARED`` or ``--shared``
points elsewhere), each copied ``--copies`` times with ``% copy K`` appended after the end of the file: a PDF
comment MuPDF ignores (no repair, same pages), which makes every copy's bytes, and so its document id, distinct,
so the ingest deduplicates nothing. About 2,550 pages per copy.

Reported, in the same run and process:
- ``baseline``: the plain loop (open, render at the same clamped scale, PNG, text layer), pages/s; run before and
  after the jobs, the mean of the two (both are recorded).
- ``value``: the 2-CPU job's steady rate per CPU: pages of the tasks that finished after the first one, over the
  time from the first to the last finished task (``steady_pages_per_second`` in ``ingest_stats.json``).
- per CPU count: Ray's start (``ray.init``), the job's start-up (job start to the first finished task: listing,
  probing, planning, starting the workers, the first task), the steady rate and the whole job's rate.
- ``plain_parallel``: the plain loop in one process per CPU (a multiprocessing pool over files), the hardware's
  own scaling, to tell what the cores cost from what the job costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lib"))
from common import write_result  # noqa: E402

DPI, MAX_PIXELS = 144.0, 802_816  # the ingest's defaults, used by both sides


def build_corpus(dst: Path, shared: Path | None, copies: int) -> list[Path]:
    """Copies of the sample corpus and the shared PDFs under ``dst/corpus``, each copy's bytes distinct."""
    from docrerank.render.sample_corpus import make_corpus

    sources = sorted(make_corpus(dst / "_sample").joinpath("pdfs").glob("*.pdf"))
    sources = [p for p in sources if p.stat().st_size > 0 and "encrypted" not in p.name]
    if shared and shared.is_dir():
        sources += sorted(p for p in (shared / "data" / "pdfs").glob("*.pdf") if not p.name.startswith(("bad__", "enc__")))
        sources += sorted((shared / "data" / "qa_dev" / "pdfs").glob("*.pdf"))
    files = []
    for k in range(copies):
        for i, src in enumerate(sources):
            out = dst / "corpus" / f"{k}_{i:03d}_{src.name}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(src.read_bytes() + f"\n% copy {k}\n".encode())
            files.append(out)
    return files


def plain_file(path: Path) -> int:
    """What a user would write for one file: open, render each page at the clamped scale, PNG, text layer."""
    import pymupdf

    from docrerank.render.document import render_scale

    pymupdf.TOOLS.mupdf_display_errors(False)
    n = 0
    doc = pymupdf.open(path)
    for page in doc:
        s = render_scale(page.rect.width, page.rect.height, DPI, MAX_PIXELS)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(s, s), alpha=False, colorspace=pymupdf.csRGB)
        _ = (pix.tobytes("png"), page.get_text("text"))
        n += 1
    doc.close()
    return n


def plain_loop(files: list[Path], processes: int = 1) -> tuple[int, float]:
    """(pages, seconds) of the plain loop over ``files``, in this process or a pool of ``processes``."""
    t = time.perf_counter()
    if processes == 1:
        n = sum(plain_file(f) for f in files)
    else:
        from multiprocessing import get_context

        big_first = sorted(files, key=lambda f: -f.stat().st_size)
        with get_context("spawn").Pool(processes) as pool:
            n = sum(pool.imap_unordered(plain_file, big_first))
    return n, time.perf_counter() - t


def run_job(corpus: Path, out: Path, cpus: int) -> dict:
    """The ingest job on a fresh local Ray of ``cpus`` CPUs, started as the job starts it; its timings."""
    import ray

    from docrerank.core.config import load_config
    from docrerank.core.runtime import configure_ray_data, init_ray
    from docrerank.render.config import IngestConfig
    from docrerank.render.run import run_ingest

    t = time.perf_counter()
    init_ray(None, num_cpus=cpus)
    configure_ray_data(progress=False)
    ray_init_s = time.perf_counter() - t
    try:
        cfg = load_config(IngestConfig, None, [f"input={corpus}", f"output={out}", f"num_workers={cpus}"])
        t = time.perf_counter()
        stats = run_ingest(cfg)
        seconds = time.perf_counter() - t
    finally:
        ray.shutdown()
    run = stats["this_run"]
    return {"pages": stats["pages"]["written"], "quarantined": stats["pages"]["quarantined"],
            "ray_init_s": round(ray_init_s, 2), "job_s": round(seconds, 2), "startup_s": run["startup_seconds"],
            "steady_pages_per_s": run["steady_pages_per_second"], "tasks": run["tasks"],
            "job_pages_per_s": round(stats["pages"]["written"] / seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("DOCRERANK_SHARED", HERE.parents[1] / "shared")))
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    load = [os.getloadavg()]
    try:
        files = build_corpus(tmp, args.shared, args.copies)
        n_plain, s_plain = plain_loop(files)
        print(f"plain loop: {n_plain} pages in {s_plain:.1f}s = {n_plain / s_plain:.2f} pages/s", flush=True)
        jobs = {}
        for cpus in args.cpus:
            r = jobs[cpus] = run_job(tmp / "corpus", tmp / f"out{cpus}", cpus)
            if r["pages"] != n_plain:
                raise RuntimeError(f"the job wrote {r['pages']} pages, the plain loop rendered {n_plain}: {r}")
            print(f"ingest job, {cpus} CPU: {r}", flush=True)
        n2, s_plain2 = plain_loop(files)
        base = (n_plain / s_plain + n2 / s_plain2) / 2
        print(f"plain loop again: {n2 / s_plain2:.2f} pages/s; baseline {base:.2f} pages/s", flush=True)
        top = max(args.cpus)
        parallel = {}
        if top > 1:
            n_par, s_par = plain_loop(files, top)
            parallel = {"processes": top, "pages_per_s": round(n_par / s_par, 2),
                        "per_cpu_ratio": round(n_par / s_par / top / base, 3)}
            print(f"plain loop, {top} processes: {parallel}", flush=True)
        load.append(os.getloadavg())
        by_cpus = {str(c): {**r, "steady_ratio_per_cpu": round(r["steady_pages_per_s"] / c / base, 3),
                            "job_ratio_per_cpu": round(r["job_pages_per_s"] / c / base, 3)} for c, r in jobs.items()}
        extra = {}
        if 1 in jobs and top > 1:
            extra["steady_scaling"] = round(jobs[top]["steady_pages_per_s"] / jobs[1]["steady_pages_per_s"], 3)
        write_result(
            "ingest_pages_per_s",
            f"ingest pages/s per CPU in the steady state ({top} CPUs) vs a plain single-process PyMuPDF loop",
            "pages/s", base, jobs[top]["steady_pages_per_s"] / top, pages=n_plain, files=len(files),
            copies=args.copies, plain_pages_per_s=[round(n_plain / s_plain, 2), round(n2 / s_plain2, 2)],
            jobs=by_cpus, plain_parallel=parallel, **extra, load_average=[[round(x, 2) for x in la] for la in load],
            settings={"dpi": DPI, "max_pixels": MAX_PIXELS, "image_format": "png", "text": True},
            note="steady = pages of the tasks finished after the first one over the time from the first to the "
                 "last; startup_s = job start to the first finished task (listing, probing, planning, starting "
                 "the workers, the first task); ray_init_s apart; job_* = the whole job without ray.init",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
