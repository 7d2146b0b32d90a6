"""The pipeline: one config for several jobs, run in order on one Ray, each step skipped when it finished with the
same config and inputs, and one summary of every step and output; the ``docrerank`` command dispatching to jobs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from docrerank.core.config import ConfigError, load_config
from docrerank.pipeline.config import PipelineConfig
from docrerank.pipeline.run import StepResult, fingerprint, summary_table

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / "jobs" / "configs" / "pipeline_local.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped configs name each other relative to the checkout


def test_the_shipped_pipeline_is_the_readme_main_command():
    cfg = load_config(PipelineConfig, LOCAL)
    assert cfg.chosen == ["build", "mine", "analyse", "train", "evaluate"]
    assert cfg.build.output == "out/local" and cfg.build.select.k == 3 and cfg.train.output == "out/train_local"
    assert cfg.output == "out/local"  # the pipeline's own records and logs go next to the first step's


def test_step_files_overrides_and_inline_keys(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("build: {config: jobs/configs/build_local.yaml, select: {k: 5}}\n"
                 "mine: {config: jobs/configs/mine_local.yaml}\n")
    cfg = load_config(PipelineConfig, f)
    assert cfg.chosen == ["build", "mine"] and cfg.build.select.k == 5 and cfg.build.select.strategy == "diverse"
    cfg = load_config(PipelineConfig, f, ["build.select.k=4", "build.ingest.passwords=[1234]", "rerun=[mine]"])
    assert cfg.build.select.k == 4 and cfg.build.ingest.passwords == ["1234"] and cfg.rerun == ["mine"]


@pytest.mark.parametrize("overrides, message", [
    (["steps=[build, train]"], r"steps: got \[build, train\]; expected a contiguous part"),
    (["steps=[mine, build]"], "expected a contiguous part"),
    (["steps=[ingest, build]"], r"steps: ingest has no config"),
    (["build.config=no/such.yaml"], r"build.config: cannot read 'no/such.yaml'"),
    (["rerun=[ingest]"], r"rerun: got \['ingest'\], not among the steps run"),
    (["build.select.kk=1"], r"build.select.kk: unknown key"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PipelineConfig, LOCAL, overrides)


def test_fingerprint_follows_the_config_and_the_step_before():
    cfg = load_config(PipelineConfig, LOCAL)
    other = load_config(PipelineConfig, LOCAL, ["mine.k=2"])
    assert fingerprint(cfg.mine, "a") == fingerprint(cfg.mine, "a")
    assert fingerprint(cfg.mine, "a") != fingerprint(other.mine, "a")
    assert fingerprint(cfg.mine, "a") != fingerprint(cfg.mine, "b")
    # secrets are redacted before hashing: they are never written, not even as a hash
    secret = load_config(PipelineConfig, LOCAL, ["build.ingest.passwords=[hunter2]"])
    assert fingerprint(secret.build, "") == fingerprint(load_config(PipelineConfig, LOCAL, ["build.ingest.passwords=[x]"]).build, "")


def test_summary_lists_steps_and_every_output():
    text = summary_table([StepResult("build", "skipped", 0, "72 groups", ("out/local", ["examples/", "card.md"]), "x"),
                          StepResult("mine", "ran", 12.5, "60 mined groups", ("out/local/", ["mined/"])),
                          StepResult("analyse", "failed", 1.0, reason="jobs.analyse_negatives failed (see above)"),
                          StepResult("train", "not run", reason="analyse failed")])
    lines = text.splitlines()
    assert lines[0].split() == ["step", "status", "seconds", "result"]
    assert lines[2].split()[:2] == ["build", "skipped"] and "   12.5  60 mined groups" in text
    assert lines[4].split()[:3] == ["analyse", "failed", "1.0"] and lines[5].split()[:3] == ["train", "not", "run"]
    assert lines[-3:] == ["outputs:", "  build  out/local/  examples/, card.md", "  mine   out/local/  mined/"]


def test_the_docrerank_command_dispatches_to_the_jobs(capsys):
    from jobs.cli import JOBS, main

    assert main(["--help"]) == 0 and "pipeline" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["nope"]) == 2 and "unknown job 'nope'" in capsys.readouterr().err
    for name in JOBS:  # every job the command lists exists and has a main
        assert callable(__import__(f"jobs.{name}", fromlist=["main"]).main)
    with pytest.raises(SystemExit) as e:
        main(["build", "--help"])
    assert e.value.code == 0 and "select.k" in capsys.readouterr().out


def test_the_console_script_is_declared():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["docrerank"] == "jobs.cli:main"
    assert project["tool"]["setuptools"]["package-dir"]["jobs"] == "jobs"  # installed: works from any directory


def test_plan_of_a_fresh_pipeline_waits_for_earlier_steps(tmp_path, capsys):
    from jobs.pipeline import main

    out = tmp_path / "local"
    args = ["--config", str(LOCAL), "--plan", "steps=[build, mine, analyse]", f"build.output={out}",
            f"mine.input={out}", f"mine.output={out}", f"analyse.examples=[{out}/examples, {out}/mined]",
            f"analyse.output={out}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "== step 1 of 3: build (jobs.build_dataset) ==" in printed and "== step 3 of 3: analyse" in printed
    waiting = printed.split("== step 3 of 3")[1].split("waiting for earlier steps")[1]
    assert f"examples {out}/examples: not found" in waiting
    # a problem no earlier step can fix is one
    assert main(args + [f"analyse.examples=[{tmp_path}/elsewhere]"]) == 1
    assert f"examples {tmp_path}/elsewhere: not found" in capsys.readouterr().out.split("== step 3 of 3")[1].split("waiting")[0]


# ------------------------------------------------------------------------------------- three real steps on Ray
@pytest.fixture(scope="module")
def pipeline_out(ray_local, tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline") / "local"


def _args(out: Path, *extra: str) -> list[str]:
    return ["--config", str(LOCAL), "steps=[build, mine, analyse]", f"build.output={out}", "build.input=sample:2",
            f"mine.input={out}", f"mine.output={out}", f"analyse.examples=[{out}/examples, {out}/mined]",
            f"analyse.output={out}", *extra]


def _summary(printed: str) -> dict[str, str]:
    block = printed.split("pipeline summary", 1)[1].split("outputs:")[0]
    return {ln.split()[0]: ln.split()[1] for ln in block.splitlines()[3:] if ln.strip()}


@pytest.mark.slow
def test_run_rerun_and_partial_reruns(pipeline_out, capsys):
    from jobs.pipeline import main

    out = pipeline_out
    assert main(_args(out)) == 0
    printed = capsys.readouterr().out
    assert _summary(printed) == {"build": "ran", "mine": "ran", "analyse": "ran"}
    assert "dataset build for" in printed and "mined negatives for" in printed and "negatives" in printed
    assert f"  build    {out}/  examples/, examples_heldout/, queries/, card.md, stats.json, viewer/index.html" in printed
    assert f"  mine     {out}/  mined/, mined_heldout/, mining_stats.json" in printed
    assert (out / "viewer" / "index.html").exists()
    markers = {s: json.loads((out / "_meta" / f"pipeline-{s}.json").read_text()) for s in ("build", "mine", "analyse")}
    assert markers["mine"]["upstream"] == markers["build"]["run_id"]
    assert json.loads((out / "_meta" / "pipeline.json").read_text())["finished"]

    # the same command again: every step finished with the same config and inputs
    t0 = time.perf_counter()
    assert main(_args(out)) == 0
    assert time.perf_counter() - t0 < 30
    assert _summary(capsys.readouterr().out) == {"build": "skipped", "mine": "skipped", "analyse": "skipped"}

    # a changed step runs again, the ones before it do not
    assert main(_args(out, "analyse.max_groups=20")) == 0
    assert _summary(capsys.readouterr().out) == {"build": "skipped", "mine": "skipped", "analyse": "ran"}

    # rerun=[mine]: mine runs (resuming its output), and every later step with it
    assert main(_args(out, "analyse.max_groups=20", "rerun=[mine]")) == 0
    assert _summary(capsys.readouterr().out) == {"build": "skipped", "mine": "ran", "analyse": "ran"}


@pytest.mark.slow
def test_a_failed_step_stops_the_pipeline(pipeline_out, capsys):
    from jobs.pipeline import main

    out = pipeline_out
    assert main(_args(out, f"analyse.examples=[{out}/no_such_examples]")) == 1
    captured = capsys.readouterr()
    status = _summary(captured.out)  # build and mine: skipped after the test above, ran when this one runs alone
    assert status["analyse"] == "failed" and {status["build"], status["mine"]} <= {"ran", "skipped"}
    # the step's start checks (its job's plan) stop it before anything loads, naming the problem
    assert "analyse_negatives cannot start: 1 problem(s)" in captured.err and "no_such_examples" in captured.err
