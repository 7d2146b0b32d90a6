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


@cache
def queries_schema():
    """Every candidate query of the dataset build (long format), with both verifiers' scores and the verdict."""
    import pyarrow as pa

    return pa.schema(
        [
            ("query_id", pa.string()),  # sha256(page_id + role + text)[:24]
            ("page_id", pa.string()),
            ("text", pa.string()),
            ("role", pa.string()),  # positive | negative
            ("origin", pa.string()),  # given | generated | rephrased | rules | mined
            ("parent_id", pa.string()),  # a negative's positive (query_id); null for positives
            ("attribute", pa.string()),  # what a negative changed (year, company, ..., general); null otherwise
            ("answer", pa.string()),  # a positive's short answer when known
            ("p_answerable_a", pa.float32()),  # verifier prompt A
            ("p_answerable_b", pa.float32()),  # verifier prompt B
            ("verdict", pa.string()),  # kept | rejected
            ("reason", pa.string()),  # why rejected (or "selected"/"not_selected" for verified negatives)
            ("model", pa.string()),  # the engine that wrote the text
            ("prompt_version", pa.string()),
        ]
    )


@cache
def examples_schema():
    """Training examples: groups of one positive and k negatives, never split across batches.

    Generated groups share one page and hold 1 + k queries; mined groups share one query and hold 1 + k
    pages. ``weight`` carries the positive:negative weighting (e.g. 3:1 so both sides weigh the same).
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("group_id", pa.string()),
            ("query", pa.string()),
            ("page_id", pa.string()),
            ("image", pa.binary()),
            ("image_format", pa.string()),
            ("text", pa.string()),  # the page's text layer (for the text backbone)
            ("label", pa.int8()),  # 1 positive, 0 negative
            ("kind", pa.string()),  # positive | generated | mined
            ("weight", pa.float32()),
            ("attribute", pa.string()),  # for generated negatives: what changed
        ]
    )


@cache
def export_schema():
    """The published ColHNQue layout: one row per page."""
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.binary()),
            ("positive_queries", pa.list_(pa.string())),
            ("negative_queries", pa.list_(pa.list_(pa.string()))),
            ("answer", pa.list_(pa.string())),
        ]
    )


@cache
def page_status_schema():
    """One row per page the dataset build finished: how it ended and what each stage spent on it.

    Written last for each shard, so it doubles as the build's resume marker."""
    import pyarrow as pa

    return pa.schema(
        [
            ("page_id", pa.string()),
            ("status", pa.string()),  # complete | incomplete | no_positive
            ("positives_kept", pa.int32()),
            ("negatives_kept", pa.int32()),
            ("metrics", pa.string()),  # JSON: {stage: {seconds, requests, prompt_tokens, completion_tokens, error:...}}
            ("errors", pa.string()),  # JSON list of engine errors met on this page
        ]
    )
