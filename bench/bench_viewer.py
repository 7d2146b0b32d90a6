"""Benchmark the dataset viewer on a large build: time until a browser shows the first pages, the viewer as written
(data files of 200 pages loaded on demand) vs the same app with every page in one data file (the baseline: what a
viewer that loads the whole dataset at once costs), both opened from disk in headless Chromium. Also reports how
long writing the viewer took (thumbnails included) and the size of what the browser loads first.

    python bench/bench_viewer.py                    # 100,000 pages, 1 positive + 3 negatives each
    python bench/bench_viewer.py --pages 20000

The build output is synthetic (real table schemas, small PNG pages with a few lines of text) and written once
under --workdir (default: a temporary directory). Lower is better for the metric (seconds); ratio = value / baseline.
Writes bench/results/viewer_first_render_s_<pages>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lib"))


def write_synthetic_build(out: Path, n_pages: int, pages_per_file: int = 2000) -> None:
    """A build output of ``n_pages`` pages (one document per 20 pages), each with a kept positive and three negatives
    (kept, not selected, answerable)."""
    import pyarrow as pa
    from PIL import Image, ImageDraw

    from docrerank.core import storage
    from docrerank.core.schema import page_status_schema, pages_schema, queries_schema, query_id

    loc = storage.resolve(str(out))
    img = Image.new("RGB", (400, 560), "white")
    draw = ImageDraw.Draw(img)
    for k in range(12):
        draw.text((30, 30 + 40 * k), f"Annual report line {k}: revenue 1,{k}00.0 million", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    png = buf.getvalue()
    for start in range(0, n_pages, pages_per_file):
        pages, status, queries = [], [], []
        for i in range(start, min(n_pages, start + pages_per_file)):
            doc = f"{i // 20:032x}"
            pid = f"{doc}-p{i % 20 + 1:05d}"
            pages.append({"page_id": pid, "doc_id": doc, "source_uri": f"/corpus/report_{i // 20:06d}.pdf",
                          "page_number": i % 20 + 1, "num_pages": 20, "width": 400, "height": 560, "dpi": 72.0,
                          "image": png, "image_format": "png", "text": ""})
            status.append({"page_id": pid, "status": "complete", "positives_kept": 1, "negatives_kept": 1,
                           "metrics": "{}", "errors": "[]"})
            pos = f"What was the total revenue of company {i // 20} in fiscal {2000 + i % 20}?"
            pq_id = query_id(pid, "positive", pos)
            base = dict(page_id=pid, origin="rules", model="rules", prompt_version="v", answer=None, parent_id=pq_id,
                        role="negative", attribute="year", p_answerable_a=0.0, p_answerable_b=0.1)
            queries += [
                {**base, "query_id": pq_id, "text": pos, "role": "positive", "origin": "given", "parent_id": None,
                 "attribute": None, "answer": "1,000.0 million", "p_answerable_a": 1.0, "p_answerable_b": 0.9,
                 "verdict": "kept", "reason": None},
                {**base, "query_id": query_id(pid, "negative", "1"), "text": pos.replace("fiscal", "fiscal year 19"),
                 "verdict": "kept", "reason": "selected"},
                {**base, "query_id": query_id(pid, "negative", "2"), "text": pos + " (2)", "verdict": "rejected",
                 "reason": "not_selected"},
                {**base, "query_id": query_id(pid, "negative", "3"), "text": pos.replace("company", "firm"),
                 "attribute": "company", "verdict": "rejected", "reason": "answerable"},
            ]
        name = f"part-{start // pages_per_file:05d}.parquet"
        storage.write_table_atomic(loc.join("pages", name), pa.Table.from_pylist(pages, pages_schema()))
        storage.write_table_atomic(loc.join("page_status", name), pa.Table.from_pylist(status, page_status_schema()))
        storage.write_table_atomic(loc.join("queries", name), pa.Table.from_pylist(queries, queries_schema()))
    (out / "stats.json").write_text(json.dumps({"pages": {"processed": n_pages, "complete": n_pages}}))


async def first_render_seconds(index: Path, profile: Path, runs: int) -> float:
    """Median seconds from navigation until the first part's pages are in the DOM, in a fresh tab per run."""
    from docrerank.testing.browser import Browser, find_chromium

    exe = find_chromium()
    if exe is None:
        raise SystemExit("no Chromium found (chromium, chromium-browser, google-chrome or $DOCRERANK_CHROMIUM)")
    times = []
    async with Browser(exe, profile) as b:
        await b.send("Page.enable", session=True)
        for _ in range(runs):
            await b.send("Page.navigate", session=True, url="about:blank")
            t0 = time.perf_counter()
            await b.send("Page.navigate", session=True, url=index.as_uri())
            await b.wait_for("document.body && document.body.getAttribute('data-ready') === 'shard-0' && "
                             "document.querySelectorAll('article.page').length > 0", timeout=600)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3, help="page loads per variant (the median is reported)")
    ap.add_argument("--workdir", help="where the synthetic build goes (kept); default: a temporary directory")
    args = ap.parse_args()
    from common import write_result

    from docrerank.report.viewer import write_viewer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-viewer-"))
    build = work / f"build-{args.pages}"
    if not (build / "stats.json").exists():
        t0 = time.perf_counter()
        write_synthetic_build(build, args.pages)
        print(f"synthetic build of {args.pages} pages: {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    done = write_viewer(str(build), pages_per_shard=200)
    write_s = time.perf_counter() - t0
    view = build / "viewer"
    sharded_first = (view / "data" / "meta.js").stat().st_size + (view / "data" / "shard-00000.js").stat().st_size
    sharded = asyncio.run(first_render_seconds(view / "index.html", work / "profile", args.runs))
    # the baseline: the same app, every page in one data file (thumbnails are already there, so this is fast)
    t0 = time.perf_counter()
    write_viewer(str(build), pages_per_shard=args.pages)
    one_file_write_s = time.perf_counter() - t0
    one_first = (view / "data" / "meta.js").stat().st_size + (view / "data" / "shard-00000.js").stat().st_size
    one_file = asyncio.run(first_render_seconds(view / "index.html", work / "profile", args.runs))
    write_viewer(str(build), pages_per_shard=200)  # leave the viewer as the project writes it
    write_result(f"viewer_first_render_s_{args.pages}", f"seconds until the first pages show, {args.pages} pages "
                 "(lower is better)", "s", one_file, sharded,
                 pages=args.pages, shards=done["shards"], write_viewer_s=round(write_s, 1),
                 write_viewer_pages_per_s=round(args.pages / write_s, 1), rewrite_one_file_s=round(one_file_write_s, 1),
                 first_load_mib={"sharded": round(sharded_first / 2**20, 2), "one_file": round(one_first / 2**20, 2)},
                 cpus=os.cpu_count())


if __name__ == "__main__":
    main()
