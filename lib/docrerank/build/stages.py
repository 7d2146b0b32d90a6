"""The dataset build's stages as Ray Data UDF classes: ``__init__`` gets the engine (a client of the run's model
pool, ``engines.pool_ray``, or one built here), ``__call__`` does a batch.

A batch is a pyarrow table of pages (``page_id``, ``image``, ``image_format``, ``text``) with a ``state`` struct
column: each page's typed ``PageState`` (``core.schema``), decoded into ``Page``s on the way in and encoded on the
way out, so it travels in Ray blocks between actor pools. Every stage appends or updates ``QueryRow``s and adds
its own metrics (seconds, requests, tokens, errors). A failed model call becomes a rejected row or a counted
error, never an exception that kills the batch.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from docrerank.build.config import BuildConfig
from docrerank.core.schema import PageState, QueryRow, seed_of, states_from_arrow, states_to_arrow
from docrerank.engines.parsing import capped_list, one_line
from docrerank.engines.requests import UNFINISHED_KINDS
from docrerank.engines.verify import VerifyItem, is_verified_negative, is_verified_positive, judge_threshold, verify
from docrerank.lexical.dedup import dedup
from docrerank.lexical.rules import ATTRIBUTES, UserAttribute, Vocabulary, rewrite
from docrerank.lexical.select import select
from docrerank.lexical.text import char_similarity
from docrerank.prompts import load_prompt

PAGE_COLUMNS = ["page_id", "image", "image_format", "text"]


@dataclass
class Page:
    """A page on its way through the build: its columns and its state."""

    page_id: str
    image: Optional[bytes]
    image_format: Optional[str]
    text: Optional[str]
    state: PageState


def pages_of(batch) -> list[Page]:
    """The pages of a pipeline batch (a pyarrow table with ``PAGE_COLUMNS`` and ``state``)."""
    cols = [batch.column(c).to_pylist() for c in PAGE_COLUMNS]
    states = states_from_arrow(batch.column("state"))
    return [Page(*(c[i] for c in cols), state=s) for i, s in enumerate(states)]  # type: ignore[misc]


def with_states(batch, pages: list[Page]):
    """The batch with its ``state`` column replaced by the pages' states."""
    return batch.set_column(batch.schema.get_field_index("state"), "state", states_to_arrow([p.state for p in pages]))


def engine_name(engine) -> str:
    """How a row records the engine that wrote it: a model-free engine's name or ``backend:model``."""
    return engine if isinstance(engine, str) else f"{engine.backend}:{engine.model}"


def _build(engine_cfg):
    from docrerank.engines import build_engine

    return build_engine(engine_cfg)


def _engine(engine_cfg, stage: str, pools):
    """The engine of ``stage``: a client of its model pool in a pipeline run (``engines.pool_ray``), else built here."""
    return pools.client(stage) if pools is not None else _build(engine_cfg)


def _count_result(m: Counter, res) -> None:
    m["requests"] += 1
    m["prompt_tokens"] += getattr(res, "prompt_tokens", 0) or 0
    m["completion_tokens"] += getattr(res, "completion_tokens", 0) or 0
    if res.error:
        m[f"error:{res.error.split(':', 1)[0]}"] += 1


class BuildStage:
    """Shared batch plumbing: pages in, ``process(pages, metrics)``, metrics spread over the pages, pages out."""

    name = "stage"
    batch_format = "pyarrow"

    def __call__(self, batch):
        from docrerank.core import faults

        faults.at_stage(self.name)
        pages = pages_of(batch)
        t0 = time.perf_counter()
        m: Counter = Counter()
        self.process(pages, m)
        dt = (time.perf_counter() - t0) / max(1, len(pages))
        for p in pages:
            st = p.state.metrics.setdefault(self.name, {})
            st["seconds"] = st.get("seconds", 0.0) + dt
            for k, v in m.items():  # batch totals are spread evenly over its pages
                st[k] = st.get(k, 0) + v / len(pages)
        return with_states(batch, pages)

    def process(self, pages: list[Page], m: Counter) -> None:
        """Update the pages' states in place; count into ``m``."""
        raise NotImplementedError


