"""The dataset build's stages as Ray Data UDF classes: ``__init__`` loads the engine, ``__call__`` does a batch.

A batch is a set of pages (columns ``page_id``, ``image``, ``image_format``, ``text``, ``state``), where
``state`` is JSON: ``{"queries": [rows of the queries table], "metrics": {stage: {...}}, "given": [...]}``.
Every stage appends or updates query rows and adds its own metrics (seconds, requests, tokens, errors).
A failed model call becomes a rejected row or a counted error, never an exception that kills the batch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any

from docrerank.build.config import BuildConfig
from docrerank.core.schema import query_id, seed_of
from docrerank.core.raydata import batch_rows as _batch_rows
from docrerank.prompts import load_prompt
from docrerank.lexical.dedup import dedup
from docrerank.lexical.rules import FINANCE_ATTRIBUTES, UserAttribute, Vocabulary, rewrite
from docrerank.lexical.select import select
from docrerank.lexical.text import char_similarity
from docrerank.lexical.textjudge import judge_text


def batch_rows(batch) -> list[dict]:
    """Rows of a Ray batch, whether a pyarrow Table or a dict of columns."""
    return batch.to_pylist() if hasattr(batch, "to_pylist") else _batch_rows(batch)

PENDING = None


def new_query(page_id: str, text: str, role: str, origin: str, *, parent_id=None, attribute=None, answer=None,
              model: str = "", prompt_version: str = "") -> dict:
    """A queries-table row with verdict pending."""
    return {
        "query_id": query_id(page_id, role, text), "page_id": page_id, "text": text, "role": role,
        "origin": origin, "parent_id": parent_id, "attribute": attribute, "answer": answer,
        "p_answerable_a": None, "p_answerable_b": None, "verdict": PENDING, "reason": None,
        "model": model, "prompt_version": prompt_version,
    }


def engine_name(engine) -> str:
    return engine if isinstance(engine, str) else f"{engine.backend}:{engine.model}"


class _Stage:
    """Shared batch plumbing: rows in, state parsed, ``process(pages)`` per batch, metrics, rows out."""

    name = "stage"

    def __call__(self, batch: dict) -> dict:
        from docrerank.core import faults

        faults.at_stage(self.name)
        rows = batch_rows(batch)
        pages = [dict(r, state=json.loads(r["state"])) for r in rows]
        t0 = time.perf_counter()
        m = Counter()
        self.process(pages, m)
        dt = (time.perf_counter() - t0) / max(1, len(pages))
        for p in pages:
            st = p["state"]["metrics"].setdefault(self.name, {})
            st["seconds"] = st.get("seconds", 0.0) + dt
            for k, v in m.items():  # batch totals are spread evenly over its pages
                st[k] = st.get(k, 0) + v / len(pages)
            p["state"] = json.dumps(p["state"])
        return {k: [p[k] for p in pages] for k in rows[0]} if rows else batch

    def process(self, pages: list[dict], m: Counter) -> None:
        raise NotImplementedError


def _build(engine_cfg):
    from docrerank.engines import build_engine

    return build_engine(engine_cfg)


def _count_result(m: Counter, res, kind: str) -> None:
    m["requests"] += 1
    m["prompt_tokens"] += getattr(res, "prompt_tokens", 0) or 0
    m["completion_tokens"] += getattr(res, "completion_tokens", 0) or 0
    if res.error:
        m[f"error:{res.error.split(':', 1)[0]}"] += 1


class PositivesStage(_Stage):
    """Stage 1: given positives, or a VLM writes candidate questions (JSON) from the page image."""

    name = "positives"

    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg.positives
        self.seed = cfg.seed
        self.engine = None if self.cfg.engine == "given" else _build(self.cfg.engine)
        self.prompt = load_prompt(self.cfg.prompt)

    def process(self, pages, m):
        from docrerank.engines import GenerateRequest, SamplingParams, user

        todo = []
        for p in pages:
            given = p["state"].get("given") or []
            for g in given:
                p["state"]["queries"].append(new_query(p["page_id"], g["question"], "positive", "given",
                                                       answer=g.get("answer"), model="given"))
            if not given and self.engine is not None:
                todo.append(p)
        if not todo:
            return
        reqs = [GenerateRequest(
            [user(p["image"], self.prompt["user"].format(n=self.cfg.num_candidates))],
            SamplingParams(temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                           seed=seed_of(self.seed, p["page_id"], "positives")),
            json_schema=self.prompt.get("schema"), id=p["page_id"]) for p in todo]
        for p, res in zip(todo, self.engine.generate(reqs)):
            _count_result(m, res, "generate")
            if not res.ok:
                p["state"].setdefault("errors", []).append(f"positives: {res.error}")
                continue
            for parsed in res.parsed or []:
                for item in (parsed or {}).get("questions", [])[: self.cfg.num_candidates]:
                    text = str(item.get("question", "")).strip()
                    if text:
                        p["state"]["queries"].append(new_query(
                            p["page_id"], text, "positive", "generated", answer=str(item.get("answer", "")),
                            model=engine_name(self.cfg.engine), prompt_version=self.prompt["version"]))


class VerifyStage(_Stage):
    """Stages 2 and 4: both prompts judge every pending query of one role; verdicts by the paper's rule."""

    def __init__(self, cfg: BuildConfig, role: str):
        assert role in ("positive", "negative")
        self.role, self.cfg, self.name = role, cfg.verify, f"verify_{role}s"
        self.engine = None if self.cfg.engine == "text" else _build(self.cfg.engine)
        self.prompt = load_prompt(self.cfg.prompt)

    def _judge_text(self, page, q, parents):
        parent = parents.get(q["parent_id"]) if self.role == "negative" else None
        return judge_text(q["text"], page["text"] or "", parent)

    def process(self, pages, m):
        from docrerank.engines import JudgeRequest, user

        thr, jobs = self.cfg.threshold, []
        for p in pages:
            qs = p["state"]["queries"]
            parents = {q["query_id"]: q["text"] for q in qs if q["role"] == "positive"}
            for q in qs:
                if q["role"] != self.role or q["verdict"] is not PENDING:
                    continue
                if self.engine is None:
                    q["p_answerable_a"], q["p_answerable_b"] = self._judge_text(p, q, parents)
                    m["text_judged"] += 1
                    continue
                if self.role == "negative" and self.cfg.prefilter == "text" and (p["text"] or "").strip():
                    # (a page without a text layer tells nothing: the model judges it)
                    a, b = self._judge_text(p, q, parents)
                    if a >= thr and b >= thr:
                        q["verdict"], q["reason"] = "rejected", "text_layer_answerable"
                        m["prefiltered"] += 1
                        continue
                jobs.append((p, q))
        if jobs:
            reqs = []
            for p, q in jobs:  # image first, query last: one shared prefix per (page, prompt)
                for key in ("prompt_a", "prompt_b"):
                    reqs.append(JudgeRequest([user(p["image"], self.prompt[key].format(query=q["text"]))],
                                             yes=self.prompt["answer_yes"], no=self.prompt["answer_no"], id=q["query_id"]))
            res = self.engine.judge(reqs)
            for i, (p, q) in enumerate(jobs):
                ra, rb = res[2 * i], res[2 * i + 1]
                _count_result(m, ra, "judge")
                _count_result(m, rb, "judge")
                if not (ra.ok and rb.ok):
                    q["verdict"], q["reason"] = "rejected", f"judge_error: {(ra.error or rb.error)[:200]}"
                    continue
                q["p_answerable_a"], q["p_answerable_b"] = ra.p_yes, rb.p_yes
        for p in pages:
            self._verdicts(p["state"]["queries"], thr)

    def _verdicts(self, qs, thr):
        for q in qs:
            if q["role"] != self.role or q["verdict"] is not PENDING or q["p_answerable_a"] is None:
                continue
            a, b = q["p_answerable_a"], q["p_answerable_b"]
            if self.role == "positive":
                ok = a >= thr and b >= thr
                q["verdict"], q["reason"] = ("verified", None) if ok else ("rejected", "not_answerable")
            else:
                ok = a < thr and b < thr
                q["verdict"], q["reason"] = ("verified", None) if ok else ("rejected", "answerable")
        if self.role == "positive":  # keep the most confidently answerable, up to max_positives
            ver = [q for q in qs if q["role"] == "positive" and q["verdict"] == "verified"]
            ver.sort(key=lambda q: -min(q["p_answerable_a"], q["p_answerable_b"]))
            for i, q in enumerate(ver):
                q["verdict"], q["reason"] = ("kept", None) if i < self.cfg.max_positives else ("rejected", "over_limit")


