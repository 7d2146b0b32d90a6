"""Column names and Arrow schemas of every table, in one place (see docs/design.md, "Tables")."""

from __future__ import annotations

from functools import cache


@cache
def pages_schema():
    """One row per rendered page."""
    import pyarrow as pa

    return pa.schema(
        [
            ("page_id", pa.string()),  # sha256(doc content)[:32] + "-p" + page number (1-based, 5 digits)
            ("doc_id", pa.string()),  # sha256 of the document's bytes, first 32 hex chars
            ("source_uri", pa.string()),
            ("page_number", pa.int32()),  # 1-based
            ("num_pages", pa.int32()),
            ("width", pa.int32()),  # rendered pixels
            ("height", pa.int32()),
            ("dpi", pa.float32()),  # effective DPI after the pixel cap
            ("image", pa.binary()),
            ("image_format", pa.string()),  # png | jpeg
            ("text", pa.string()),  # the page's text layer ("" for image-only pages)
        ]
    )


@cache
def quarantine_schema():
    """One row per input that could not be turned into output, with the reason."""
    import pyarrow as pa

    return pa.schema(
        [
            ("source_uri", pa.string()),
            ("doc_id", pa.string()),  # null when the bytes could not be read
            ("page_number", pa.int32()),  # null for a whole-document failure
            ("stage", pa.string()),  # probe | render | ...
            ("error", pa.string()),  # a short reason code, see ingest.REASONS
            ("message", pa.string()),
        ]
    )


@cache
def documents_schema():
    """One row per input document that could be opened: what the ingest planned to render."""
    import pyarrow as pa

    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("source_uri", pa.string()),
            ("num_pages", pa.int32()),
            ("size_bytes", pa.int64()),
            ("kind", pa.string()),  # pdf | image | other formats PyMuPDF opens
        ]
    )
