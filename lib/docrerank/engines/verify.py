"""Two-prompt verification: does a page answer a query? Shared by the build (stages 2 and 4) and the mining
job's false-negative filter.

    judgements = verify(items, judge, prompt, threshold=0.5, prefilter="text")
    kept = [is_verified_negative(j.p_a, j.p_b, 0.5) for j in judgements]

Each item is a (page image, page text, query, parent query). The judge is an engine (its ``judge`` call, two
differently worded prompts from the ``verify`` prompt YAML, image first and query last so all checks of a page
share a prefix) or ``"text"``, the model-free text-layer judge (``lexical.textjudge``), whose two estimates play
the two prompts. Either way each item gets p(answerable) from both prompts, or an error. The decision rules are
``answerable`` (either / both prompts at or above the threshold) and its two uses by the build; the threshold
of each use is ``judge_threshold`` unless a config sets one: 0.5 for a model judge (its p(yes)), the text
judge's measured operating points (``lexical.textjudge.THRESHOLDS``) for ``text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

from docrerank.lexical.textjudge import THRESHOLDS, judge_text

RULES = ("either", "both")
PREFILTERS = ("none", "text")
USES = tuple(THRESHOLDS)  # positive (build), negative (build), mine (the mining filter)
MODEL_THRESHOLD = 0.5  # a model judge's p(yes) is a probability: 0.5 for every use
PROMPT_KEYS = ("prompt_a", "prompt_b", "answer_yes", "answer_no")


@dataclass
class VerifyItem:
    """One (page, query) check. ``parent``: for a rewritten negative, the positive it came from (the text judge
    measures the words the rewrite added); ``id``: the engine request id."""

    query: str
    text: str = ""
    image: Optional[bytes] = None
    parent: Optional[str] = None
    id: Optional[str] = None


@dataclass
class Judgement:
    """Both prompts' p(answerable) or an error. ``by``: ``text`` (the text judge), ``prefilter`` (the text layer
    showed the page answerable; no model call) or ``model``; ``results``: the model's two ``JudgeResult``s (token
    counts, error kinds)."""

    p_a: Optional[float] = None
    p_b: Optional[float] = None
    error: Optional[str] = None
    by: str = "text"
    results: tuple = ()

    @property
    def ok(self) -> bool:
        """Both prompts answered."""
        return self.error is None


def answerable(p_a: float, p_b: float, threshold: float, rule: str = "both") -> bool:
    """Whether a page judged (p_a, p_b) answers the query: ``both`` prompts at or above ``threshold``, or ``either``."""
    if rule == "both":
        return p_a >= threshold and p_b >= threshold
    if rule == "either":
        return p_a >= threshold or p_b >= threshold
    raise ValueError(f"verification rule: got {rule!r}, expected one of {RULES}")


def judge_threshold(threshold: Optional[float], judge, use: str) -> float:
    """The threshold a judge is used at for a use (``positive``, ``negative``, ``mine``): ``threshold`` when set
    (the build's ``verify.threshold``, the mining filter's ``threshold``), else the judge's default: ``"text"``
    (the text judge) gets its measured operating point, anything else (an engine or its config)
    ``MODEL_THRESHOLD``. The one resolution the build, mining and the dataset card use."""
    if use not in USES:
        raise ValueError(f"threshold use: got {use!r}, expected one of {USES}")
    if threshold is not None:
        return threshold
    return THRESHOLDS[use] if judge == "text" else MODEL_THRESHOLD


def is_verified_positive(p_a: float, p_b: float, threshold: float) -> bool:
    """The build's rule for positives: both prompts find the page answers it."""
    return answerable(p_a, p_b, threshold, "both")


def is_verified_negative(p_a: float, p_b: float, threshold: float) -> bool:
    """The build's rule for negatives: neither prompt finds the page answers it (both below the threshold)."""
    return not answerable(p_a, p_b, threshold, "either")


def text_shows_answerable(item: VerifyItem, threshold: float) -> Optional[tuple[float, float]]:
    """The text prefilter: the text judge's (p_a, p_b) when the page's text layer shows it answerable (both
    estimates at or above ``threshold``), else None. A page without a text layer tells nothing: None."""
    if not (item.text or "").strip():
        return None
    a, b = judge_text(item.query, item.text, item.parent)
    return (a, b) if answerable(a, b, threshold, "both") else None


def check_prompt(prompt: dict) -> dict:
    """``prompt`` if it has what verification needs (``PROMPT_KEYS``); ValueError naming what is missing."""
    missing = [k for k in PROMPT_KEYS if k not in prompt]
    if missing:
        raise ValueError(f"verify prompt {prompt.get('name', '?')!r}: missing keys {missing}, expected {list(PROMPT_KEYS)}")
    return prompt


def verify(items: Sequence[VerifyItem], judge: Union[Literal["text"], Any], prompt: Optional[dict] = None, *,
           threshold: float = 0.5, prefilter: str = "none") -> list[Judgement]:
    """One ``Judgement`` per item, in order.

    ``judge``: ``"text"`` or an engine (anything with ``judge(list[JudgeRequest])``), which then needs ``prompt``
    (the ``verify`` prompt YAML as loaded). ``prefilter="text"`` (engine only): items the text layer already shows
    answerable (``text_shows_answerable``) are settled without a model call (``by="prefilter"``). A failed model
    call becomes the item's error (first 200 characters), never an exception."""
    if prefilter not in PREFILTERS:
        raise ValueError(f"prefilter: got {prefilter!r}, expected one of {PREFILTERS}")
    if isinstance(judge, str):
        if judge != "text":
            raise ValueError(f"judge: got {judge!r}, expected 'text' or an engine")
        return [Judgement(*judge_text(it.query, it.text or "", it.parent), by="text") for it in items]
    check_prompt(prompt or {})
    out: list[Optional[Judgement]] = [None] * len(items)
    to_model = []
    for i, it in enumerate(items):
        shown = text_shows_answerable(it, threshold) if prefilter == "text" else None
        if shown is not None:
            out[i] = Judgement(*shown, by="prefilter")
        else:
            to_model.append(i)
    if to_model:
        from docrerank.engines import JudgeRequest, user

        reqs = [JudgeRequest([user(items[i].image, prompt[key].format(query=items[i].query))],
                             yes=prompt["answer_yes"], no=prompt["answer_no"], id=items[i].id)
                for i in to_model for key in ("prompt_a", "prompt_b")]
        res = judge.judge(reqs)
        for j, i in enumerate(to_model):
            ra, rb = res[2 * j], res[2 * j + 1]
            if ra.ok and rb.ok:
                out[i] = Judgement(ra.p_yes, rb.p_yes, by="model", results=(ra, rb))
            else:
                out[i] = Judgement(error=(ra.error or rb.error)[:200], by="model", results=(ra, rb))
    return out