class PositivesStage(BuildStage):
    """Stage 1: given positives, or a VLM writes candidate questions (JSON) from the page image."""

    name = "positives"

    def __init__(self, cfg: BuildConfig, pools=None):
        self.cfg = cfg.positives
        self.reverify_given = cfg.verify.reverify_given
        self.seed = cfg.seed
        self.engine = None if self.cfg.engine == "given" else _engine(self.cfg.engine, self.name, pools)
        self.prompt = load_prompt(self.cfg.prompt)

    def process(self, pages, m):
        from docrerank.engines import GenerateRequest, SamplingParams, user

        todo = []
        for p in pages:
            for g in p.state.given:  # given positives start at the negatives, as in the paper, unless asked
                q = QueryRow.new(p.page_id, g.question, "positive", "given", answer=g.answer, model="given")
                if not self.reverify_given:
                    q.judged("kept", None)
                p.state.queries.append(q)
            if not p.state.given and self.engine is not None:
                todo.append(p)
        if not todo:
            return
        reqs = [GenerateRequest(
            [user(p.image, self.prompt["user"].format(n=self.cfg.num_candidates))],
            SamplingParams(temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                           seed=seed_of(self.seed, p.page_id, "positives")),
            json_schema=capped_list(self.prompt.get("schema"), self.cfg.num_candidates), id=p.page_id) for p in todo]
        for p, res in zip(todo, self.engine.generate(reqs)):
            _count_result(m, res)
            if not res.ok:
                p.state.errors.append(f"positives: {res.error}")
                continue
            for parsed in res.parsed or []:
                for item in (parsed or {}).get("questions", [])[: self.cfg.num_candidates]:
                    text = one_line(item.get("question", ""))
                    if text:
                        p.state.queries.append(QueryRow.new(
                            p.page_id, text, "positive", "generated", answer=one_line(item.get("answer", "")),
                            model=engine_name(self.cfg.engine), prompt_version=self.prompt["version"]))


def verify_threshold(cfg: BuildConfig, role: str) -> float:
    """The threshold the build judges a role (``positive``, ``negative``) at (``engines.verify.judge_threshold``)."""
    return judge_threshold(cfg.verify.threshold, cfg.verify.engine, role)


class VerifyStage(BuildStage):
    """Stages 2 and 4: both prompts judge every pending query of one role (``engines.verify``); positives are
    verified when both find the page answers them, negatives when neither does."""

    @staticmethod
    def name_of(role: str) -> str:
        """The stage's name for ``role``: ``verify_positives`` or ``verify_negatives`` (metrics, pools, plans)."""
        return f"verify_{role}s"

    def __init__(self, cfg: BuildConfig, role: str, pools=None):
        if role not in ("positive", "negative"):
            raise ValueError(f"VerifyStage role: got {role!r}, expected 'positive' or 'negative'")
        self.role, self.cfg, self.name = role, cfg.verify, self.name_of(role)
        self.judge = "text" if self.cfg.engine == "text" else _engine(self.cfg.engine, self.name, pools)
        self.prompt = load_prompt(self.cfg.prompt)
        self.threshold = verify_threshold(cfg, role)

    def process(self, pages, m):
        todo, items = [], []
        for p in pages:
            parents = {q.query_id: q.text for q in p.state.of("positive")}
            for q in p.state.of(self.role):
                if q.pending:
                    parent = parents.get(q.parent_id) if self.role == "negative" else None
                    todo.append(q)
                    items.append(VerifyItem(q.text, p.text or "", p.image, parent, id=q.query_id))
        # the text layer settles only negatives: a positive it finds answerable still needs the model's word
        prefilter = self.cfg.prefilter if self.role == "negative" and self.judge != "text" else "none"
        judgements = verify(items, self.judge, self.prompt, threshold=self.threshold, prefilter=prefilter)
        for by, key in (("text", "text_judged"), ("prefilter", "prefiltered")):
            if n := sum(j.by == by for j in judgements):  # (a metric appears once it happened)
                m[key] += n
        for q, j in zip(todo, judgements):
            for res in j.results:
                _count_result(m, res)
            if j.by == "prefilter":
                q.judged("rejected", "text_layer_answerable")
            elif not j.ok:
                q.judged("rejected", f"judge_error: {j.error}")
            else:
                q.p_answerable_a, q.p_answerable_b = j.p_a, j.p_b
        for p in pages:
            self._verdicts(p.state)

    def _verdicts(self, state: PageState) -> None:
        thr = self.threshold
        for q in state.of(self.role):
            if not q.pending or q.p_answerable_a is None:
                continue
            a, b = q.p_answerable_a, q.p_answerable_b
            if self.role == "positive":
                q.judged(*(("verified", None) if is_verified_positive(a, b, thr) else ("rejected", "not_answerable")))
            else:
                q.judged(*(("verified", None) if is_verified_negative(a, b, thr) else ("rejected", "answerable")))
        if self.role == "positive":  # keep the most confidently answerable, up to max_positives generated ones
            for q in state.of("positive", "verified"):
                if q.origin == "given":  # a given positive that passed re-verification: a label, never over a limit
                    q.judged("kept", None)
            ver = state.of("positive", "verified")
            ver.sort(key=lambda q: -min(q.p_answerable_a, q.p_answerable_b))
            for i, q in enumerate(ver):
                q.judged(*(("kept", None) if i < self.cfg.max_positives else ("rejected", "over_limit")))


