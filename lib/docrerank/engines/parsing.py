"""Reading model output: JSON parsing and repair, schema checks, refusals, stop strings, and logprob maths.

``finish_generation`` turns a backend's ``RawGeneration`` into a checked ``GenerateResult``; ``repair_request``
builds the one repair attempt for invalid JSON; ``judge_from_top_logprobs`` turns a next-token logprob map into a
``JudgeResult``. Pure Python (``jsonschema`` is imported when a schema is checked).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any, Optional, Sequence

from docrerank.engines.messages import assistant, user
from docrerank.engines.requests import GenerateRequest, GenerateResult, JudgeResult, RawGeneration, make_error


# ------------------------------------------------------------------------------------------ logprob maths
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(text: str) -> str:
    """A generated string as one clean line: control characters (raw newlines, tabs, ...) become spaces, runs of
    whitespace one space, the ends stripped."""
    return " ".join(_CONTROL.sub(" ", str(text)).split())


def capped_list(schema: Optional[dict], n: int, key: str = "questions") -> Optional[dict]:
    """``schema`` with its top-level array ``key`` limited to ``n`` items (``maxItems``): what was asked for, and
    a grammar that always ends (structured outputs stop adding items)."""
    if not schema or (schema.get("properties") or {}).get(key, {}).get("type") != "array":
        return schema
    out = dict(schema, properties=dict(schema["properties"]))
    out["properties"][key] = dict(schema["properties"][key], maxItems=n)
    return out


def parse_json(text: str, schema: Optional[dict] = None) -> tuple[Any, Optional[str]]:
    """Parse model output as JSON and check it against ``schema``; returns (value, error or None).

    Tolerates what models commonly wrap around JSON: code fences, prose before/after, trailing commas.
    """
    first_err = None
    for cand in _json_candidates(text):
        try:
            value = json.loads(cand, strict=False)  # raw tabs/newlines in strings: models and xgrammar emit them
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
        error=overall_error(errors),
        id=req.id,
    )


def overall_error(errors: list) -> Optional[str]:
    """A result's error from its samples' errors: None when some sample is usable, else the first error."""
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
