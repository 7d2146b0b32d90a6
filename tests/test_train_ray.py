"""Examples -> packed groups -> the mixed stream (pure), and Ray Train runs of a tiny Qwen2-VL with LoRA on 2 CPU
workers: DeepSpeed ZeRO-2 over gloo with a worker killed and replaced, a stopped run resumed by rerunning it
(data position included), and ZeRO-3."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from docrerank.data.collate import collate_groups  # noqa: E402
from docrerank.data.examples import pack_rows, read_groups, read_task  # noqa: E402
from docrerank.data.mix import Chunk, mix_counts, plan_mix, scan_source  # noqa: E402
from docrerank.train.ray_train import DataPosition  # noqa: E402

MAX_PIXELS = 56 * 56 * 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples
    from docrerank.models.tiny import make_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("train_ray")
    corpus = make_corpus(root / "corpus", num_companies=2, years=[2021])
    examples = make_examples(root / "examples", corpus, dpi=20, groups_per_file=3)
    # two example sets to mix half and half (standing in for generated and mined examples)
    gen = make_examples(root / "gen", corpus, companies=[0], dpi=20, groups_per_file=3)
    mined = make_examples(root / "mined", corpus, companies=[1], dpi=20, groups_per_file=3)
    return {"root": root, "examples": str(examples), "gen": str(gen), "mined": str(mined),
            "model": str(make_tiny_qwen2_vl(root / "qwen2vl"))}


# ----------------------------------------------------------------------------------------------- pure
def chunks(prefix: str, n: int, per: int = 4) -> list[Chunk]:
    ids = [f"{prefix}{i}" for i in range(n)]
    return [Chunk(f"{prefix}.parquet", [k], ids[k * per:(k + 1) * per]) for k in range(-(-n // per))]


def test_mix_counts_follow_weights_without_repeats_by_default():
    assert mix_counts([120, 60], [1, 1], None) == [60, 60]
    assert mix_counts([120, 60], [2, 1], None) == [120, 60]
    assert mix_counts([100, 100], [3, 1], None) == [100, 33]
    assert mix_counts([10, 10], [1, 1], 40) == [20, 20]  # explicit size: sources repeat
    with pytest.raises(ValueError, match="one weight per source"):
        mix_counts([1, 2], [1], None)


def test_plan_mix_interleaves_sources_by_weight_and_is_deterministic():
    sources = [("gen", 1.0, chunks("g", 40)), ("mined", 1.0, chunks("m", 24))]
    plan = plan_mix(sources, epochs=2, seed=3)
    assert plan == plan_mix(sources, epochs=2, seed=3)
    assert plan != plan_mix(sources, epochs=2, seed=4)
    ids = [g for t in plan for g in t["group_ids"]]
    assert len(ids) == 2 * 48 and [t["seq_start"] for t in plan] == sorted(t["seq_start"] for t in plan)
    first = ids[:48]
    assert Counter(g[0] for g in first) == {"g": 24, "m": 24} and len(set(first)) == 48  # half and half, no repeat
    # sources alternate through the stream (deficit round-robin), not one after the other
    half = Counter(t["source"] for t in plan[: len(plan) // 4])
    assert half["gen"] and half["mined"]
    # each task stays inside one chunk (one file's row groups)
    for t in plan:
        prefix = t["uri"].split(".")[0]
        assert all(g.startswith(prefix) for g in t["group_ids"])
    # a bigger mix repeats the smaller source, reshuffled
    big = plan_mix(sources, num_groups=80, epochs=1)
    assert Counter(g[0] for t in big for g in t["group_ids"]) == {"g": 40, "m": 40}


def test_data_position_is_exact_and_compact():
    pos = DataPosition()
    pos.add([0, 1, 5, 6])
    assert (pos.watermark, pos.extra, pos.size) == (2, {5, 6}, 4)
    pos.add([2, 3, 4])
    assert (pos.watermark, pos.extra) == (7, set())
    assert pos.done(3) and not pos.done(7)
    again = DataPosition.from_json(json.loads(json.dumps(pos.to_json())))
    assert again == pos


def test_groups_are_packed_whole_and_pages_stored_once(data):
    chunks_ = scan_source(data["examples"], chunk_groups=2)
    assert sum(len(c.group_ids) for c in chunks_) == 8 and len({c.uri for c in chunks_}) == 3
    task = {"uri": chunks_[0].uri, "row_groups": chunks_[0].row_groups, "group_ids": chunks_[0].group_ids[::-1],
            "seq_start": 10, "source": "s"}
    table = read_task(task)
    assert table.column("seq").to_pylist() == [10, 11] and table.column("group_id").to_pylist() == task["group_ids"]
    row = table.to_pylist()[0]
    assert len(row["queries"]) == 4 and len(row["images"]) == 1 and row["page_index"] == [0, 0, 0, 0]
    groups = read_groups(data["examples"])
    batch = collate_groups(groups[:3])
    assert batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and len(batch.images) == 3
    with pytest.raises(ValueError, match="expected 1 positive and at least 1 negative, got 2 positive"):
        pack_rows([{"group_id": "g", "label": 1, "query": "a", "page_id": "p"},
                   {"group_id": "g", "label": 1, "query": "b", "page_id": "p"}])


# ------------------------------------------------------------------------------------------- Ray Train
@pytest.fixture(autouse=True)
def fast_controller(monkeypatch):
    """Poll workers more often (a killed worker is noticed sooner) and skip the preemption watcher actor."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def test_worker_threads_follow_the_config_and_the_local_default_reserves_the_machine():
    from docrerank.core.config import load_config
    from docrerank.train.config import TrainConfig
    from docrerank.train.step import worker_threads

    def cfg(**scaling):
        return TrainConfig.model_validate({"output": "/tmp/x", "data": {"sources": [{"path": "/tmp/e"}]},
                                           "scaling": scaling})

    assert [worker_threads(cfg(cpus_per_worker=c)) for c in (0.5, 1, 1.5, 4)] == [1, 1, 2, 4]
    assert worker_threads(cfg(cpus_per_worker=1.5, threads=3)) == 3
    local = load_config(TrainConfig, str(Path(__file__).parents[1] / "jobs" / "configs" / "train_local.yaml"))
    # 1 torch thread (2 contend with Ray's processes: bench_train_loop), and the worker plus one read task hold the
    # 2 CPUs of the machine the default is for
    assert worker_threads(local) == 1
    assert local.scaling.cpus_per_worker + local.data.read_cpus == 2


