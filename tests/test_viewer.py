"""The dataset viewer: what it reads from a build output, its shards and counts, and the page itself in a real
headless Chromium (Debian's ``chromium``, driven over the DevTools protocol): pages, queries and verdicts render, a
filter changes what is shown, and a screenshot is saved under the test's temporary directory."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from pathlib import Path

import pytest

from docrerank.core import storage
from docrerank.core.schema import page_status_schema, pages_schema, queries_schema, query_id
from docrerank.testing.browser import Browser, find_chromium
from docrerank.report.viewer import write_viewer

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ a hand-made build output
def _png(w: int = 600, h: int = 800) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).rectangle([40, 40, w - 40, 120], fill="navy")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _write_build(out: Path, n_pages: int, broken: set[int] = frozenset()) -> None:
    """A build output of ``n_pages`` pages, each with one kept positive, a kept and a rejected ``year`` negative and a
    rejected ``company`` one; page 1 has no positive (status no_positive)."""
    import pyarrow as pa

    loc = storage.resolve(str(out))
    pages, status, queries = [], [], []
    for i in range(1, n_pages + 1):
        pid = f"{'d' * 32}-p{i:05d}"
        pages.append({"page_id": pid, "doc_id": "d" * 32, "source_uri": "/data/report.pdf", "page_number": i,
                      "num_pages": n_pages, "width": 600, "height": 800, "dpi": 72.0,
                      "image": b"not an image" if i in broken else _png(), "image_format": "png", "text": f"page {i}"})
        if i == 1:
            status.append({"page_id": pid, "status": "no_positive", "positives_kept": 0, "negatives_kept": 0,
                           "metrics": "{}", "errors": "[]"})
            continue
        pos = f"What was the revenue in {2000 + i}?"
        pq_id = query_id(pid, "positive", pos)
        row = dict(page_id=pid, origin="rules", model="rules", prompt_version="v", answer=None, p_answerable_a=0.0,
                   p_answerable_b=0.1)
        queries += [
            {**row, "query_id": pq_id, "text": pos, "role": "positive", "origin": "given", "parent_id": None,
             "attribute": None, "answer": f"{i} million", "p_answerable_a": 1.0, "p_answerable_b": 0.9,
             "verdict": "kept", "reason": None},
            {**row, "query_id": query_id(pid, "negative", "a"), "text": f"What was the revenue in {1900 + i}?",
             "role": "negative", "parent_id": pq_id, "attribute": "year", "verdict": "rejected", "reason": "not_selected"},
            {**row, "query_id": query_id(pid, "negative", "b"), "text": f"What was Acme's revenue in {2000 + i}?",
             "role": "negative", "parent_id": pq_id, "attribute": "company", "verdict": "rejected", "reason": "answerable",
             "p_answerable_a": 0.8, "p_answerable_b": 0.7},
            {**row, "query_id": query_id(pid, "negative", "c"), "text": f"What was the revenue in {2100 + i}?",
             "role": "negative", "parent_id": pq_id, "attribute": "year", "verdict": "kept", "reason": "selected"},
        ]
        status.append({"page_id": pid, "status": "complete", "positives_kept": 1, "negatives_kept": 1,
                       "metrics": "{}", "errors": "[]"})
    storage.write_table_atomic(loc.join("pages", "part-0.parquet"), pa.Table.from_pylist(pages, pages_schema()))
    storage.write_table_atomic(loc.join("page_status", "part-0.parquet"), pa.Table.from_pylist(status, page_status_schema()))
    storage.write_table_atomic(loc.join("queries", "part-0.parquet"), pa.Table.from_pylist(queries, queries_schema()))
    (out / "stats.json").write_text(json.dumps({"pages": {"processed": n_pages, "complete": n_pages - 1, "no_positive": 1},
                                                "positives": {"candidates": n_pages - 1, "kept": n_pages - 1},
                                                "negatives": {"candidates": 3 * (n_pages - 1), "kept": n_pages - 1},
                                                "groups": n_pages - 1, "by_attribute": {"year": {"candidates": 2}}}))


def _shard(path: Path) -> tuple[int, dict]:
    m = re.fullmatch(r"window\.docrerankShard\((\d+), (.*)\);\n", path.read_text(), re.S)
    assert m, path
    return int(m.group(1)), json.loads(m.group(2))


def _meta(view: Path) -> dict:
    text = (view / "data" / "meta.js").read_text()
    assert text.startswith("window.docrerankMeta = ") and text.endswith(";\n")
    return json.loads(text[len("window.docrerankMeta = "):-2])


def test_shards_records_and_counts(tmp_path):
    out = tmp_path / "build"
    _write_build(out, 7, broken={5})
    done = write_viewer(str(out), pages_per_shard=3, thumb_width=120)
    view = out / "viewer"
    assert done["index"] == str(view / "index.html") and done["pages"] == 7 and done["shards"] == 3
    assert done["thumbnails"] == 6  # page 5's image cannot be decoded: no thumbnail, the page is still shown
    meta = _meta(view)
    assert [s["pages"] for s in meta["shards"]] == [3, 3, 1] and meta["pages"] == 7
    assert meta["totals"]["neg|year|kept|selected"] == 6 and meta["totals"]["status|no_positive"] == 1
    assert meta["funnel"][0] == ["pages processed", 7]
    pages = []
    for i, s in enumerate(meta["shards"]):
        idx, data = _shard(view / s["file"])
        assert idx == i and len(data["pages"]) == s["pages"]
        pages += data["pages"]
    assert [p["page"] for p in pages] == list(range(1, 8))  # reading order across shards
    first, second = pages[0], pages[1]
    assert first["status"] == "no_positive" and first["positives"] == []
    [pos] = second["positives"]
    assert pos["text"] == "What was the revenue in 2002?" and pos["answer"] == "2 million" and pos["pa"] == 1.0
    # kept first, then verified but not selected, then the rejected ones
    assert [(n["verdict"], n["reason"]) for n in pos["negatives"]] == [
        ("kept", "selected"), ("rejected", "not_selected"), ("rejected", "answerable")]
    assert pages[4]["thumb"] is None and second["thumb"] == f"thumbs/{second['id']}.jpg"
    from PIL import Image

    with Image.open(view / second["thumb"]) as im:
        assert im.format == "JPEG" and im.width == 120 and im.height == 160
    # a rerun keeps the thumbnails and rewrites the data
    stamp = (view / second["thumb"]).stat().st_mtime_ns
    assert write_viewer(str(out), pages_per_shard=10)["shards"] == 1
    assert (view / second["thumb"]).stat().st_mtime_ns == stamp and len(_meta(view)["shards"]) == 1


def test_not_a_build_output_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="expected a jobs.build_dataset output, found no page_status/"):
        write_viewer(str(tmp_path))


def test_view_job_takes_the_output_as_argument(tmp_path, capsys):
    from jobs.view_dataset import main

    out = tmp_path / "build"
    _write_build(out, 3)
    assert main([str(out), "pages_per_shard=2"]) == 0
    printed = capsys.readouterr().out
    assert f"open {out / 'viewer' / 'index.html'}" in printed and "3 pages in 2 parts" in printed
    assert main([str(tmp_path / "nothing")]) == 1


def test_the_viewer_reads_the_pages_table_the_build_recorded(tmp_path, capsys):
    """A build from ``pages=`` has no ``<output>/pages/``: the viewer reads the table stats.json records."""
    import shutil

    from jobs.cli import main

    out = tmp_path / "build"
    _write_build(out, 3)
    elsewhere = tmp_path / "ingested" / "pages"
    shutil.move(str(out / "pages"), str(elsewhere))
    stats = json.loads((out / "stats.json").read_text())
    (out / "stats.json").write_text(json.dumps({**stats, "sources": {"pages": str(elsewhere)}}))
    assert main(["view", str(out)]) == 0
    assert "3 pages in 1 parts, 3 thumbnails" in capsys.readouterr().out
    assert len(list((out / "viewer" / "thumbs").glob("*.jpg"))) == 3
    shutil.rmtree(elsewhere)
    shutil.rmtree(out / "viewer")
    assert main(["view", str(out)]) == 1
    assert f"the pages table of this build is not found (stats.json names {elsewhere}" in capsys.readouterr().err


def test_a_build_from_a_pages_table_gets_its_viewer(sample_build, tmp_path, capsys):
    from docrerank.build.config import BuildConfig
    from docrerank.build.run import run_build
    from docrerank.core.config import load_config
    from jobs.cli import main

    src, _ = sample_build
    out = tmp_path / "from_pages"
    stats = run_build(load_config(BuildConfig, REPO / "jobs/configs/build_local.yaml", [
        f"output={out}", "input=null", f"pages={src / 'pages'}", "holdout_fraction=0", "limit_pages=6",
        f"positives_file={src / 'sample_corpus' / 'questions.jsonl'}"]))
    assert stats["sources"]["pages"] == str(src / "pages") and not (out / "pages").exists()
    meta = _meta(out / "viewer")  # written by the build
    assert meta["pages"] == stats["pages"]["processed"] == 6
    assert len(list((out / "viewer" / "thumbs").glob("*.jpg"))) == 6
    assert main(["view", str(out)]) == 0  # the command the build suggests
    assert "6 pages in 1 parts, 6 thumbnails" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- headless Chromium
# What the page shows, read from its DOM: pages, positive queries, negatives by verdict and attribute.
SHOWN = """(() => ({
  pages: document.querySelectorAll("article.page").length,
  thumbs: [...document.querySelectorAll("img.thumb")].filter(i => i.complete && i.naturalWidth > 0).length,
  positives: [...document.querySelectorAll(".positive .q .text")].map(e => e.textContent),
  verdicts: [...document.querySelectorAll("table.negatives td.verdict")].map(e => e.textContent),
  attributes: [...document.querySelectorAll("table.negatives td.attribute")].map(e => e.textContent),
  funnel: document.querySelectorAll("#funnel tr").length,
  shown: document.getElementById("shown").textContent,
  hash: location.hash,
}))()"""


def _select(id_: str, value: str) -> str:
    return (f"(() => {{ const s = document.getElementById({json.dumps(id_)}); s.value = {json.dumps(value)};"
            f" s.dispatchEvent(new Event('change')); return s.value; }})()")


@pytest.fixture(scope="module")
def sample_build(ray_local, tmp_path_factory):
    """The local default's build (jobs/configs/build_local.yaml) on two reports of the sample corpus: the build writes
    its viewer at the end."""
    from docrerank.build.config import BuildConfig
    from docrerank.build.run import run_build
    from docrerank.core.config import load_config

    out = tmp_path_factory.mktemp("viewer") / "build"
    stats = run_build(load_config(BuildConfig, REPO / "jobs/configs/build_local.yaml",
                                  [f"output={out}", "input=sample:2", "holdout_fraction=0"]))
    return out, stats


@pytest.mark.slow
def test_the_build_writes_the_viewer_and_it_renders_in_chromium(sample_build, tmp_path):
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (chromium, chromium-browser, google-chrome or $DOCRERANK_CHROMIUM); "
                    ".ci/install installs Debian's chromium")
    out, stats = sample_build
    index = out / "viewer" / "index.html"
    assert index.exists(), "the build did not write its viewer"
    kept_total = stats["negatives"]["kept"]

    async def drive():
        async with Browser(exe, tmp_path / "profile") as b:
            await b.send("Page.enable", session=True)
            await b.send("Page.navigate", session=True, url=index.as_uri())
            await b.wait_for("document.body && document.body.getAttribute('data-ready') === 'shard-0'")
            await b.wait_for("[...document.querySelectorAll('img.thumb')].slice(0, 2).every(i => i.complete)")
            before = await b.js(SHOWN)
            assert await b.js(_select("f-verdict", "kept")) == "kept"
            kept = await b.js(SHOWN)
            assert await b.js(_select("f-attribute", "year")) == "year"
            year_kept = await b.js(SHOWN)
            shot = await b.send("Page.captureScreenshot", session=True, format="png")
            return before, kept, year_kept, base64.b64decode(shot["data"])

    before, kept, year_kept, png = asyncio.run(drive())
    pages = stats["pages"]["processed"]
    assert before["pages"] == pages and before["thumbs"] >= 1 and before["funnel"] >= 10
    assert len(before["positives"]) == stats["positives"]["kept"]
    assert any(p.startswith("What was") for p in before["positives"])
    assert set(before["verdicts"]) == {"kept", "rejected"} and before["verdicts"].count("kept") == kept_total
    # verdict = kept: only the kept negatives remain, and pages without any are hidden
    assert set(kept["verdicts"]) == {"kept"} and len(kept["verdicts"]) == kept_total
    assert kept["pages"] == stats["pages"]["complete"] + stats["pages"].get("incomplete", 0) < pages
    assert "verdict=kept" in kept["hash"]
    # and attribute = year on top of it
    year = stats["by_attribute"]["year"]["kept"]
    assert set(year_kept["attributes"]) == {"year"} and len(year_kept["verdicts"]) == year < kept_total
    assert f"{year} matching negatives in the whole dataset" in year_kept["shown"]
    shot = tmp_path / "viewer.png"
    shot.write_bytes(png)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1400, 1800)
        assert sum(1 for n in im.convert("L").resize((70, 90)).histogram() if n) > 20  # not a blank page
