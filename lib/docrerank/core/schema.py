"""Every table's Arrow schema and every id, in one place (see docs/design.md, "Tables").

Ids are content hashes, so reruns and resumed runs give the same ids:
``doc_id_of`` (a document's bytes), ``page_id_of`` (document + page number), ``query_id`` (page + role + text),
``mined_group_id`` (a query's mined group); ``is_heldout`` is the seeded document split; ``seed_of`` derives a
32-bit seed from any keys.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any


# ------------------------------------------------------------------------------------------------- ids
def doc_id_of(data: bytes) -> str:
    """Content hash of a document: the first 32 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:32]


def page_id_of(doc_id: str, page_number: int) -> str:
    """Stable page id: the document hash and the 1-based page number."""
    return f"{doc_id}-p{page_number:05d}"


def doc_of_page(page_id: str) -> str:
    """The document id of a page id."""
    return page_id.rsplit("-p", 1)[0]


def query_id(page_id: str, role: str, text: str) -> str:
    """Stable id of a candidate query: its page, role (positive|negative) and text."""
    return hashlib.sha256(f"{page_id}|{role}|{text}".encode()).hexdigest()[:24]


def mined_group_id(query_id: str) -> str:
    """Stable id of a query's document-mined group."""
    return hashlib.sha256(f"{query_id}|mined".encode()).hexdigest()[:24]


def seed_of(*keys: Any) -> int:
    """A 32-bit seed derived from ``keys`` (sampling seeds per page, per query, ...)."""
    return int(hashlib.sha256("|".join(map(str, keys)).encode()).hexdigest()[:8], 16)


def is_heldout(page_id: str, fraction: float, seed: int) -> bool:
    """Whether the page's document is in the held-out split (a seeded hash of the document id)."""
    if fraction <= 0:
        return False
    return int(hashlib.sha256(f"{seed}|{doc_of_page(page_id)}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


# ---------------------------------------------------------------------------------------------- tables


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