def config(data, out: Path, name: str, stage: int, steps: int, threads: int = 0):
    from docrerank.train.config import TrainConfig

    return TrainConfig.model_validate({
        "output": str(out), "name": name,
        "data": {"sources": [{"path": data["gen"], "weight": 1.0, "name": "gen"},
                             {"path": data["mined"], "weight": 1.0, "name": "mined"}],
                 "groups_per_device": 1, "chunk_groups": 2, "read_cpus": 0.25},
        "model": {"path": data["model"], "max_pixels": MAX_PIXELS, "max_seq_len": 256},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "max_steps": steps},
        "deepspeed": {"stage": stage},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "threads": threads, "device": "cpu", "max_failures": 1},
        "checkpoint": {"every_steps": 1, "num_to_keep": 2},
    })


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def latest_state(out: Path, name: str) -> dict:
    ckpts = sorted((out / "checkpoints" / name).glob("checkpoint_0*"))
    return json.loads((ckpts[-1] / "train_state.json").read_text())


@pytest.mark.slow
def test_zero2_worker_killed_then_stopped_run_resumed_by_rerunning(data, ray_local, monkeypatch):
    import ray.train
    import yaml

    from docrerank.train.ray_train import FAULT_ENV, run_training
    from jobs.train_reranker import main

    out = data["root"] / "z2"
    cfg = config(data, out, "z2", stage=2, steps=4)
    # Rank 1 dies after step 1 and is replaced (resume from checkpoint 1); rank 0 dies after step 3, which is one
    # failure more than max_failures=1 allows: the run stops there.
    monkeypatch.setenv(FAULT_ENV, "1:1,0:3")
    with pytest.raises(ray.train.TrainingFailedError):
        run_training(cfg)
    monkeypatch.delenv(FAULT_ENV)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]  # step 1 was not redone
    state = latest_state(out, "z2")
    assert state["step"] == 3 and state["groups_trained"] == 6

    # The same command again continues the stopped run at step 4, with the remaining groups only.
    path = data["root"] / "z2.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["--config", str(path)]) == 0
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    state = latest_state(out, "z2")
    # every group of both sources exactly once
    assert state["step"] == 4 and state["position"] == {"watermark": 8, "extra": []}
    from docrerank.train.deepspeed_config import lr_multiplier

    assert log[3]["lr"] == pytest.approx(1e-3 * lr_multiplier(3, warmup_steps=1, total_steps=4))  # schedule restored
    assert all(r["examples"] == 8 and r["grad_norm"] > 0 for r in log)
    assert all(r["threads"] == 1 for r in log)  # cpus_per_worker 0.5, rounded up
    assert (out / "model" / "adapter" / "adapter_config.json").is_file()
    assert (out / "model" / "merged" / "model.safetensors").is_file()
    meta = json.loads((out / "_meta" / "train_reranker.json").read_text())
    assert meta["summary"]["steps"] == 4 and meta["config"]["name"] == "z2"


@pytest.mark.slow
def test_zero3_on_two_workers(data, ray_local):
    from docrerank.train.ray_train import run_training

    out = data["root"] / "z3"
    summary = run_training(config(data, out, "z3", stage=3, steps=2, threads=2))
    assert summary["steps"] == 2 and summary["workers"] == 2
    # the realised mix: 2 steps x 2 workers x 1 group of the 8 planned, half from each source
    mix = json.loads((out / "mix.json").read_text())
    assert summary["mix"] == mix and (mix["planned_groups"], mix["total"]["groups"]) == (8, 4)
    assert {k: v["groups"] for k, v in mix["sources"].items()} == {"gen": 2, "mined": 2}
    assert mix["total"]["examples"] == 16 and mix["total"]["negatives"] == {"generated": 12}
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    assert all(r["threads"] == 2 for r in log)  # scaling.threads reached the worker (rank 0 logs)
    ckpt = Path(summary["checkpoint"])
    # ZeRO-3 shards: one optimizer and one weight partition file per rank
    assert len(list(ckpt.glob("state/zero_pp_rank_*_optim_states.pt"))) == 2
    assert (out / "model" / "merged" / "model.safetensors").is_file()
