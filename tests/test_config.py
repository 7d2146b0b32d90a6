from pathlib import Path

import pytest

from docrerank.core.config import ConfigError, apply_overrides, describe, load_config, parse_job_args
from docrerank.render.config import IngestConfig

REPO = Path(__file__).resolve().parent.parent


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("input: a\noutput: b\nrender:\n  dpi: 100\n")
    cfg = load_config(IngestConfig, f, ["render.dpi=200", "render.image_format=jpeg", "passwords=[x, y]"])
    assert cfg.render.dpi == 200 and cfg.render.image_format == "jpeg" and cfg.passwords == ["x", "y"]
    assert cfg.input == "a" and cfg.render.max_pixels == 802_816


def test_errors_name_the_key_and_accepted_values():
    with pytest.raises(ConfigError) as e:
        load_config(IngestConfig, None, ["input=a", "output=b", "render.image_format=gif"])
    msg = str(e.value)
    assert "render.image_format" in msg and "'png'" in msg and "'jpeg'" in msg and "gif" in msg
    with pytest.raises(ConfigError, match=r"render\.dpix: unknown key"):
        load_config(IngestConfig, None, ["input=a", "output=b", "render.dpix=3"])
    with pytest.raises(ConfigError, match=r"output: required key is missing"):
        load_config(IngestConfig, None, ["input=a"])
    with pytest.raises(ConfigError, match="pages_per_task"):
        load_config(IngestConfig, None, ["input=a", "output=b", "pages_per_task=0"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(IngestConfig, None, ["input"])


def test_string_fields_keep_the_text_typed():
    # YAML would read these as numbers; the field types say they are text, so the user's text is kept.
    cfg = load_config(IngestConfig, None, ["input=sample:", "output=s3://b/out", "passwords=[1234, 007, pw]",
                                           "password_map={'a.pdf': 0123, b.pdf: 1e3}", "suffixes=[.pdf]"])
    assert cfg.passwords == ["1234", "007", "pw"]
    assert cfg.password_map == {"a.pdf": "0123", "b.pdf": "1e3"}
    assert cfg.input == "sample:" and cfg.output == "s3://b/out" and cfg.suffixes == [".pdf"]
    # ... while numbers, booleans and null stay what YAML makes of them where the field wants them
    cfg = load_config(IngestConfig, None, ["input=a", "output=b", "render.dpi=200", "num_workers=null", "resume=false",
                                           "render.max_pixels=1000000", "passwords=['quoted', \"007\"]"])
    assert cfg.render.dpi == 200.0 and cfg.num_workers is None and cfg.resume is False and cfg.render.max_pixels == 10**6
    assert cfg.passwords == ["quoted", "007"]


def test_string_fields_inside_lists_unions_and_nested_configs():
    from docrerank.build.config import BuildConfig

    cfg = load_config(BuildConfig, None, [
        "input=sample:", "output=o", "ingest.passwords=[1234]", "verify.engine=text",
        "negatives.user_attributes=[{name: product, examples: [2019, 007]}]",
        "positives.engine={backend: hf, model: 007, ray: {num_gpus: 1}}"])
    assert cfg.ingest.passwords == ["1234"]
    assert cfg.negatives.user_attributes[0].examples == ["2019", "007"]
    assert cfg.positives.engine.model == "007" and cfg.positives.engine.ray.num_gpus == 1.0
    assert cfg.verify.engine == "text"


def test_a_list_for_a_string_field_is_still_an_error():
    with pytest.raises(ConfigError, match=r"input: .*valid string"):
        load_config(IngestConfig, None, ["input=[a, b]", "output=b"])


def test_field_type_walks_nested_configs_and_mappings():
    from docrerank.build.config import BuildConfig
    from docrerank.core.config import field_type

    assert field_type(IngestConfig, ["passwords"]) == list[str]
    assert field_type(IngestConfig, ["password_map", "x.pdf"]) is str
    assert field_type(BuildConfig, ["ingest", "render", "dpi"]) is float
    assert field_type(BuildConfig, ["positives", "engine", "model"]) is str  # through Union[Literal, EngineConfig]
    assert field_type(IngestConfig, ["render", "nope"]) is None


def test_overrides_do_not_mutate_input():
    base = {"a": {"b": 1}}
    out = apply_overrides(base, ["a.c=2"])
    assert base == {"a": {"b": 1}} and out == {"a": {"b": 1, "c": 2}}


def test_every_field_is_documented():
    lines = describe(IngestConfig)
    assert any(l.strip().startswith("render.dpi") for l in lines)
    undocumented = [l for l in lines if l.rstrip().endswith("):")]
    assert not undocumented, undocumented


def test_cli_exits_2_with_the_key(capsys):
    with pytest.raises(SystemExit) as e:
        parse_job_args(IngestConfig, ["input=a", "output=b", "render.dpi=-1"], prog="x", description="")
    assert e.value.code == 2
    assert "render.dpi" in capsys.readouterr().err


def _classes():
    from docrerank.analysis.config import AnalyseConfig
    from docrerank.build.config import BuildConfig

    from docrerank.eval.config import EvalConfig
    from docrerank.rerank.config import RerankConfig
    from docrerank.mine.config import MineConfig

    from docrerank.pipeline.config import PipelineConfig
    from docrerank.viewer.config import ViewConfig

    out = {"ingest": IngestConfig, "build": BuildConfig, "analyse": AnalyseConfig, "eval": EvalConfig,
           "rerank": RerankConfig, "mine": MineConfig, "pipeline": PipelineConfig, "view": ViewConfig}
    try:
        from docrerank.train.config import TrainConfig

        out["train"] = TrainConfig
    except ImportError:  # pragma: no cover - the training package is optional in a partial checkout
        pass
    return out


CONFIG_CLASSES = _classes()


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path, monkeypatch):
    monkeypatch.chdir(REPO)  # a pipeline config names the job configs it runs relative to the checkout
    job = path.stem.split("_")[0]
    cls = CONFIG_CLASSES.get(job)
    assert cls is not None, f"{path.name}: no config class for job prefix {job!r}; register it in CONFIG_CLASSES"
    load_config(cls, path)


def test_the_judge_threshold_resolves_one_way_for_the_build_the_mining_and_the_card():
    from docrerank.build.config import BuildConfig
    from docrerank.build.stages import verify_threshold
    from docrerank.engines.verify import judge_threshold
    from docrerank.mine.config import MineConfig

    model = {"backend": "vllm", "model": "org/Judge-7B"}
    base = {"pages": "x", "output": "y", "positives_file": "q.jsonl"}
    # unset: the judge's own operating point for the use (the text judge's measured one, 0.5 for a model)
    assert MineConfig.model_validate({"input": "a", "output": "b", "filter": {"engine": "text"}}).filter.threshold \
        == judge_threshold(None, "text", "mine") == 0.4
    assert MineConfig.model_validate({"input": "a", "output": "b", "filter": {"engine": model}}).filter.threshold \
        == judge_threshold(None, model, "mine") == 0.5
    assert verify_threshold(BuildConfig.model_validate({**base, "verify": {"engine": "text"}}), "negative") \
        == judge_threshold(None, "text", "negative") == 0.5
    # set: the configured threshold, in both jobs
    assert verify_threshold(BuildConfig.model_validate({**base, "verify": {"engine": "text", "threshold": 0.7}}),
                            "positive") == 0.7
    assert MineConfig.model_validate({"input": "a", "output": "b",
                                      "filter": {"engine": "text", "threshold": 0.7}}).filter.threshold == 0.7
    with pytest.raises(ValueError, match="threshold use"):
        judge_threshold(None, "text", "verify")


def test_a_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: x\noutput: y\nrender:\n  dpi: [72\n  image_format: png\n")
    with pytest.raises(SystemExit) as e:
        parse_job_args(IngestConfig, ["--config", str(bad)], prog="python -m jobs.ingest", description="")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{bad}:5:" in err and "YAML syntax error" in err and "<unicode string>" not in err
    # a job config named by a pipeline config: the same line, inside the pipeline's config error
    from docrerank.pipeline.config import PipelineConfig

    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(f"steps: [ingest]\ningest: {{config: {bad}}}\n")
    with pytest.raises(SystemExit):
        parse_job_args(PipelineConfig, ["--config", str(pipe)], prog="python -m jobs.pipeline", description="")
    err = capsys.readouterr().err
    assert f"{bad}:5:" in err and "YAML syntax error" in err and "Traceback" not in err


def test_messages_name_the_command_typed(capsys):
    from docrerank.core import config as core_config
    from jobs.cli import main

    try:
        assert main(["ingest", "input=a", "output=b", "render.dpi=-1"]) == 2
    except SystemExit as e:
        assert e.code == 2
    finally:
        core_config.set_invoked_as(None)
    err = capsys.readouterr().err
    assert err.startswith("docrerank ingest: ") and "python -m jobs" not in err
    with pytest.raises(SystemExit):
        parse_job_args(IngestConfig, ["input=a", "output=b", "render.dpi=-1"], prog="python -m jobs.ingest",
                       description="")
    assert capsys.readouterr().err.startswith("python -m jobs.ingest: ")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys):
    from docrerank.core import runtime

    cfg = IngestConfig(input="a", output=str(tmp_path / "o"))

    def work():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        runtime.run_job("ingest", cfg, work)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == "ingest interrupted: what finished is kept; resume with the same command (python -m jobs.ingest ...)"


def test_a_ray_that_does_not_start_is_tried_twice_then_one_line(monkeypatch, tmp_path, capsys):
    """Ray's own start-up timeout (the exception ray._private.node raises under load) is retried once, then fails
    the job with one line saying what to do. ray.init is replaced: a real start-up timeout cannot be provoked."""
    ray = pytest.importorskip("ray")
    from docrerank.core import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the suite's own Ray may be up: this test's is not
    calls = []

    def init(**kw):
        calls.append(kw)
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = IngestConfig(input="a", output=str(tmp_path / "o"))
    assert runtime.run_job("ingest", cfg, lambda: runtime.init_ray()) is None
    assert len(calls) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ingest failed: could not start a local Ray (tried twice): Exception: The current node "
                              "timed out during startup.") and "--address" in err[-1]
    assert not any("Traceback" in line for line in err)
