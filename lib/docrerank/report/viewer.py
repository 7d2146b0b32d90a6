"""Write the static dataset viewer of a build output: ``<output>/viewer/index.html``, opened from disk, no server.

Layout (everything under ``viewer/``):
  index.html, viewer.js, viewer.css   the app (shipped in ``docrerank/report/static/``)
  data/meta.js                        the funnel, the filters' values, one entry per shard with its counts
  data/shard-00000.js ...             ``pages_per_shard`` pages each, loaded on demand
  thumbs/<page_id>.jpg                a small JPEG of every page (``thumb_width`` pixels wide)
Data files are JavaScript (``window.docrerankMeta = {...}`` / ``window.docrerankShard(i, {...})``) loaded with
``<script>`` tags, because browsers refuse ``fetch()`` of ``file://`` URLs. A rerun rewrites the data files and
keeps the thumbnails already made.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from docrerank.core import storage
from docrerank.report.viewer_data import facet_keys, funnel, page_order, page_record, read_build, shards

log = logging.getLogger("docrerank.viewer")

STATIC = ("index.html", "viewer.js", "viewer.css")


def _put(loc: storage.Location, data: bytes) -> None:
    """Write a file so that a reader never sees half of it (local: temp name and rename, without the fsync of
    ``storage.write_bytes_atomic``: thousands of thumbnails would wait on the disk for nothing)."""
    import pyarrow.fs as pafs

    if not isinstance(loc.fs, pafs.LocalFileSystem):
        storage.write_bytes_atomic(loc, data)
        return
    parent, name = loc.path.rsplit("/", 1)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, loc.path)


def thumbnail(image: bytes, width: int, quality: int = 70) -> bytes:
    """A JPEG of ``image`` scaled to ``width`` pixels wide (never enlarged)."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        im.draft("RGB", (width, width * 4))  # JPEG pages decode at a reduced size straight away
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality, optimize=True)
        return buf.getvalue()


def write_thumbnails(pages: storage.Location, dest: storage.Location, wanted: set[str], width: int,
                     workers: int | None = None) -> dict[str, str]:
    """A thumbnail of every page in ``wanted`` (read from the pages table ``pages``) under ``dest`` (those already
    there are kept); returns page id -> path relative to the viewer. Pages whose image cannot be decoded get none
    (and a warning with the count)."""
    import pyarrow.parquet as pq

    have = {p.rsplit("/", 1)[-1][:-4] for p in storage.list_files(dest, suffixes=(".jpg",))}
    done = {pid: f"thumbs/{pid}.jpg" for pid in wanted & have}
    todo = wanted - have
    failed: list[str] = []

    def one(pid: str, image: bytes) -> None:
        try:
            _put(dest.join(f"{pid}.jpg"), thumbnail(image, width))
            done[pid] = f"thumbs/{pid}.jpg"
        except Exception as e:  # a page the renderer wrote but PIL cannot read: shown without a thumbnail
            failed.append(f"{pid}: {type(e).__name__}: {e}")

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for f in storage.list_files(pages, suffixes=(".parquet",)) if todo else []:
            pf = pq.ParquetFile(pages.fs.open_input_file(f))
            for batch in pf.iter_batches(batch_size=64, columns=["page_id", "image"]):
                ids, images = batch.column(0).to_pylist(), batch.column(1)
                jobs = [pool.submit(one, pid, images[i].as_py()) for i, pid in enumerate(ids) if pid in todo]
                for j in jobs:
                    j.result()
    if failed:
        log.warning("viewer: %d pages have no thumbnail (image not readable), e.g. %s", len(failed), failed[0])
    return done


def _json(payload) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def write_viewer(output: str, pages_per_shard: int = 200, thumb_width: int = 300, title: str | None = None) -> dict:
    """Write (or rewrite) the viewer of the build output ``output``; returns a summary with ``index`` (its path)."""
    t0 = time.perf_counter()
    if pages_per_shard < 1 or thumb_width < 16:
        raise ValueError(f"viewer: expected pages_per_shard >= 1 and thumb_width >= 16, got {pages_per_shard} "
                         f"and {thumb_width}")
    out = storage.resolve(output)
    tables = read_build(out)
    order = page_order(tables)
    view = out.join("viewer")
    thumbs = write_thumbnails(tables.pages_loc, view.join("thumbs"), set(order), thumb_width)
    shard_meta = []
    totals: Counter = Counter()
    for i, ids in shards(order, pages_per_shard):
        records = [page_record(tables, pid, thumbs.get(pid)) for pid in ids]
        counts: Counter = Counter()
        for r in records:
            counts.update(facet_keys(r))
        totals.update(counts)
        name = f"data/shard-{i:05d}.js"
        _put(view.join(name), f"window.docrerankShard({i}, {_json({'pages': records})});\n".encode())
        first = tables.pages.get(ids[0]) or {}
        shard_meta.append({"file": name, "pages": len(ids), "counts": dict(counts),
                           "first": f"{(first.get('source_uri') or ids[0]).rsplit('/', 1)[-1]} p{first.get('page_number', '')}"})
    meta = {
        "title": title or out.uri.rstrip("/").rsplit("/", 1)[-1],
        "source": out.uri, "pages": len(order), "pages_per_shard": pages_per_shard,
        "funnel": funnel(tables.stats), "by_attribute": tables.stats.get("by_attribute", {}),
        "totals": dict(totals), "shards": shard_meta,
    }
    _put(view.join("data", "meta.js"), f"window.docrerankMeta = {_json(meta)};\n".encode())
    static = resources.files("docrerank.report") / "static"
    for name in STATIC:
        _put(view.join(name), (static / name).read_bytes())
    index = view.join("index.html").uri
    seconds = round(time.perf_counter() - t0, 2)
    log.info("viewer: %d pages in %d shards, %d thumbnails, %.1fs: %s", len(order), len(shard_meta), len(thumbs),
             seconds, index)
    return {"index": index, "pages": len(order), "shards": len(shard_meta), "thumbnails": len(thumbs),
            "seconds": seconds}


def write_viewer_or_warn(output: str, **kw) -> dict | None:
    """``write_viewer`` at the end of a build: the dataset is complete, so a viewer that cannot be written costs a
    warning (naming the command that retries it), not the build."""
    try:
        return write_viewer(output, **kw)
    except (ValueError, OSError) as e:
        log.warning("viewer not written (%s); retry with: docrerank view %s", e, output)
        return None
