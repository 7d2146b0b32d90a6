"""The engine interface: the ``Engine`` protocol every backend implements, and ``TextEngine``, the shared
``generate`` of backends that produce raw text (output checks and one JSON repair pass).

Every backend implements ``generate(requests) -> list[GenerateResult]`` and ``judge(requests) -> list[JudgeResult]``
(types in ``engines.requests``); backends are looked up by name in ``engines.registry``.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol, Sequence

from docrerank.engines.parsing import finish_generation, overall_error, repair_request
from docrerank.engines.requests import (
    GenerateRequest,
    GenerateResult,
    JudgeRequest,
    JudgeResult,
    RawGeneration,
    count_errors,
    error_kind,
)


class EngineDeadError(RuntimeError):
    """The engine cannot answer any request any more (its process died): raised, never turned into per-request
    errors, so that whoever hosts the engine replaces it (a pool's actor exits and Ray restarts it) or the job
    fails; the requests it was given are not answered, so no page is recorded as finished on their account."""


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
            res.error = overall_error(res.errors)
