"""The DeepSpeed config builder (pure), the schedule it implies, the training config and the shipped YAMLs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docrerank.core.config import ConfigError, load_config
from docrerank.train import deepspeed_config as dsc
from docrerank.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def base(**kw):
    args = dict(stage=2, micro_batch_size=32, grad_accum=2, world_size=4, total_steps=1000, device="cuda")
    args.update(kw)
    return dsc.build_deepspeed_config(**args)


def test_stage2_gpu_defaults_are_the_papers():
    c = base()
    assert c["train_micro_batch_size_per_gpu"] == 32
    assert c["gradient_accumulation_steps"] == 2
    assert c["train_batch_size"] == 32 * 2 * 4
    assert c["zero_optimization"]["stage"] == 2 and c["zero_optimization"]["overlap_comm"] is True
    assert c["bf16"] == {"enabled": True} and "fp16" not in c
    opt = c["optimizer"]
    assert opt["type"] == "AdamW" and opt["params"]["lr"] == 1e-4 and opt["params"]["torch_adam"] is False
    assert "fused" not in opt["params"]  # on GPU DeepSpeed's fused_adam, or torch's default
    assert "scheduler" not in c  # the schedule is a client scheduler (make_scheduler), see below
    assert c["gradient_clipping"] == 1.0


def test_cpu_is_fp32_with_torch_adamw_and_stage3_keys():
    c = base(stage=3, device="cpu", offload_optimizer=True, offload_params=True)
    assert "bf16" not in c and "fp16" not in c
    assert c["optimizer"]["params"]["torch_adam"] is True
    assert c["optimizer"]["params"]["fused"] is True  # torch's fused CPU AdamW kernel (bench_train_loop)
    z = c["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["overlap_comm"] is False


def test_schedule_warms_up_linearly_then_decays_linearly():
    m = [dsc.lr_multiplier(s, warmup_steps=4, total_steps=12) for s in range(12)]
    assert m[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # the first update already moves
    assert m[4:] == pytest.approx([(12 - s) / 8 for s in range(4, 12)])
    assert min(m) > 0 and m[-1] == pytest.approx(1 / 8)
    assert dsc.lr_multiplier(12, warmup_steps=4, total_steps=12) == 0.0
    assert dsc.lr_multiplier(12, warmup_steps=4, total_steps=12, min_ratio=0.1) == pytest.approx(0.1)
    assert dsc.lr_multiplier(0, warmup_steps=0, total_steps=5) == 1.0
    # the paper's 100 warm-up steps are clamped to half of a short run
    assert dsc.warmup_steps_for(100, 10) == 5 and dsc.warmup_steps_for(3, 10) == 3


@pytest.mark.parametrize("kw, msg", [
    (dict(stage=1), "expected 2 or 3"),
    (dict(device="tpu"), "expected 'cpu' or 'cuda'"),
    (dict(grad_accum=0), "grad_accum: expected >= 1"),
    (dict(offload_params=True), "needs stage 3"),
    (dict(device="cpu", precision="fp16"), "fp16 needs a GPU"),
])
def test_invalid_arguments_name_the_value(kw, msg):
    with pytest.raises(ValueError, match=msg):
        base(**kw)


def test_deepspeed_accepts_the_built_config_on_cpu():
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from docrerank.train.dist import ensure_process_group

    ensure_process_group("cpu")
    import deepspeed

    for stage in (2, 3):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        cfg = base(stage=stage, device="cpu", world_size=1, micro_batch_size=2, grad_accum=1, total_steps=4, lr=1e-2)
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=list(model.parameters()), config=cfg,
            lr_scheduler=lambda opt: dsc.make_scheduler(opt, lr=1e-2, min_lr=0.0, warmup_steps=2, total_steps=4))
        lrs = []
        for _ in range(4):
            lrs.append(engine.get_lr()[0])
            loss = engine(torch.randn(2, 4)).pow(2).mean()
            engine.backward(loss)
            engine.step()
        assert engine.global_steps == 4
        assert lrs == pytest.approx([5e-3, 1e-2, 1e-2, 5e-3])


def test_from_train_config_and_the_plain_engine_schedule():
    import torch

    from docrerank.train.step import PlainEngine

    cfg = TrainConfig.model_validate({"output": "x", "data": {"sources": [{"path": "x"}]},
                                      "optim": {"warmup_steps": 3, "lr": 1e-3}})
    c = dsc.from_train_config(cfg, world_size=2, total_steps=10, device="cpu")
    assert c["train_micro_batch_size_per_gpu"] == 32 and c["train_batch_size"] == 64
    model = torch.nn.Linear(2, 1)
    eng = PlainEngine(model, cfg, total_steps=10, device="cpu")
    seen = []
    for _ in range(5):
        seen.append(eng.get_lr()[0])
        eng(input=torch.ones(1, 2)).sum().backward()
        eng.step()
    assert seen == pytest.approx([1e-3 * dsc.lr_multiplier(s, warmup_steps=3, total_steps=10) for s in range(5)])


def test_train_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="deepspeed.offload_params needs deepspeed.stage=3"):
        load_config(TrainConfig, overrides=["output=x", "data.sources=[{path: x}]", "deepspeed.offload_params=true"])
    with pytest.raises(ConfigError, match="data.sources"):
        load_config(TrainConfig, overrides=["output=x", "data.sources=[]"])
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(TrainConfig, overrides=["output=x", "data.sources=[{path: x}]", "model.backbone=clip"])
    with pytest.raises(ConfigError, match="512 tokens"):
        load_config(TrainConfig, overrides=["output=x", "data.sources=[{path: x}]", "model.backbone=text",
                                            "model.max_seq_len=1024"])


@pytest.mark.parametrize("name", ["train_local.yaml", "train_paper.yaml"])
def test_shipped_configs_validate_and_build(name):
    cfg = load_config(TrainConfig, REPO / "jobs" / "configs" / name)
    device = "cpu" if cfg.scaling.device == "cpu" else "cuda"
    ds = dsc.from_train_config(cfg, world_size=cfg.scaling.num_workers, total_steps=1000, device=device)
    assert ds["zero_optimization"]["stage"] == cfg.deepspeed.stage
    if name == "train_paper.yaml":
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (32, 32, 0.1)
        assert cfg.optim.lr == 1e-4 and cfg.optim.warmup_steps == 100 and cfg.optim.epochs == 1
        assert cfg.data.groups_per_device == 8 and cfg.loss.positive_weight == 3.0
        assert ds["bf16"] == {"enabled": True}
    else:
        assert cfg.model.backbone == "text" and "bf16" not in ds


def test_driver_side_modules_import_nothing_heavy():
    code = ("import sys, docrerank.train, docrerank.train.config, docrerank.data.examples, docrerank.data.mix, "
            "docrerank.data.collate, docrerank.train.loss, docrerank.train.deepspeed_config, docrerank.train.dist, "
            "docrerank.train.step, docrerank.train.local, docrerank.train.export, docrerank.train.ray_train, "
            "docrerank.analysis.negatives, jobs.train_reranker; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("requested, device, offload, prebuilt, can, torch_adam, why", [
    ("auto", "cpu", False, False, False, True, "CPU run"),
    ("auto", "cuda", False, True, False, False, "fused_adam (prebuilt op)"),
    ("auto", "cuda", False, False, True, False, "JIT-compiled"),
    ("auto", "cuda", False, False, False, True, "torch AdamW (DeepSpeed's fused_adam op is not prebuilt"),
    ("auto", "cuda", True, False, False, True, "cpu_adam op is not prebuilt"),
    ("torch", "cuda", False, True, True, True, "deepspeed.optimizer=torch"),
    ("fused", "cuda", False, True, False, False, "prebuilt"),
])
def test_adam_is_decided_from_what_the_worker_can_load(requested, device, offload, prebuilt, can, torch_adam, why):
    got, reason = dsc.choose_adam(requested, device, offload, prebuilt, can)
    assert got is torch_adam and why in reason
    cfg = base(device=device, torch_adam=got, offload_optimizer=offload)
    assert cfg["optimizer"]["params"]["torch_adam"] is torch_adam


def test_fused_adam_required_but_unavailable_fails_with_the_reason():
    with pytest.raises(ValueError, match="deepspeed.optimizer=fused: DeepSpeed's fused_adam op is not prebuilt"):
        dsc.choose_adam("fused", "cuda", False, prebuilt=False, can_compile=False)


def test_the_worker_probe_and_the_log_line(caplog):
    import shutil

    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from docrerank.train.step import adam_ops, make_engine

    prebuilt, can = adam_ops(offload_optimizer=False)
    assert prebuilt is False  # .ci/install builds DeepSpeed without ops (DS_BUILD_OPS=0)
    if not shutil.which("nvcc"):
        assert can is False  # no nvcc: FusedAdam cannot be JIT-compiled here, auto picks torch AdamW
        assert dsc.choose_adam("auto", "cuda", False, prebuilt, can)[0] is True
    cfg = TrainConfig.model_validate({"output": "x", "data": {"sources": [{"path": "x"}]},
                                      "scaling": {"device": "cpu"}, "optim": {"warmup_steps": 0}})
    with caplog.at_level("INFO", logger="docrerank.train"):
        engine = make_engine(torch.nn.Linear(2, 1), cfg, total_steps=2, device="cpu")
    assert "optimizer: torch AdamW (CPU run)" in caplog.text
    assert type(engine.optimizer).__name__ != "FusedAdam"


def test_auto_adam_never_jit_compiles_with_an_nvcc_of_another_cuda_major(monkeypatch):
    """The -gpu Ray image had a CUDA 12 nvcc while PyPI's torch 2.13 is a CUDA 13 build: DeepSpeed refuses to load
    an op compiled across majors, so the probe says "cannot compile" and auto picks torch AdamW."""
    import shutil

    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder import FusedAdamBuilder
    from deepspeed.ops.op_builder import builder as op_builder

    from docrerank.train.step import adam_ops

    assert dsc.cuda_majors_match((13, 0), "13.0") and dsc.cuda_majors_match((13, 2), "13.0")
    assert not dsc.cuda_majors_match((12, 8), "13.0") and not dsc.cuda_majors_match((13, 0), None)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/ninja" if name == "ninja" else real_which(name))
    monkeypatch.setattr(FusedAdamBuilder, "is_compatible", lambda self, verbose=False: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(op_builder, "installed_cuda_version", lambda name="": (12, 8))
    prebuilt, can = adam_ops(offload_optimizer=False)
    assert (prebuilt, can) == (False, False)
    assert dsc.choose_adam("auto", "cuda", False, prebuilt, can)[0] is True
    monkeypatch.setattr(op_builder, "installed_cuda_version", lambda name="": (13, 0))
    assert adam_ops(offload_optimizer=False) == (False, True)  # same major: it may be compiled
