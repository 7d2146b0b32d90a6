"""Every table's Arrow schema and every id, in one place.

Ids are content hashes, so reruns and resumed runs give the same ids:
``doc_id_of`` (a document's bytes), ``page_id_of`` (document + page number), ``query_id`` (page + role + text),
``mined_group_id`` (a query's mined group); ``is_heldout`` is the seeded document split; ``seed_of`` derives a
32-bit seed from any keys.

The dataset build's stages pass each page's ``PageState`` (its ``QueryRow``s, per-stage metrics, given positives
and errors) as one struct column (``page_state_type()``), converted with ``states_to_arrow`` /
``states_from_arrow`` at every stage boundary, so it travels in Ray blocks between actor pools.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, Literal, Optional


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
    pages. The positive:negative weighting is the training loss's (``loss.positive_weight``), not the data's.
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


# ------------------------------------------------------------------------------------ build pipeline state
Role = Literal["positive", "negative"]
Origin = Literal["given", "generated", "rephrased", "rules", "mined"]
Verdict = Literal["verified", "kept", "rejected"]


@dataclass
class QueryRow:
    """One row of the queries table (``queries_schema()``): a candidate query and, once judged, its verdict."""

    query_id: str
    page_id: str
    text: str
    role: Role
    origin: Origin
    parent_id: Optional[str] = None
    attribute: Optional[str] = None
    answer: Optional[str] = None
    p_answerable_a: Optional[float] = None
    p_answerable_b: Optional[float] = None
    verdict: Optional[Verdict] = None  # None while pending; verified between stages
    reason: Optional[str] = None
    model: str = ""
    prompt_version: str = ""

    @classmethod
    def new(cls, page_id: str, text: str, role: Role, origin: Origin, **kw: Any) -> "QueryRow":
        """A pending candidate, its id derived from page, role and text."""
        if role not in ("positive", "negative"):
            raise ValueError(f"query role: got {role!r}, expected 'positive' or 'negative'")
        return cls(query_id(page_id, role, text), page_id, text, role, origin, **kw)

    @property
    def pending(self) -> bool:
        """Not judged yet."""
        return self.verdict is None

    def judged(self, verdict: Verdict, reason: Optional[str] = None) -> None:
        """Set the verdict and its reason."""
        self.verdict, self.reason = verdict, reason

    def as_row(self) -> dict:
        """The queries-table row."""
        return {f: getattr(self, f) for f in QUERY_FIELDS}


QUERY_FIELDS = tuple(f.name for f in fields(QueryRow))


@dataclass
class GivenPositive:
    """A question supplied with the input for a page (a positives file, a query-page set, the sample corpus)."""

    question: str
    answer: Optional[str] = None


@dataclass
class PageState:
    """What the build's stages know about one page: its candidate queries, per-stage metrics (``{stage: {name:
    value}}``: seconds, requests, tokens, ``error:<kind>``, ...), the given positives and engine errors."""

    queries: list[QueryRow] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    given: list[GivenPositive] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def of(self, role: str, verdict: Optional[str] = None) -> list[QueryRow]:
        """Queries of ``role`` with ``verdict`` (any verdict when None)."""
        return [q for q in self.queries if q.role == role and (verdict is None or q.verdict == verdict)]

    def negatives_of(self, positive: QueryRow, verdict: str) -> list[QueryRow]:
        """Negatives with ``verdict`` rewritten from ``positive`` (or from the positive it rephrases)."""
        parents = {positive.query_id, positive.parent_id}
        return [q for q in self.queries if q.role == "negative" and q.verdict == verdict and q.parent_id in parents]

    def to_arrow(self) -> dict:
        """A Python value of ``page_state_type()``."""
        return {"queries": [q.as_row() for q in self.queries],
                "metrics": [{"stage": s, "name": k, "value": float(v)} for s, m in self.metrics.items()
                            for k, v in m.items()],
                "given": [{"question": g.question, "answer": g.answer} for g in self.given],
                "errors": list(self.errors)}

    @classmethod
    def from_arrow(cls, value: dict) -> "PageState":
        """The state from a Python value of ``page_state_type()`` (``to_arrow``'s inverse)."""
        metrics: dict[str, dict[str, float]] = {}
        for m in value.get("metrics") or []:
            metrics.setdefault(m["stage"], {})[m["name"]] = m["value"]
        return cls(queries=[QueryRow(**q) for q in value.get("queries") or []], metrics=metrics,
                   given=[GivenPositive(**g) for g in value.get("given") or []], errors=list(value.get("errors") or []))


@cache
def given_type():
    """Arrow type of a page's given positives."""
    import pyarrow as pa

    return pa.list_(pa.struct([("question", pa.string()), ("answer", pa.string())]))


@cache
def page_state_type():
    """Arrow struct of a ``PageState``: the queries as queries-table rows, metrics as (stage, name, value) rows."""
    import pyarrow as pa

    return pa.struct([
        ("queries", pa.list_(pa.struct(list(queries_schema())))),
        ("metrics", pa.list_(pa.struct([("stage", pa.string()), ("name", pa.string()), ("value", pa.float64())]))),
        ("given", given_type()),
        ("errors", pa.list_(pa.string())),
    ])


def states_to_arrow(states: list[PageState]):
    """A ``page_state_type()`` array of the states."""
    import pyarrow as pa

    return pa.array([s.to_arrow() for s in states], type=page_state_type())


def states_from_arrow(column) -> list[PageState]:
    """The states of a ``page_state_type()`` array or chunked array."""
    return [PageState.from_arrow(v) for v in column.to_pylist()]
