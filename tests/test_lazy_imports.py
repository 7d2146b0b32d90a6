"""Importing the package and the engine modules must not import the heavy libraries (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "vllm", "ray", "httpx", "tokenizers"]
LIGHT_MODULES = [
    "docrerank",
    "docrerank.engines",
    "docrerank.engines.base",
    "docrerank.engines.config",
    "docrerank.engines.parsing",
    "docrerank.engines.registry",
    "docrerank.engines.requests",
    "docrerank.engines.messages",
    "docrerank.engines.hf",
    "docrerank.engines.vllm",
    "docrerank.engines.http",
    "docrerank.testing",
    "docrerank.testing.tiny_models",
    "docrerank.testing.openai_server",
    "docrerank.rerank.pages",
    "docrerank.rerank.reranker",
    "docrerank.rerank.job",
    "docrerank.eval.beir",
    "docrerank.eval.retrievers",
    "docrerank.eval.metrics",
    "docrerank.eval.report",
    "docrerank.eval.config",
    "docrerank.eval.run",
    "docrerank.mine.logic",
    "docrerank.mine.stages",
    "docrerank.mine.run",
    "docrerank.models.embed",
    "docrerank.models.prefix",
    "docrerank.models.qwen_vl",
    "docrerank.train.backbones",
    "docrerank.analysis.negatives",
]


def loaded_after_import(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_package_and_engines_import_no_heavy_library():
    assert loaded_after_import(["docrerank", "docrerank.engines"]) == []


def test_every_engine_module_imports_light():
    assert loaded_after_import(LIGHT_MODULES) == []


def test_the_check_can_see_a_heavy_import():
    # Guards the test itself: importing a backend's dependency is detected.
    assert loaded_after_import(["docrerank.engines", "httpx"]) == ["httpx"]