class NegativesStage(_Stage):
    """Stage 3: rewrite every kept positive into candidate negatives (LLM or rules), then deduplicate."""

    name = "negatives"

    def __init__(self, cfg: BuildConfig, vocabulary: dict | None = None):
        self.cfg, self.seed = cfg.negatives, cfg.seed
        self.user_attrs = [UserAttribute(a.name, a.description, tuple(a.examples)) for a in self.cfg.user_attributes]
        self.attributes = list(self.cfg.attributes) + [a.name for a in self.user_attrs]
        self.vocab = Vocabulary(**{k: (Counter(v) if k == "years" else v) for k, v in (vocabulary or {}).items()})
        if isinstance(self.vocab.entities, dict):
            self.vocab.entities = {k: set(v) for k, v in self.vocab.entities.items()}
        self.engine = None if self.cfg.engine == "rules" else _build(self.cfg.engine)
        name = self.cfg.general_prompt if self.cfg.mode == "general" else self.cfg.attributes_prompt
        self.prompt = load_prompt(name)

    def _attr_text(self) -> str:
        desc = {"year": "the year or period", "company": "the company or organisation",
                "numeric_value": "a number such as a price, amount or percentage",
                "financial_metric": "the financial metric (revenue, sales, income, acquisitions, ...)",
                "subject_metric": "the subject metric (dividends, stocks, options, employees, ...)",
                "business_segment": "the business segment (cloud, software, manufacturing, ...)"}
        for a in self.user_attrs:
            desc[a.name] = f"{a.description} (e.g. {', '.join(a.examples[:4])})"
        return "\n".join(f"- {a}: {desc.get(a, a)}" for a in self.attributes)

    def _rules(self, page, pos) -> list[tuple[str, str]]:
        attrs = self.attributes if self.cfg.mode == "attributes" else list(FINANCE_ATTRIBUTES) + [a.name for a in self.user_attrs]
        out = rewrite(pos["text"], page["text"] or "", self.vocab, attrs, self.cfg.num_candidates,
                      seed=f"{self.seed}|{pos['query_id']}", user_attributes=self.user_attrs)
        return [(r.text, r.attribute) for r in out]

    def _llm(self, jobs, m) -> list[list[tuple[str, str]]]:
        from docrerank.engines import GenerateRequest, SamplingParams, user

        reqs = []
        for page, pos in jobs:
            text = self.prompt["user"].format(positive=pos["text"], m=self.cfg.num_candidates,
                                              attributes=self._attr_text(), attribute_names=", ".join(self.attributes))
            msgs = ([{"role": "system", "content": self.prompt["system"]}] if self.prompt.get("system") else []) + [user(text)]
            reqs.append(GenerateRequest(msgs, SamplingParams(temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                                                             seed=seed_of(self.seed, pos["query_id"])),
                                        json_schema=self.prompt.get("schema"), id=pos["query_id"]))
        out = []
        for (page, pos), res in zip(jobs, self.engine.generate(reqs)):
            _count_result(m, res, "generate")
            if not res.ok:
                page["state"].setdefault("errors", []).append(f"negatives: {res.error}")
                out.append([])
                continue
            items = [it for parsed in res.parsed or [] for it in (parsed or {}).get("questions", [])]
            default = "general" if self.cfg.mode == "general" else None
            cands = []
            for it in items:
                attr = str(it.get("attribute") or default or "unknown").strip().lower()
                if self.cfg.mode == "attributes" and attr not in self.attributes:
                    attr = f"other:{attr[:40]}"
                cands.append((str(it.get("question", "")).strip(), attr))
            out.append(cands[: self.cfg.num_candidates])
        return out

    def process(self, pages, m):
        jobs = [(p, q) for p in pages for q in p["state"]["queries"] if q["role"] == "positive" and q["verdict"] == "kept"]
        if not jobs:
            return
        cands = self._llm(jobs, m) if self.engine is not None else [self._rules(p, q) for p, q in jobs]
        origin = "rules" if self.engine is None else "generated"
        model = engine_name(self.cfg.engine)
        version = "rules-v1" if self.engine is None else self.prompt["version"]
        for (page, pos), cs in zip(jobs, cands):
            m["candidates"] += len(cs)
            for (text, attr), (_, why) in zip(cs, dedup([t for t, _ in cs], pos["text"], self.cfg.near_duplicate_threshold)):
                q = new_query(page["page_id"], text, "negative", origin, parent_id=pos["query_id"], attribute=attr,
                              model=model, prompt_version=version)
                if why:
                    q["verdict"], q["reason"] = "rejected", why
                page["state"]["queries"].append(q)


