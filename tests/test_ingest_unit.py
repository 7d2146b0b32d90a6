"""Pure ingest logic on PDFs generated here (known sizes, text, counts)."""

import io
import struct
import zlib

import pytest

from conftest import make_pdf
from docrerank.render.document import (IngestError, Passwords, RenderSettings, check_page_size, doc_id_of, page_id_of,
                              probe_document, render_document_pages, render_scale)
from docrerank.render.inputs import list_inputs
from docrerank.render.run import plan_tasks

S = RenderSettings()


def _doc_row(data, uri="mem://x.pdf"):
    return probe_document(data, uri, Passwords(), S)


def test_render_scale_respects_dpi_and_the_pixel_cap():
    assert render_scale(72, 72, 144, 10**9) == pytest.approx(2.0)
    s = render_scale(18000, 36000, 150, 802_816)  # the poster: ~8 GB of RGB at 150 dpi without the cap
    assert (18000 * s) * (36000 * s) <= 802_816 * 1.0001


def test_pages_have_known_counts_sizes_text_and_stable_ids(tmp_path):
    pages = [(612, 792, "Revenue was 12.5 million in 2021"), (842, 595, "Landscape table"), (300, 300, "")]
    data = make_pdf(tmp_path / "a.pdf", pages).read_bytes()
    doc = _doc_row(data)
    assert doc["num_pages"] == 3 and doc["doc_id"] == doc_id_of(data) and doc["kind"] == "pdf"
    rows, bad = render_document_pages(data, doc, [1, 2, 3], Passwords(), S)
    assert not bad and [r["page_number"] for r in rows] == [1, 2, 3]
    for r, (w, h, text) in zip(rows, pages):
        assert r["width"] * r["height"] <= S.max_pixels
        assert abs(r["width"] / r["height"] - w / h) < 0.02  # aspect kept
        assert r["image"].startswith(b"\x89PNG")
        assert text.split()[0] in r["text"] if text else r["text"].strip() == ""
        assert r["page_id"] == page_id_of(doc["doc_id"], r["page_number"])
    assert rows[2]["dpi"] == pytest.approx(144, rel=0.01)  # small page: no clamp
    assert rows[0]["dpi"] < 144  # letter page at 144 dpi exceeds the cap
    again, _ = render_document_pages(data, doc, [1], Passwords(), S)
    assert again[0]["page_id"] == rows[0]["page_id"] and again[0]["image"] == rows[0]["image"]


def test_jpeg_output(tmp_path):
    data = make_pdf(tmp_path / "a.pdf", [(612, 792, "x")]).read_bytes()
    st = RenderSettings(image_format="jpeg", jpeg_quality=70)
    rows, _ = render_document_pages(data, _doc_row(data), [1], Passwords(), st)
    assert rows[0]["image"].startswith(b"\xff\xd8\xff") and rows[0]["image_format"] == "jpeg"


def test_encrypted_with_and_without_password(tmp_path):
    data = make_pdf(tmp_path / "e.pdf", [(612, 792, "secret figures")], password="pw1").read_bytes()
    with pytest.raises(IngestError) as e:
        probe_document(data, "d/e.pdf", Passwords(default=["wrong"]), S)
    assert e.value.reason == "encrypted"
    pw = Passwords(default=["wrong"], by_name={"e.pdf": "pw1"})
    doc = probe_document(data, "d/e.pdf", pw, S)
    rows, bad = render_document_pages(data, doc, [1], pw, S)
    assert not bad and "secret" in rows[0]["text"]  # not blank: needs_pass read before authenticate


@pytest.mark.parametrize("data,reason", [(b"", "empty"), (b"hello world, not a pdf" * 10, "not_a_document"),
                                         (b"%PDF-1.4\n garbage", "corrupt")])
def test_bad_bytes_have_reasons(data, reason):
    with pytest.raises(IngestError) as e:
        probe_document(data, "x.pdf", Passwords(), S)
    assert e.value.reason == reason


