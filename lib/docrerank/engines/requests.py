"""Request and result types of the engine interface, and the error kinds a failed request reports.

A request that fails gets a result with ``error`` set (``"<kind>: <detail>"``, kinds in ``ERROR_KINDS``); a batch
never fails because one request did. Plain dataclasses: no backend, no parsing (that is ``engines.parsing``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from docrerank.engines.messages import Message, from_dicts

# ---------------------------------------------------------------------------------------------- errors
ERROR_KINDS = (
    "invalid_json",  # output is not JSON, even after the repair attempt
    "schema_mismatch",  # JSON that does not match the requested schema
    "empty_output",  # nothing but whitespace
    "refusal",  # the model declined ("I'm sorry, I can't ...")
    "truncated",  # stopped at max_tokens
    "too_long",  # longer than the request's max_chars
    "prompt_too_long",  # prompt (+ max_tokens) does not fit max_model_len
    "bad_input",  # the request itself is unusable (e.g. an image that does not decode)
    "request_failed",  # the backend answered with an error after all retries (HTTP 4xx/5xx)
    "timeout",  # no answer in time after all retries
    "bad_response",  # the backend answered something that is not a valid response
    "missing_logprobs",  # a judgement needs logprobs of the answer words that the backend did not return
    "engine_error",  # an unexpected exception inside the backend, confined to this batch
)


UNFINISHED_KINDS = ("engine_error", "timeout")
"""Errors of the engine, not of the request: the work that got one is not done (a rerun asks again), never recorded
as a finished answer."""


def make_error(kind: str, detail: str = "") -> str:
    """``"kind: detail"``; ``kind`` must be one of ``ERROR_KINDS``."""
    assert kind in ERROR_KINDS, kind
    return f"{kind}: {detail}" if detail else kind


def error_kind(error: Optional[str]) -> Optional[str]:
    """The kind part of an error string (``None`` for no error)."""
    return None if error is None else error.split(":", 1)[0]


def count_errors(results: Sequence[Any]) -> Counter:
    """Count results by error kind; ``"ok"`` counts results without an error."""
    return Counter(error_kind(r.error) or "ok" for r in results)


# --------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one generate request. ``temperature`` 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: Optional[int] = None
    stop: tuple = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, (list, str)):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature: got {self.temperature}, expected >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p: got {self.top_p}, expected in (0, 1]")
        if self.max_tokens < 1 or self.n < 1:
            raise ValueError(f"SamplingParams: max_tokens and n must be >= 1, got {self.max_tokens}, {self.n}")


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"messages: got {value!r:.80}, expected a non-empty list of messages")
    return from_dicts(value)


@dataclass
class GenerateRequest:
    """Messages to continue, how to sample, and an optional JSON schema the answer must follow."""

    messages: list
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: Optional[dict] = None
    id: Optional[str] = None
    max_chars: Optional[int] = None
    """Reject samples longer than this many characters (e.g. a "query" that is a paragraph)."""

    def __post_init__(self) -> None:
        self.messages = _messages(self.messages)
        if self.max_chars is not None and self.max_chars < 1:
            raise ValueError(f"max_chars: got {self.max_chars}, expected >= 1 or None")
        if isinstance(self.sampling, dict):
            self.sampling = SamplingParams(**self.sampling)
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise TypeError(f"json_schema: got {type(self.json_schema).__name__}, expected a dict (JSON schema)")


@dataclass
class JudgeRequest:
    """Messages that end with a yes/no question; ``yes``/``no`` are the two answer words."""

    messages: list
    yes: str = "Yes"
    no: str = "No"
    id: Optional[str] = None

    def __post_init__(self) -> None:
        self.messages = _messages(self.messages)
        if not self.yes or not self.no or self.yes == self.no:
            raise ValueError(f"JudgeRequest: answer words must be two different non-empty strings, got "
                             f"{self.yes!r}, {self.no!r}")


# ---------------------------------------------------------------------------------------------- results
@dataclass
class GenerateResult:
    """Texts (one per sample), parsed JSON per sample when a schema was given, token counts, errors.

    ``error`` is set only when no sample is usable; ``errors`` holds one entry per sample.
    """

    texts: list = field(default_factory=list)
    parsed: Optional[list] = None
    errors: list = field(default_factory=list)
    finish_reasons: list = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None
    repaired: int = 0
    id: Optional[str] = None

    @property
    def text(self) -> str:
        """The first sample's text ("" when there is none)."""
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class JudgeResult:
    """Probability of the ``yes`` word against the ``no`` word, from next-token logits/logprobs.

    ``method``: "logits" (exact, hf), "logprobs" (both words among the returned logprobs),
    "logprobs_bound" (one word missing from the top-k: its probability is bounded by the k-th),
    "answer" (an endpoint without logprobs: the one-token answer, 0 or 1).
    """

    p_yes: Optional[float] = None
    error: Optional[str] = None
    logprob_yes: Optional[float] = None
    logprob_no: Optional[float] = None
    method: str = ""
    prompt_tokens: int = 0
    id: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RawGeneration:
    """What a backend returns for one generate request, before checks (internal to engines)."""

    texts: list = field(default_factory=list)
    finish_reasons: list = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None
