"""The engine interface without models: messages, requests, output checks, JSON repair, config, registry."""

from __future__ import annotations

import io
import math

import pytest

from docrerank.engines import (
    EngineConfig,
    GenerateRequest,
    ImagePart,
    JudgeRequest,
    SamplingParams,
    TextEngine,
    assistant,
    available_backends,
    build_engine,
    count_errors,
    error_kind,
    parse_json,
    register_backend,
    system,
    user,
)
from docrerank.engines import messages, parsing
from docrerank.engines.parsing import check_sample, judge_from_top_logprobs, p_yes_from_logprobs
from docrerank.engines.requests import JudgeResult, RawGeneration


def png(color=(255, 0, 0), size=(8, 6), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- messages
def test_messages_validate_roles_and_parts():
    with pytest.raises(ValueError, match="role"):
        messages.Message("robot", "hi")
    with pytest.raises(TypeError, match="bytes or PIL"):
        ImagePart(123)
    with pytest.raises(ValueError, match="only allowed in user turns"):
        messages.Message("assistant", (ImagePart(png()),))
    m = user(png(), "What?")
    assert [type(p).__name__ for p in m.parts] == ["ImagePart", "TextPart"]
    assert user("plain").content == "plain"


def test_image_keys_follow_content():
    from PIL import Image

    a, b = png((1, 2, 3)), png((3, 2, 1))
    assert ImagePart(a).key() == ImagePart(bytes(a)).key()
    assert ImagePart(a).key() != ImagePart(b).key()
    pil = Image.new("RGB", (4, 4), (9, 9, 9))
    assert ImagePart(pil).key() == ImagePart(pil.copy()).key()
    assert messages.image_keys([system("s"), user(a, "q")]) == (ImagePart(a).key(),)


def test_plain_dicts_round_trip_and_formats():
    img = png()
    msgs = [system("sys"), user(img, "question"), assistant("answer")]
    back = messages.from_dicts(messages.to_plain_dicts(msgs))
    assert [m.role for m in back] == ["system", "user", "assistant"]
    assert back[1].parts[0].image == img and back[1].parts[1].text == "question"
    tmpl = messages.to_template_dicts(msgs)
    assert tmpl[1]["content"] == [{"type": "image"}, {"type": "text", "text": "question"}]
    oa = messages.to_openai_dicts([user(png(fmt="JPEG"), "q")])
    assert oa[0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    # OpenAI-style dicts (data URLs) are read back as the same bytes.
    again = messages.from_dicts(oa)
    assert again[0].parts[0].to_pil().size == (8, 6)
    with pytest.raises(ValueError, match="base64 data URL"):
        messages.from_dicts([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}])
    with pytest.raises(ValueError, match="could not decode"):
        ImagePart(b"not an image").to_pil()


# ---------------------------------------------------------------------------------------------- requests
def test_requests_validate():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="messages"):
        GenerateRequest([])
    with pytest.raises(ValueError, match="answer words"):
        JudgeRequest([user("q")], yes="Yes", no="Yes")
    with pytest.raises(TypeError, match="json_schema"):
        GenerateRequest([user("q")], json_schema="{}")
    r = GenerateRequest([{"role": "user", "content": "q"}], sampling={"max_tokens": 5, "stop": "\n"})
    assert r.sampling.stop == ("\n",) and r.messages[0].content == "q"


# ------------------------------------------------------------------------------------------------ checks
SCHEMA = {"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
          "required": ["queries"]}


@pytest.mark.parametrize(
    "text",
    ['{"queries": ["a"]}', '```json\n{"queries": ["a"]}\n```', 'Sure! {"queries": ["a"],} Hope it helps.'],
)
def test_parse_json_tolerates_wrappers(text):
    value, err = parse_json(text, SCHEMA)
    assert err is None and value == {"queries": ["a"]}


