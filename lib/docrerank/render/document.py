"""PDF and image files -> page rows, with no Ray: render, text layer, stable ids, reasons for failures.

Everything here is a pure function of bytes and settings, so it runs the same in a test, in an isolated
child process (:mod:`docrerank.render.child`) and on a cluster worker.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

from docrerank.core.schema import doc_id_of, page_id_of

# Why an input produced no page row. Every quarantine row carries one of these in ``error``.
REASONS = {
    "unreadable": "the file could not be read from storage",
    "empty": "zero-byte file",
    "not_a_document": "not a PDF or image PyMuPDF can open",
    "corrupt": "the document opens but its structure is broken (page tree, xref, page count)",
    "encrypted": "password protected and no configured password opens it",
    "no_pages": "the document has zero pages",
    "duplicate": "same bytes as another input (kept once, under the first URI)",
    "decompression_bomb": "declares more pixels than max_source_pixels allows",
    "absurd_page_size": "page size is not finite, not positive, or too elongated to render",
    "render_error": "PyMuPDF raised while rendering or extracting this page",
    "memory_limit": "rendering exceeded the worker's memory limit",
    "timeout": "rendering did not finish within the time limit",
    "worker_crash": "the parser crashed the worker process on this page",
    "file_changed": "the file's bytes changed between planning and rendering",
}

IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


class IngestError(Exception):
    """A failure with a reason code from :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class RenderSettings:
    """How pages become images; see ``IngestConfig`` for the meaning of each field."""

    dpi: float = 144.0
    max_pixels: int = 802_816
    image_format: str = "png"
    jpeg_quality: int = 90
    extract_text: bool = True
    max_aspect_ratio: float = 100.0
    max_source_pixels: int = 400_000_000


@dataclass
class Passwords:
    """Candidate passwords: ``by_name`` patterns (matched on the file name, then the full URI) first."""

    default: list[str] = field(default_factory=list)
    by_name: dict[str, str] = field(default_factory=dict)

    def candidates(self, source_uri: str) -> list[str]:
        """Passwords to try on ``source_uri``: those whose pattern matches its name or URI first, then the defaults."""
        name = source_uri.rsplit("/", 1)[-1]
        hits = [pw for pat, pw in self.by_name.items() if fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(source_uri, pat)]
        return list(dict.fromkeys([*hits, *self.default]))


def render_scale(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """Scale from PDF points to pixels: ``dpi / 72``, clamped so the page has at most ``max_pixels``."""
    scale = dpi / 72.0
    pixels = (width_pt * scale) * (height_pt * scale)
    if pixels > max_pixels:
        scale *= math.sqrt(max_pixels / pixels)
        # The renderer rounds the page box outwards: shrink until the rounded size fits too.
        while (math.ceil(width_pt * scale) + 1) * (math.ceil(height_pt * scale) + 1) > max_pixels:
            scale *= 0.998
    return scale


def check_page_size(width_pt: float, height_pt: float, settings: RenderSettings) -> None:
    """Raise ``absurd_page_size`` for sizes no renderer should try."""
    if not (math.isfinite(width_pt) and math.isfinite(height_pt)) or width_pt <= 0 or height_pt <= 0:
        raise IngestError("absurd_page_size", f"page size {width_pt}x{height_pt} pt is not finite and positive")
    ratio = max(width_pt, height_pt) / min(width_pt, height_pt)
    if ratio > settings.max_aspect_ratio:
        raise IngestError(
            "absurd_page_size",
            f"page size {width_pt:.0f}x{height_pt:.0f} pt has aspect ratio {ratio:.0f} > max_aspect_ratio "
            f"{settings.max_aspect_ratio:g}",
        )


def sniff_kind(data: bytes) -> str:
    """'pdf', 'png', 'jpeg' or 'unknown' from the leading bytes."""
    for magic, kind in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return kind
    if b"%PDF-" in data[:1024]:
        return "pdf"
    return "unknown"


def image_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """Declared (width, height) of a PNG or JPEG from its header alone (no decoding), or None."""
    import struct

    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if kind == "jpeg":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _check_image_bomb(data: bytes, kind: str, settings: RenderSettings) -> None:
    size = image_size(data, kind)
    if size is None:
        raise IngestError("not_a_document", f"{kind} header unreadable")
    w, h = size
    if w * h > settings.max_source_pixels:
        raise IngestError("decompression_bomb", f"image declares {w}x{h} = {w * h:,} pixels > max_source_pixels")


def open_document(data: bytes, source_uri: str, passwords: Passwords, settings: RenderSettings):
    """Open bytes with PyMuPDF; return ``(doc, kind)`` or raise IngestError with the reason."""
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)
    if not data:
        raise IngestError("empty", "zero-byte file")
    kind = sniff_kind(data)
    if kind in ("png", "jpeg"):
        _check_image_bomb(data, kind, settings)
    try:
        doc = pymupdf.open(stream=data, filetype="pdf" if kind in ("pdf", "unknown") else kind)
    except Exception as e:
        reason = "not_a_document" if kind == "unknown" else "corrupt"
        raise IngestError(reason, f"{type(e).__name__}: {e}") from None
    try:
        # PyMuPDF 2.0: read needs_pass once, before authenticate(); reading it afterwards blanks pages.
        needs_pass = bool(doc.needs_pass)
        if needs_pass:
            if not any(doc.authenticate(pw) for pw in passwords.candidates(source_uri)):
                raise IngestError("encrypted", "password protected; no configured password opens it")
        n = doc.page_count
    except IngestError:
        doc.close()
        raise
    except Exception as e:
        doc.close()
        raise IngestError("corrupt", f"{type(e).__name__}: {e}") from None
    if n <= 0:
        doc.close()
        raise IngestError("no_pages", "the document has zero pages")
    return doc, kind