class NegativesStage(BuildStage):
    """Stage 3: rewrite every kept positive into candidate negatives (LLM or rules), then deduplicate."""

    name = "negatives"

    def __init__(self, cfg: BuildConfig, vocabulary: dict | None = None, pools=None):
        self.cfg, self.seed = cfg.negatives, cfg.seed
        self.user_attrs = [UserAttribute(a.name, a.description, tuple(a.examples)) for a in self.cfg.user_attributes]
        self.attributes = list(self.cfg.attributes) + [a.name for a in self.user_attrs]
        self.vocab = Vocabulary.from_dict(vocabulary)
        self.engine = None if self.cfg.engine == "rules" else _engine(self.cfg.engine, self.name, pools)
        name = self.cfg.general_prompt if self.cfg.mode == "general" else self.cfg.attributes_prompt
        self.prompt = load_prompt(name)
        self.descriptions = self.prompt.get("attributes") or {}
        if not isinstance(self.descriptions, dict):
            raise ValueError(f"prompt {name!r}: 'attributes' should map attribute -> description, got "
                             f"{type(self.descriptions).__name__}")

    def attribute_text(self) -> str:
        """The prompt's list of attributes: descriptions from the prompt file's ``attributes``, the user's own."""
        desc = dict(self.descriptions)
        for a in self.user_attrs:
            desc[a.name] = f"{a.description} (e.g. {', '.join(a.examples[:4])})"
        return "\n".join(f"- {a}: {desc.get(a, a)}" for a in self.attributes)

    def _rules(self, page: Page, pos: QueryRow, m: Counter) -> list[tuple[str, str]]:
        attrs = self.attributes if self.cfg.mode == "attributes" else list(ATTRIBUTES) + [a.name for a in self.user_attrs]
        refused: Counter = Counter()
        out = rewrite(pos.text, page.text or "", self.vocab, attrs, self.cfg.num_candidates,
                      seed=f"{self.seed}|{pos.query_id}", user_attributes=self.user_attrs, counts=refused)
        for reason, n in refused.items():  # what the rules left unchanged, by attribute and reason (stats, card)
            m[f"rules:{reason}"] += n
        m["rules:no_rewrite"] += not out
        return [(r.text, r.attribute) for r in out]

    def _llm(self, jobs: list[tuple[Page, QueryRow]], m: Counter) -> list[list[tuple[str, str]]]:
        from docrerank.engines import GenerateRequest, SamplingParams, user

        reqs = []
        attributes = self.attribute_text()
        for page, pos in jobs:
            text = self.prompt["user"].format(positive=pos.text, m=self.cfg.num_candidates, attributes=attributes,
                                              attribute_names=", ".join(self.attributes))
            msgs = ([{"role": "system", "content": self.prompt["system"]}] if self.prompt.get("system") else []) + [user(text)]
            reqs.append(GenerateRequest(msgs, SamplingParams(temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                                                             seed=seed_of(self.seed, pos.query_id)),
                                        json_schema=capped_list(self.prompt.get("schema"), self.cfg.num_candidates),
                                        id=pos.query_id))
        out = []
        for (page, pos), res in zip(jobs, self.engine.generate(reqs)):
            _count_result(m, res)
            if not res.ok:
                page.state.errors.append(f"negatives: {res.error}")
                out.append([])
                continue
            items = [it for parsed in res.parsed or [] for it in (parsed or {}).get("questions", [])]
            default = "general" if self.cfg.mode == "general" else None
            cands = []
            for it in items:
                attr = one_line(it.get("attribute") or default or "unknown").lower()
                if self.cfg.mode == "attributes" and attr not in self.attributes:
                    attr = f"other:{attr[:40]}"
                cands.append((one_line(it.get("question", "")), attr))
            out.append(cands[: self.cfg.num_candidates])
        return out

    def process(self, pages, m):
        jobs = [(p, q) for p in pages for q in p.state.of("positive", "kept")]
        if not jobs:
            return
        cands = self._llm(jobs, m) if self.engine is not None else [self._rules(p, q, m) for p, q in jobs]
        origin = "rules" if self.engine is None else "generated"
        model = engine_name(self.cfg.engine)
        version = "rules-v1" if self.engine is None else self.prompt["version"]
        for (page, pos), cs in zip(jobs, cands):
            m["candidates"] += len(cs)
            for (text, attr), (_, why) in zip(cs, dedup([t for t, _ in cs], pos.text, self.cfg.near_duplicate_threshold)):
                q = QueryRow.new(page.page_id, text, "negative", origin, parent_id=pos.query_id, attribute=attr,
                                 model=model, prompt_version=version)
                if why:
                    q.judged("rejected", why)
                page.state.queries.append(q)


