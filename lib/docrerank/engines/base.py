"""The engine interface: requests, results, errors, JSON parsing and repair, the backend registry.

Every backend implements ``generate(requests) -> list[GenerateResult]`` and
``judge(requests) -> list[JudgeResult]``. A request that fails gets a result with ``error`` set
(``"<kind>: <detail>"``, kinds in ``ERROR_KINDS``); a batch never fails because one request did.
The typed engine config (``EngineConfig`` and its option classes) lives in ``docrerank.engines.config``
and is re-exported here.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol, Sequence, Union

# Re-exported for existing imports (``from docrerank.engines.base import EngineConfig``); defined in config.py.
from docrerank.engines.config import (  # noqa: F401
    EngineConfig,
    HFOptions,
    HTTPOptions,
    RayStageConfig,
    VLLMOptions,
)
from docrerank.engines.messages import Message, assistant, from_dicts, user

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


def p_yes_from_logprobs(lp_yes: float, lp_no: float) -> float:
    """P(yes) restricted to the two answer tokens: ``softmax([lp_yes, lp_no])[0]`` (logits work too)."""
    return 1.0 / (1.0 + math.exp(lp_no - lp_yes))


def judge_from_top_logprobs(top: dict, yes: str, no: str) -> JudgeResult:
    """Judgement from a next-token ``{token_text: logprob}`` map (tokens compared after stripping spaces).

    Both words present: exact. One present: the missing one's logprob is bounded by the smallest returned
    (method "logprobs_bound"). Neither: a ``missing_logprobs`` error.
    """
    def best(word: str) -> Optional[float]:
        vals = [lp for tok, lp in top.items() if _clean_token(tok) == word]
        return max(vals) if vals else None

    ly, ln = best(yes), best(no)
    if ly is None and ln is None:
        shown = ", ".join(repr(t) for t in list(top)[:5])
        return JudgeResult(error=make_error("missing_logprobs", f"neither {yes!r} nor {no!r} in top tokens [{shown}]"))
    method = "logprobs"
    if ly is None or ln is None:
        floor = min(top.values())
        ly, ln, method = (floor if ly is None else ly), (floor if ln is None else ln), "logprobs_bound"
    return JudgeResult(p_yes=p_yes_from_logprobs(ly, ln), logprob_yes=ly, logprob_no=ln, method=method)


def _clean_token(tok: str) -> str:
    return tok.replace("Ġ", " ").replace("▁", " ").strip()


# ------------------------------------------------------------------------------------ output checking
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, |i cannot|i can'?t|i can not|i'?m unable|i am unable|"
    r"i'?m not able|i am not able|as an ai\b|i won'?t be able)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """True when the text opens like a refusal ("I'm sorry, ...", "I cannot ...", "As an AI ...")."""
    return bool(_REFUSAL.match(text))


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; returns (text, whether it was cut)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def _json_candidates(text: str) -> list[str]:
    s = text.strip()
    out = [s]
    m = _FENCE.match(s)
    if m:
        out.append(m.group(1))
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if starts:
        start = min(starts)
        end = max(s.rfind("}"), s.rfind("]"))
        if end > start:
            out.append(s[start : end + 1])
    out += [re.sub(r",\s*([}\]])", r"\1", c) for c in list(out)]  # trailing commas
    return out


def parse_json(text: str, schema: Optional[dict] = None) -> tuple[Any, Optional[str]]:
    """Parse model output as JSON and check it against ``schema``; returns (value, error or None).

    Tolerates what models commonly wrap around JSON: code fences, prose before/after, trailing commas.
    """
    first_err = None
    for cand in _json_candidates(text):
        try:
            value = json.loads(cand)
        except json.JSONDecodeError as err:
            first_err = first_err or str(err)
            continue
        mismatch = schema_errors(value, schema) if schema else None
        return (value, None) if mismatch is None else (value, make_error("schema_mismatch", mismatch))
    return None, make_error("invalid_json", first_err or "no JSON found")


def schema_errors(value: Any, schema: dict) -> Optional[str]:
    """First violation of ``schema`` by ``value`` (None if valid), via ``jsonschema``."""
    import jsonschema  # a dependency of ray[data]; imported here to keep `import docrerank` light

    cls = jsonschema.validators.validator_for(schema)
    err = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    if err is None:
        return None
    where = "/".join(str(p) for p in err.absolute_path) or "<root>"
    return f"{where}: {err.message[:200]}"


def check_sample(text: str, finish_reason: str, schema: Optional[dict], reject_refusals: bool = True,
                 max_chars: Optional[int] = None) -> tuple[Any, Optional[str]]:
    """Check one generated sample; returns (parsed JSON or None, error or None)."""
    if not text.strip():
        return None, make_error("empty_output", f"finish_reason={finish_reason}")
    if reject_refusals and is_refusal(text):
        return None, make_error("refusal", text.strip()[:80])
    if max_chars is not None and len(text) > max_chars:
        return None, make_error("too_long", f"{len(text)} characters > max_chars {max_chars}")
    if schema is not None:
        value, err = parse_json(text, schema)
        if err and finish_reason == "length":
            return None, make_error("truncated", f"stopped at max_tokens; {err}")
        return (value, None) if err is None else (None, err)
    if finish_reason == "length":
        return None, make_error("truncated", "stopped at max_tokens")
    return None, None


def finish_generation(req: GenerateRequest, raw: RawGeneration, reject_refusals: bool = True) -> GenerateResult:
    """Turn a backend's raw output into a checked result: stop strings, empty, refusal, JSON, truncation."""
    if raw.error is not None:
        return GenerateResult(error=raw.error, prompt_tokens=raw.prompt_tokens, id=req.id)
    texts, reasons, parsed, errors = [], [], [], []
    for text, reason in zip(raw.texts, raw.finish_reasons):
        text, cut = apply_stop(text, req.sampling.stop)
        reason = "stop" if cut else reason
        value, err = check_sample(text, reason, req.json_schema, reject_refusals, req.max_chars)
        texts.append(text)
        reasons.append(reason)
        parsed.append(value)
        errors.append(err)
    return GenerateResult(
        texts=texts,
        parsed=parsed if req.json_schema is not None else None,
        errors=errors,
        finish_reasons=reasons,
        prompt_tokens=raw.prompt_tokens,
        completion_tokens=raw.completion_tokens,
        error=_overall_error(errors),
        id=req.id,
    )