def probe_document(data: bytes, source_uri: str, passwords: Passwords, settings: RenderSettings) -> dict:
    """Open a document and describe it as a documents-table row (raises IngestError)."""
    doc, kind = open_document(data, source_uri, passwords, settings)
    try:
        return {
            "doc_id": doc_id_of(data),
            "source_uri": source_uri,
            "num_pages": doc.page_count,
            "size_bytes": len(data),
            "kind": kind,
        }
    finally:
        doc.close()


def _clean_text(text: str) -> str:
    # Arrow strings must be valid UTF-8; some text layers carry lone surrogates.
    return text.encode("utf-8", "replace").decode("utf-8")


def render_page(doc, page_number: int, settings: RenderSettings) -> dict:
    """Render one 1-based page to image bytes and text; raises IngestError."""
    import pymupdf

    try:
        page = doc.load_page(page_number - 1)
        rect = page.rect
    except Exception as e:
        raise IngestError("corrupt" if "page tree" in str(e) else "render_error", f"{type(e).__name__}: {e}") from None
    check_page_size(rect.width, rect.height, settings)
    scale = render_scale(rect.width, rect.height, settings.dpi, settings.max_pixels)
    try:
        pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), alpha=False, colorspace=pymupdf.csRGB)
        if settings.image_format == "png":
            image = pix.tobytes("png")
        else:
            image = pix.tobytes("jpeg", jpg_quality=settings.jpeg_quality)
        text = _clean_text(page.get_text("text")) if settings.extract_text else ""
    except MemoryError:
        raise IngestError("memory_limit", f"page {page_number}: out of memory while rendering") from None
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        reason = "memory_limit" if "malloc" in msg.lower() or "out of memory" in msg.lower() else "render_error"
        raise IngestError(reason, msg) from None
    if pix.width < 1 or pix.height < 1:
        raise IngestError("absurd_page_size", f"renders to {pix.width}x{pix.height} px")
    return {
        "page_number": page_number,
        "width": pix.width,
        "height": pix.height,
        "dpi": float(72.0 * scale),
        "image": image,
        "image_format": settings.image_format,
        "text": text,
    }


def quarantine_row(source_uri: str, doc_id: str | None, page_number: int | None, stage: str, reason: str, message: str) -> dict:
    """A quarantine-table row."""
    assert reason in REASONS, reason
    return {
        "source_uri": source_uri,
        "doc_id": doc_id,
        "page_number": page_number,
        "stage": stage,
        "error": reason,
        "message": message[:2000],
    }


def render_document_pages(
    data: bytes, doc_row: dict, page_numbers: list[int], passwords: Passwords, settings: RenderSettings
) -> tuple[list[dict], list[dict]]:
    """Render ``page_numbers`` of one document: (page rows, quarantine rows). Never raises IngestError."""
    uri, doc_id = doc_row["source_uri"], doc_row["doc_id"]
    if doc_id_of(data) != doc_id:
        return [], [quarantine_row(uri, doc_id, p, "render", "file_changed", "content hash differs from the plan") for p in page_numbers]
    try:
        doc, _ = open_document(data, uri, passwords, settings)
    except IngestError as e:
        return [], [quarantine_row(uri, doc_id, p, "render", e.reason, str(e)) for p in page_numbers]
    rows, bad = [], []
    try:
        for p in page_numbers:
            try:
                row = render_page(doc, p, settings)
            except IngestError as e:
                bad.append(quarantine_row(uri, doc_id, p, "render", e.reason, f"page {p}: {e}"))
                continue
            row.update(page_id=page_id_of(doc_id, p), doc_id=doc_id, source_uri=uri, num_pages=doc_row["num_pages"])
            rows.append(row)
    finally:
        doc.close()
    return rows, bad