class SelectStage(BuildStage):
    """Stage 5: k verified negatives per kept positive; positives with too few are dropped (counted)."""

    name = "select"

    def __init__(self, cfg: BuildConfig):
        self.cfg, self.seed = cfg.select, cfg.seed

    def process(self, pages, m):
        for p in pages:
            for pos in p.state.of("positive", "kept"):
                negs = [q for q in p.state.queries if q.parent_id == pos.query_id and q.verdict == "verified"]
                if len(negs) < self.cfg.min_negatives:
                    pos.judged("rejected", f"too_few_negatives ({len(negs)})")
                    for q in negs:
                        q.judged("rejected", "positive_dropped")
                    continue
                chosen = set(select(pos.text, [q.text for q in negs], self.cfg.k, self.cfg.strategy,
                                    f"{self.seed}|{pos.query_id}", char_similarity))
                for i, q in enumerate(negs):
                    q.judged(*(("kept", "selected") if i in chosen else ("rejected", "not_selected")))


class RephraseStage(BuildStage):
    """Stage 6: rephrase a seeded fraction of kept positives (the rephrased text replaces the original)."""

    name = "rephrase"

    def __init__(self, cfg: BuildConfig, pools=None):
        self.cfg, self.seed = cfg.rephrase, cfg.seed
        self.engine = _engine(self.cfg.engine, self.name, pools)
        self.prompt = load_prompt(self.cfg.prompt)

    def process(self, pages, m):
        from docrerank.engines import GenerateRequest, SamplingParams, user
        from docrerank.lexical.text import content_tokens

        jobs = [(p, q) for p in pages for q in p.state.of("positive", "kept")
                if seed_of(self.seed, q.query_id, "rephrase") / 2**32 < self.cfg.fraction]
        if not jobs:
            return
        reqs = []
        for p, q in jobs:
            page_words = set(content_tokens(p.text or ""))
            avoid = ", ".join(sorted(w for w in set(content_tokens(q.text)) if w in page_words and not w[:1].isdigit())[:15])
            reqs.append(GenerateRequest([user(self.prompt["user"].format(query=q.text, avoid=avoid or "-"))],
                                        SamplingParams(temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                                                       seed=seed_of(self.seed, q.query_id)),
                                        json_schema=self.prompt.get("schema"), id=q.query_id))
        for (p, q), res in zip(jobs, self.engine.generate(reqs)):
            _count_result(m, res)
            if res.error and res.error.split(":", 1)[0] in UNFINISHED_KINDS:
                p.state.errors.append(f"rephrase: {res.error}")  # not a page done without its rephrasing
            text = one_line(((res.parsed or [None])[0] or {}).get("question", "")) if res.ok else ""
            if not text or dedup([text], q.text)[0][1]:
                continue  # keep the original when rephrasing failed or changed nothing
            r = QueryRow.new(p.page_id, text, "positive", "rephrased", parent_id=q.query_id, answer=q.answer,
                             model=engine_name(self.cfg.engine), prompt_version=self.prompt["version"])
            r.judged("kept", "rephrased")
            q.judged("rejected", "replaced_by_rephrase")
            for n in p.state.of("negative"):  # its negatives now belong to the rephrased positive
                if n.parent_id == q.query_id:
                    n.parent_id = r.query_id
            p.state.queries.append(r)


def model_stage_engines(cfg: BuildConfig) -> dict[str, Any]:
    """The engine (an engine config, or a model-free engine's name) of every stage that may call a model, by stage
    name, in order: the one list the job's pools (``build.run``) and its plan (``build.plan``) read."""
    return {PositivesStage.name: cfg.positives.engine, VerifyStage.name_of("positive"): cfg.verify.engine,
            NegativesStage.name: cfg.negatives.engine, VerifyStage.name_of("negative"): cfg.verify.engine,
            RephraseStage.name: cfg.rephrase.engine}