def test_parse_json_errors_name_the_problem():
    value, err = parse_json('{"queries": [1]}', SCHEMA)
    assert error_kind(err) == "schema_mismatch" and "queries/0" in err
    value, err = parse_json('{"queries": ["a"', SCHEMA)
    assert value is None and error_kind(err) == "invalid_json"


def test_check_sample_kinds():
    assert error_kind(check_sample("  \n", "stop", None)[1]) == "empty_output"
    assert error_kind(check_sample("I'm sorry, I can't help with that.", "stop", None)[1]) == "refusal"
    assert check_sample("I'm sorry, I can't help.", "stop", None, reject_refusals=False)[1] is None
    assert error_kind(check_sample("a long answer", "length", None)[1]) == "truncated"
    assert error_kind(check_sample('{"queries": ["a', "length", SCHEMA)[1]) == "truncated"
    assert check_sample("What is the revenue?", "stop", None) == (None, None)
    assert error_kind(check_sample("x" * 50, "stop", None, max_chars=20)[1]) == "too_long"
    assert check_sample("x" * 20, "stop", None, max_chars=20) == (None, None)


def test_apply_stop():
    assert parsing.apply_stop("abc\ndef###x", ["###", "\n"]) == ("abc", True)
    assert parsing.apply_stop("abc", ["#"]) == ("abc", False)


def test_judge_from_top_logprobs():
    exact = judge_from_top_logprobs({"Yes": math.log(0.6), " No": math.log(0.3), "x": -5}, "Yes", "No")
    assert exact.method == "logprobs" and exact.p_yes == pytest.approx(2 / 3)
    bound = judge_from_top_logprobs({"ĠYes": -0.1, "x": -4.0}, "Yes", "No")
    assert bound.method == "logprobs_bound" and bound.logprob_no == -4.0 and bound.p_yes > 0.95
    missing = judge_from_top_logprobs({"x": -0.1}, "Yes", "No")
    assert missing.p_yes is None and error_kind(missing.error) == "missing_logprobs"
    assert p_yes_from_logprobs(0.0, 0.0) == 0.5
    assert p_yes_from_logprobs(3.0, 1.0) == pytest.approx(1 / (1 + math.exp(-2.0)))