def _png_header(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_image_inputs_and_image_bombs():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(buf, "PNG")
    doc = probe_document(buf.getvalue(), "scan.png", Passwords(), S)
    assert doc["num_pages"] == 1 and doc["kind"] == "png"
    rows, bad = render_document_pages(buf.getvalue(), doc, [1], Passwords(), S)
    assert not bad and rows[0]["width"] > 0
    with pytest.raises(IngestError) as e:
        probe_document(_png_header(100_000, 100_000), "bomb.png", Passwords(), S)
    assert e.value.reason == "decompression_bomb"


def test_absurd_page_sizes():
    for w, h in [(0, 100), (float("inf"), 10), (10, 5000)]:
        with pytest.raises(IngestError) as e:
            check_page_size(w, h, S)
        assert e.value.reason == "absurd_page_size"
    check_page_size(18000, 36000, S)  # huge but sane: rendered under the pixel cap


def test_file_changed_is_quarantined(tmp_path):
    a = make_pdf(tmp_path / "a.pdf", [(612, 792, "a")]).read_bytes()
    b = make_pdf(tmp_path / "b.pdf", [(612, 792, "b")]).read_bytes()
    rows, bad = render_document_pages(b, _doc_row(a), [1], Passwords(), S)
    assert not rows and bad[0]["error"] == "file_changed"


def test_plan_splits_big_documents_and_packs_small_ones():
    docs = [{"doc_id": "book", "num_pages": 350}] + [{"doc_id": f"memo{i}", "num_pages": 1} for i in range(20)]
    tasks = plan_tasks(docs, {"book": {1, 2}}, pages_per_task=16)
    sizes = [sum(len(i["pages"]) for i in t["items"]) for t in tasks]
    assert max(sizes) == 16 and sum(sizes) == 348 + 20
    book_pages = [p for t in tasks for i in t["items"] if i["doc"]["doc_id"] == "book" for p in i["pages"]]
    assert book_pages == list(range(3, 351))
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    assert [t["task_id"] for t in plan_tasks(docs, {"book": {1, 2}}, 16)] == [t["task_id"] for t in tasks]


def test_list_inputs_dir_glob_and_list_file(tmp_path):
    for n in ["a.pdf", "b.PDF", "c.txt", "sub/d.pdf", ".hidden.pdf"]:
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    got = list_inputs(str(tmp_path), [".pdf"])
    assert [p.rsplit("/", 1)[1] for p in got] == ["a.pdf", "b.PDF", "d.pdf"]
    assert [p.rsplit("/", 1)[1] for p in list_inputs(f"{tmp_path}/*.pdf", [".pdf"])] == ["a.pdf"]
    lst = tmp_path / "files.txt"
    lst.write_text("# comment\na.pdf\nsub/d.pdf\n")
    assert [p.rsplit("/", 1)[1] for p in list_inputs(str(lst), [".pdf"])] == ["a.pdf", "d.pdf"]
    with pytest.raises(ValueError, match="nothing found"):
        list_inputs(str(tmp_path / "nope"), [".pdf"])


def test_sample_corpus_is_byte_identical_everywhere(tmp_path):
    """Stable bytes -> stable page ids -> reproducible builds across machines and reruns."""
    from docrerank.render.sample_corpus import make_corpus

    a, b = make_corpus(tmp_path / "a", num_companies=1), make_corpus(tmp_path / "b", num_companies=1)
    files = sorted(p.name for p in (a / "pdfs").glob("*.pdf"))
    assert len(files) == 3
    assert all((a / "pdfs" / f).read_bytes() == (b / "pdfs" / f).read_bytes() for f in files)
    assert (a / "questions.jsonl").read_text() == (b / "questions.jsonl").read_text()


def test_books_balance_and_the_summary_table():
    from docrerank.render.books import OutputState, balance, summary_table

    st = OutputState(documents={"d1": {"doc_id": "d1", "source_uri": "a.pdf", "num_pages": 3}},
                     doc_quarantine={"b.pdf": {"error": "empty"}}, page_quarantine={"d1": {2}},
                     pages_done={"d1": {1, 3}}, page_rows=2)
    st.page_quarantine_reasons["timeout"] += 1
    books = balance(["a.pdf", "b.pdf"], st)
    assert books.balanced and books.documents_complete == 0 and books.pages_written == 2
    lines = summary_table(books.to_dict()).splitlines()
    assert lines[2].split() == ["inputs", "2", "3"] and lines[-1].split() == ["books", "balance", "yes"]
    assert ["empty", "1"] in [ln.split() for ln in lines] and ["timeout", "1"] in [ln.split() for ln in lines]
    st.pages_done["d1"].add(2)  # a page both written and quarantined, and one input nowhere
    books = balance(["a.pdf", "b.pdf", "c.pdf"], st)
    assert not books.balanced and len(books.problems) == 3  # both, c.pdf missing, 3 distinct pages for 2 rows
    assert summary_table(books.to_dict()).splitlines()[-1].split() == ["books", "balance", "NO"]
