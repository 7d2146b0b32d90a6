"""Ingest throughput: the Ray job (1 and 2 CPUs) vs a plain single-process PyMuPDF loop, same files, same
settings, same run. Target: >= 0.9x the plain loop per CPU used, close to linear in CPUs.

    python bench/bench_ingest.py [--copies 4] [--pdfs ../shared/data/pdfs]

The corpus is the real PDFs of ../shared (when present) plus the project's sample corpus, each file copied
``--copies`` times with a distinct trailing comment (so content hashes differ and nothing is deduplicated).
Times exclude starting Ray (a cluster is started once, not per job) but include listing, probing,
rendering, writing Parquet and the books.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def build_corpus(dst: Path, pdfs: Path | None, copies: int) -> list[Path]:
    from docrerank.ingest.sample_corpus import make_corpus

    sources = list(make_corpus(dst / "_sample").joinpath("pdfs").glob("*.pdf"))
    if pdfs and pdfs.is_dir():
        sources += [p for p in pdfs.glob("*.pdf") if not p.name.startswith("bad__") and not p.name.startswith("enc__")]
    files = []
    for k in range(copies):
        for src in sorted(sources):
            out = dst / "corpus" / f"{k}_{src.name}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(src.read_bytes() + f"\n% copy {k}\n".encode())
            files.append(out)
    return files


def plain_loop(files: list[Path], dpi: float, max_pixels: int) -> int:
    """What a user would write: open, render each page at the same clamped scale, PNG, text."""
    import pymupdf

    from docrerank.ingest.render import render_scale

    pymupdf.TOOLS.mupdf_display_errors(False)
    n = 0
    rows = []
    for f in files:
        doc = pymupdf.open(f)
        for page in doc:
            s = render_scale(page.rect.width, page.rect.height, dpi, max_pixels)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(s, s), alpha=False, colorspace=pymupdf.csRGB)
            rows.append((pix.tobytes("png"), page.get_text("text")))
            n += 1
        doc.close()
        rows.clear()
    return n


def run_job(corpus: Path, out: Path, cpus: int) -> tuple[int, float]:
    import ray

    from docrerank.core.config import load_config
    from docrerank.ingest.config import IngestConfig
    from docrerank.ingest.run import run_ingest
    from docrerank.core.runtime import configure_ray_data

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    configure_ray_data(progress=False)
    try:
        cfg = load_config(IngestConfig, None, [f"input={corpus}", f"output={out}", f"num_workers={cpus}"])
        t = time.perf_counter()
        stats = run_ingest(cfg)
        return stats["pages"]["written"], time.perf_counter() - t
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--pdfs", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        files = build_corpus(tmp, args.pdfs, args.copies)
        t = time.perf_counter()
        n_plain = plain_loop(files, 144, 802_816)
        plain_s = time.perf_counter() - t
        base = n_plain / plain_s
        print(f"plain loop: {n_plain} pages in {plain_s:.1f}s = {base:.1f} pages/s")
        res = {}
        for cpus in (1, 2):
            n, s = run_job(tmp / "corpus", tmp / f"out{cpus}", cpus)
            assert n == n_plain, f"job wrote {n} pages, plain loop {n_plain}"
            res[cpus] = n / s
            print(f"ingest job, {cpus} CPU: {n} pages in {s:.1f}s = {res[cpus]:.1f} pages/s "
                  f"({res[cpus] / cpus / base:.2f}x plain per CPU)")
        write_result(
            "ingest_pages_per_s", "ingest pages/s per CPU (2 CPUs) vs plain single-process PyMuPDF loop",
            "pages/s", base, res[2] / 2, pages=n_plain, files=len(files),
            plain_pages_per_s=round(base, 2), job_1cpu_pages_per_s=round(res[1], 2),
            job_2cpu_pages_per_s=round(res[2], 2), ratio_1cpu=round(res[1] / base, 3),
            scaling_2_over_1=round(res[2] / res[1], 3),
            note="job time excludes ray.init; includes probe, render, Parquet writes and the books",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