# ------------------------------------------------------------------------------------- repair via engine
class ScriptedEngine(TextEngine):
    """A model-free engine answering from a script: a list of outputs per call (tests the shared generate)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)
        self.seen = []

    def _generate_raw(self, requests):
        self.seen.append(list(requests))
        return [RawGeneration(texts=[self.outputs.pop(0)], finish_reasons=["stop"], prompt_tokens=3,
                              completion_tokens=2) for _ in requests]

    def judge(self, requests):
        raise NotImplementedError


def test_generate_repairs_invalid_json_once():
    eng = ScriptedEngine(['{"queries": ["a"', '{"queries": ["fixed"]}'])
    [res] = eng.generate([GenerateRequest([user("q")], json_schema=SCHEMA)])
    assert res.ok and res.parsed == [{"queries": ["fixed"]}] and res.repaired == 1
    assert res.prompt_tokens == 6 and res.completion_tokens == 4
    repair = eng.seen[1][0]
    assert [m.role for m in repair.messages] == ["user", "assistant", "user"]
    assert repair.messages[1].content == '{"queries": ["a"' and '"required"' in repair.messages[2].content


def test_generate_rejects_after_failed_repair_and_keeps_others():
    eng = ScriptedEngine(["not json", '{"queries": ["ok"]}', "still not json"])
    res = eng.generate([GenerateRequest([user(q)], json_schema=SCHEMA) for q in ("a", "b")])
    assert error_kind(res[0].error) == "invalid_json" and "after one repair attempt" in res[0].error
    assert res[1].ok and res[1].parsed == [{"queries": ["ok"]}]
    assert count_errors(res) == {"invalid_json": 1, "ok": 1}
    assert eng.stats["generate_invalid_json"] == 1


def test_generate_without_repair():
    eng = ScriptedEngine(["nope"])
    eng.json_repair = False
    [res] = eng.generate([GenerateRequest([user("a")], json_schema=SCHEMA)])
    assert error_kind(res.error) == "invalid_json" and len(eng.seen) == 1


# ------------------------------------------------------------------------------------ config + registry
def test_engine_config_validates():
    cfg = EngineConfig(model="m")
    assert cfg.backend == "hf" and cfg.max_pixels == 802_816 and cfg.hf.prefix_reuse
    with pytest.raises(ValueError, match="unknown backend"):
        EngineConfig(backend="nope", model="m")
    with pytest.raises(ValueError, match="extra"):
        EngineConfig(model="m", bogus=1)
    with pytest.raises(ValueError, match="max_concurrency"):
        EngineConfig(model="m", http={"max_concurrency": 0})
    assert EngineConfig.model_fields["max_pixels"].description  # documented field


def test_register_backend_adds_an_outside_engine():
    class ConstantEngine:
        def __init__(self, cfg):
            self.p = cfg.options["p"]

        def generate(self, requests):
            return []

        def judge(self, requests):
            return [JudgeResult(p_yes=self.p, method="rules") for _ in requests]

        def close(self):
            pass

    register_backend("constant_test", ConstantEngine)
    eng = build_engine({"backend": "constant_test", "model": "-", "options": {"p": 0.25}})
    assert [r.p_yes for r in eng.judge([JudgeRequest([user("q")])])] == [0.25]
    register_backend("lazy_test", "docrerank.engines.base:TextEngine")
    assert "lazy_test" in available_backends()
    with pytest.raises(ValueError, match="non-empty"):
        register_backend("", ConstantEngine)
    with pytest.raises(TypeError, match="module:attr"):
        register_backend("bad", "no_colon_here")


def test_engine_config_from_yaml_and_overrides(tmp_path):
    from docrerank.core.config import ConfigError, load_config

    path = tmp_path / "engine.yaml"
    path.write_text("backend: http\nmodel: served-model\nhttp:\n  base_url: http://10.0.0.1:8000/v1\n")
    cfg = load_config(EngineConfig, path, ["http.max_concurrency=4", "ray.num_gpus=1"])
    assert (cfg.backend, cfg.http.base_url, cfg.http.max_concurrency, cfg.ray.num_gpus) == (
        "http", "http://10.0.0.1:8000/v1", 4, 1.0)
    with pytest.raises(ConfigError, match="http.timeout_s"):
        load_config(EngineConfig, path, ["http.timeout_s=-1"])


def test_generated_strings_are_read_as_one_clean_line():
    from docrerank.engines.parsing import one_line, parse_json

    # a raw tab / newline inside a JSON string (xgrammar's grammar lets them through) still parses
    value, err = parse_json('{"questions": [{"question": "What was\tthe revenue\nin 2021?"}]}')
    assert err is None
    assert one_line(value["questions"][0]["question"]) == "What was the revenue in 2021?"
    assert one_line("  a\x00b\x1f c\x7f\x85 ") == "a b c"
    assert one_line(7) == "7"


def test_capped_list_limits_the_items_a_grammar_may_write():
    from docrerank.engines.parsing import capped_list, schema_errors
    from docrerank.prompts import load_prompt

    schema = load_prompt("positives")["schema"]
    capped = capped_list(schema, 2)
    assert capped["properties"]["questions"]["maxItems"] == 2 and "maxItems" not in schema["properties"]["questions"]
    three = {"questions": [{"question": f"Question number {i}?", "answer": "x"} for i in range(3)]}
    assert schema_errors(three, schema) is None and schema_errors(three, capped) is not None
    assert schema_errors({"questions": [{"question": "q" * 201, "answer": "x"}]}, schema) is not None  # maxLength
    assert capped_list(None, 2) is None and capped_list({"type": "object"}, 2) == {"type": "object"}