def _overall_error(errors: list) -> Optional[str]:
    if not errors:
        return make_error("empty_output", "no samples")
    return None if any(e is None for e in errors) else errors[0]


REPAIR_PROMPT = (
    "Your previous reply is not valid for the required JSON schema ({reason}). Reply again with only the "
    "corrected JSON, no other text. The JSON schema is: {schema}"
)


def repair_request(req: GenerateRequest, bad_text: str, reason: str) -> GenerateRequest:
    """The one repair attempt: the conversation, the bad answer, and a request to fix it (greedy, n=1)."""
    msg = REPAIR_PROMPT.format(reason=reason, schema=json.dumps(req.json_schema, separators=(",", ":")))
    return replace(
        req,
        messages=list(req.messages) + [assistant(bad_text), user(msg)],
        sampling=replace(req.sampling, n=1, temperature=0.0, stop=()),
    )


# ------------------------------------------------------------------------------------------ the engine
class Engine(Protocol):
    """What every backend provides; pipelines depend only on this."""

    def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]: ...

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]: ...

    def close(self) -> None: ...


class TextEngine:
    """Shared ``generate`` for backends that produce raw text: checks outputs and runs one JSON repair pass.

    Subclasses implement ``_generate_raw(requests) -> list[RawGeneration]`` and ``judge``.
    """

    json_repair: bool = True
    reject_refusals: bool = True

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def _generate_raw(self, requests: Sequence[GenerateRequest]) -> list[RawGeneration]:
        raise NotImplementedError

    def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Generate for every request; a failed request gets a result with ``error`` set."""
        requests = list(requests)
        raws = self._generate_raw(requests)
        assert len(raws) == len(requests), (len(raws), len(requests))
        results = [finish_generation(q, r, self.reject_refusals) for q, r in zip(requests, raws)]
        if self.json_repair:
            self._repair(requests, results)
        self.stats.update("generate_" + k for k in count_errors(results).elements())
        return results

    def _repair(self, requests: list[GenerateRequest], results: list[GenerateResult]) -> None:
        todo = []  # (result index, sample index, repair request)
        for i, (req, res) in enumerate(zip(requests, results)):
            for j, err in enumerate(res.errors):
                if error_kind(err) in ("invalid_json", "schema_mismatch"):
                    todo.append((i, j, repair_request(req, res.texts[j], err)))
        if not todo:
            return
        raws = self._generate_raw([t[2] for t in todo])
        for (i, j, rreq), raw in zip(todo, raws):
            fixed = finish_generation(rreq, raw, self.reject_refusals)
            res = results[i]
            res.prompt_tokens += fixed.prompt_tokens
            res.completion_tokens += fixed.completion_tokens
            if fixed.ok:
                res.texts[j], res.parsed[j], res.errors[j] = fixed.text, fixed.parsed[0], None
                res.finish_reasons[j] = fixed.finish_reasons[0]
                res.repaired += 1
            else:
                res.errors[j] = f"{res.errors[j]} (after one repair attempt: {fixed.error})"
            res.error = _overall_error(res.errors)


# ------------------------------------------------------------------------------------------ registry
Factory = Callable[[EngineConfig], Engine]
# Backend name -> factory, or a lazy "module:attr" path to one; see docrerank.engines.register_backend.
_BACKENDS: dict[str, Union[str, Factory]] = {
    "hf": "docrerank.engines.hf:HFEngine",
    "vllm": "docrerank.engines.vllm:VLLMEngine",
    "http": "docrerank.engines.http:HTTPEngine",
}