class SelectStage(_Stage):
    """Stage 5: k verified negatives per kept positive; positives with too few are dropped (counted)."""

    name = "select"

    def __init__(self, cfg: BuildConfig):
        self.cfg, self.seed = cfg.select, cfg.seed

    def process(self, pages, m):
        for p in pages:
            qs = p["state"]["queries"]
            for pos in [q for q in qs if q["role"] == "positive" and q["verdict"] == "kept"]:
                negs = [q for q in qs if q["parent_id"] == pos["query_id"] and q["verdict"] == "verified"]
                if len(negs) < self.cfg.min_negatives:
                    pos["verdict"], pos["reason"] = "rejected", f"too_few_negatives ({len(negs)})"
                    for q in negs:
                        q["verdict"], q["reason"] = "rejected", "positive_dropped"
                    continue
                chosen = set(select(pos["text"], [q["text"] for q in negs], self.cfg.k, self.cfg.strategy,
                                    f"{self.seed}|{pos['query_id']}", char_similarity))
                for i, q in enumerate(negs):
                    q["verdict"], q["reason"] = ("kept", "selected") if i in chosen else ("rejected", "not_selected")


class RephraseStage(_Stage):
    """Stage 6: rephrase a seeded fraction of kept positives (the rephrased text replaces the original)."""

    name = "rephrase"

    def __init__(self, cfg: BuildConfig):
        self.cfg, self.seed = cfg.rephrase, cfg.seed
        self.engine = _build(self.cfg.engine)
        self.prompt = load_prompt(self.cfg.prompt)

    def process(self, pages, m):
        from docrerank.engines import GenerateRequest, SamplingParams, user
        from docrerank.lexical.text import content_tokens

        jobs = []
        for p in pages:
            for q in p["state"]["queries"]:
                if q["role"] == "positive" and q["verdict"] == "kept" and \
                        seed_of(self.seed, q["query_id"], "rephrase") / 2**32 < self.cfg.fraction:
                    jobs.append((p, q))
        if not jobs:
            return
        reqs = []
        for p, q in jobs:
            page_words = set(content_tokens(p["text"] or ""))
            avoid = ", ".join(sorted(w for w in set(content_tokens(q["text"])) if w in page_words and not w[:1].isdigit())[:15])
            reqs.append(GenerateRequest([user(self.prompt["user"].format(query=q["text"], avoid=avoid or "-"))],
                                        SamplingParams(temperature=0.7, max_tokens=128, seed=seed_of(self.seed, q["query_id"])),
                                        json_schema=self.prompt.get("schema"), id=q["query_id"]))
        for (p, q), res in zip(jobs, self.engine.generate(reqs)):
            _count_result(m, res, "generate")
            text = str(((res.parsed or [None])[0] or {}).get("question", "")).strip() if res.ok else ""
            if not text or dedup([text], q["text"])[0][1]:
                continue  # keep the original when rephrasing failed or changed nothing
            r = new_query(p["page_id"], text, "positive", "rephrased", parent_id=q["query_id"], answer=q["answer"],
                          model=engine_name(self.cfg.engine), prompt_version=self.prompt["version"])
            r["verdict"], r["reason"] = "kept", "rephrased"
            q["verdict"], q["reason"] = "rejected", "replaced_by_rephrase"
            for n in p["state"]["queries"]:  # its negatives now belong to the rephrased positive
                if n["parent_id"] == q["query_id"] and n["role"] == "negative":
                    n["parent_id"] = r["query_id"]
            p["state"]["queries"].append(r)
