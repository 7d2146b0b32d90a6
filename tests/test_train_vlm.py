"""The vlm backbone on a tiny random-weight Qwen2-VL (CPU, in this process, no Ray): MonoQwen2-VL inputs, the pixel
cap and sequence-length check, True/False scoring, LoRA placement, a plain step, and a ZeRO-3 run whose exported
model gives the trained scores through plain transformers."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from docrerank.models.backbones import build_scorer, check_vlm_budget  # noqa: E402
from docrerank.data.collate import collate_groups  # noqa: E402
from docrerank.train.config import TrainConfig  # noqa: E402
from docrerank.data.examples import read_groups  # noqa: E402
from docrerank.train.local import train_local  # noqa: E402
from docrerank.train.step import PlainEngine, prepare, train_step  # noqa: E402

MAX_PIXELS = 56 * 56 * 4  # 16 visual tokens per page


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples
    from docrerank.models.tiny import make_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("train_vlm")
    corpus = make_corpus(root / "corpus", num_companies=2, years=[2021])
    examples = make_examples(root / "examples", corpus, dpi=20, groups_per_file=3)
    return {"root": root, "model": str(make_tiny_qwen2_vl(root / "qwen2vl")), "examples": str(examples)}


def config(data, **over) -> TrainConfig:
    cfg = {"output": str(data["root"] / "out"),
           "data": {"sources": [{"path": data["examples"]}], "groups_per_device": 2, "chunk_groups": 4},
           "model": {"path": data["model"], "max_pixels": MAX_PIXELS, "max_seq_len": 256},
           "optim": {"lr": 1e-3, "warmup_steps": 0},
           "scaling": {"device": "cpu", "use_ray": False}}
    for key, value in over.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return TrainConfig.model_validate(cfg)


@pytest.fixture(scope="module")
def scorer(data):
    cfg = config(data)
    return build_scorer(cfg.model, cfg.lora, device="cpu", seed=0)


@pytest.fixture(scope="module")
def groups(data):
    return read_groups(data["examples"])


def pair_inputs(scorer, batch):
    """The scorer's per-pair inputs (one left-padded row per example, ``model.shared_prefix`` aside), the layout a
    plain transformers forward takes."""
    pages = [scorer.page_pixels(img, pid) for img, pid in zip(batch.images, batch.page_ids)]
    return scorer.encode_pairs(batch.queries, batch.page_of, pages, batch.page_ids)


def plain_scores(model, inputs, answer_ids):
    """logit(True) - logit(False) at the last position of a plain transformers forward (pages repeated per example)."""
    per_page = torch.split(inputs["pixel_values"], [int(g.prod()) for g in inputs["page_grid"]])
    pixel_values = torch.cat([per_page[i] for i in inputs["page_of"].tolist()])
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=pixel_values,
                    image_grid_thw=inputs["page_grid"][inputs["page_of"]],
                    mm_token_type_ids=inputs["mm_token_type_ids"], use_cache=False)
    last = out.logits[:, -1].float()
    return last[:, answer_ids[0]] - last[:, answer_ids[1]]


def test_encode_builds_the_monoqwen_prompt_with_expanded_image_tokens(scorer, groups):
    batch = collate_groups(groups[:2])
    inputs = pair_inputs(scorer, batch)
    assert len(batch) == 8 and len(batch.page_ids) == 2  # two groups of 4 queries, one page each
    tok = scorer.tokenizer
    for row in range(len(batch)):
        ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
        text = tok.decode(ids)
        assert "Assert the relevance of the previous image document to the following query, answer True or False. " \
               f"The query is: {batch.queries[row]}" in text
        assert text.endswith("<|im_start|>assistant\n")
        assert text.index("<|vision_start|>") < text.index("Assert the relevance")
        grid = inputs["page_grid"][batch.page_of[row]]
        assert ids.count(scorer.image_token_id) == int(grid.prod()) // 4
    # each distinct page is preprocessed once; rows are left-padded so the last position is the answer slot
    assert inputs["pixel_values"].shape[0] == int(inputs["page_grid"].prod(-1).sum())
    assert inputs["attention_mask"][:, -1].all()


def test_scorer_is_a_module_and_shares_the_hf_engines_input_path(data, scorer, groups):
    from docrerank.engines import EngineConfig, build_engine, user
    from docrerank.models import backbones

    assert isinstance(scorer, torch.nn.Module) and type(scorer) is backbones.VLMScorer
    engine = build_engine(EngineConfig(backend="hf", model=data["model"], max_pixels=MAX_PIXELS,
                                       hf={"device": "cpu", "local_files_only": True}))
    g = groups[0]
    image, query = g.images[g.page_index[0]], g.queries[0]
    enc = engine.encode([user(image, scorer.cfg.prompt.format(query=query))])
    pixel_values, grid = scorer.page_pixels(image, g.page_ids[0])
    assert enc.ids == scorer.example_ids(query, scorer.image_tokens(grid))
    assert torch.equal(enc.pixel_values, pixel_values) and torch.equal(enc.grid_thw, grid)


def test_pixel_cap_bounds_every_page(scorer, groups):
    inputs = scorer.encode(collate_groups(groups[:4]))
    for t, h, w in inputs["page_grid"].tolist():
        assert t == 1 and h * w * 14 * 14 <= MAX_PIXELS


def test_sequence_length_is_checked_before_training(data, scorer, groups):
    cfg = config(data, **{"model.max_seq_len": 40})
    with pytest.raises(ValueError, match=r"model.max_seq_len=40 cannot hold a page at model.max_pixels=12544"):
        check_vlm_budget(cfg.model, data["model"])
    with pytest.raises(ValueError, match="max_seq_len=40"):
        build_scorer(cfg.model, cfg.lora)
    # a query too long for the budget fails at encoding, naming the page and the numbers
    batch = collate_groups(groups[:1])
    batch.queries[2] = "revenue " * 300
    msg = r"example 2 \(page .*\): \d+ tokens after expanding \d+ image tokens > model.max_seq_len=256"
    with pytest.raises(ValueError, match=msg):
        scorer.encode(batch)


def test_scores_are_the_true_minus_false_logits_in_float32(scorer, groups):
    inputs = pair_inputs(scorer, collate_groups(groups[:2]))
    scorer.eval()
    with torch.no_grad():
        got = scorer(**inputs)
    assert got.dtype == torch.float32 and got.shape == (8,)
    want = plain_scores(scorer.model.get_base_model(), inputs, scorer.answer_ids)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert got.unique().numel() == got.numel()  # no saturated ties


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_other_qwen_vl_families_score_like_the_plain_model(data, groups, arch):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    path = make_tiny_qwen2_vl(data["root"] / arch, arch=arch)
    cfg = config(data, **{"model.path": str(path), "model.gradient_checkpointing": False})
    scorer = build_scorer(cfg.model, cfg.lora).eval()
    names = [n for n, p in scorer.named_parameters() if p.requires_grad]
    assert names and all("language_model" in n for n in names)
    inputs = pair_inputs(scorer, collate_groups(groups[:2]))
    with torch.no_grad():
        got = scorer(**inputs)
    want = plain_scores(scorer.model.get_base_model(), inputs, scorer.answer_ids)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_a_forward_that_would_swallow_the_page_images_fails_at_build(data, scorer, monkeypatch):
    """transformers 5.17's Qwen2VLModel.forward took no mm_encoder_outputs (its **kwargs swallowed them, and every
    page scored the same): building a scorer on such a forward fails, naming the version needed."""
    inner = type(scorer.model.get_base_model().model)

    def old_forward(self, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None,
                    mm_token_type_ids=None, **kwargs):  # the 5.17 signature: no mm_encoder_outputs
        raise AssertionError("not reached")

    monkeypatch.setattr(inner, "forward", old_forward)
    cfg = config(data)
    with pytest.raises(RuntimeError, match=r"does not take mm_encoder_outputs.*transformers>=5\.18"):
        build_scorer(cfg.model, cfg.lora)


def test_lora_adapts_the_language_model_only(scorer):
    names = [n for n, p in scorer.named_parameters() if p.requires_grad]
    assert len(names) == 2 * 7 * 2  # 2 layers x q,k,v,o,gate,up,down x (A, B)
    assert all("language_model" in n and ".lora_" in n for n in names)
    assert not any("visual" in n for n in names)
    assert sum(p.numel() for p in scorer.parameters() if p.requires_grad) < sum(p.numel() for p in scorer.parameters())


def test_plain_training_step_without_ray_lowers_the_loss(data, groups):
    cfg = config(data, **{"model.gradient_checkpointing": False, "deepspeed.enabled": False})
    scorer = build_scorer(cfg.model, cfg.lora, seed=1)
    engine = PlainEngine(scorer, cfg, total_steps=100, device="cpu")
    mb = prepare(scorer, collate_groups(groups[:2]))
    losses = [train_step(engine, [mb], cfg.loss)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0] - 0.05, losses


def test_zero3_run_exports_a_model_plain_transformers_scores_the_same(data, groups):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    cfg = config(data, **{"deepspeed.stage": 3, "optim.max_steps": 2})
    res = train_local(cfg, device="cpu")
    assert res.steps == 2
    lines = [json.loads(x) for x in (data["root"] / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(r["loss"] > 0 and r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["memory_mb"] > 0 for r in lines)
    assert all(r["model_flops"] > 0 and r["model_tflops_per_s"] > 0 and "mfu" not in r for r in lines)  # cpu: no MFU
    assert (data["root"] / "out" / "tensorboard").is_dir()

    model_dir = data["root"] / "out" / "model"
    card = json.loads((model_dir / "merged" / "reranker.json").read_text())
    assert card["backbone"] == "vlm" and card["true_token"] == "True" and card["max_pixels"] == MAX_PIXELS
    pre = json.loads((model_dir / "merged" / "preprocessor_config.json").read_text())
    assert pre["max_pixels"] == MAX_PIXELS
    assert json.loads((model_dir / "train_config.json").read_text())["deepspeed"]["stage"] == 3

    trained = res.scorer.eval()
    inputs = pair_inputs(trained, collate_groups(groups[:2]))
    with torch.no_grad():
        want = trained(**inputs)
    merged = AutoModelForImageTextToText.from_pretrained(model_dir / "merged", local_files_only=True).eval()
    got = plain_scores(merged, inputs, trained.answer_ids)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    base = AutoModelForImageTextToText.from_pretrained(data["model"], local_files_only=True)
    adapted = PeftModel.from_pretrained(base, model_dir / "adapter").eval()
    got = plain_scores(adapted, inputs, trained.answer_ids)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # training moved the scores away from the untrained model's
    fresh = AutoModelForImageTextToText.from_pretrained(data["model"], local_files_only=True).eval()
    untrained = plain_scores(fresh, inputs, trained.answer_ids)
    assert not torch.allclose(untrained, want, atol=1e-3)


def test_driver_checks_the_budget_from_config_files_only(data, tmp_path, monkeypatch):
    """The Ray driver (a CPU head) fetches tokenizer and processor files, never the weights, to check the budget."""
    import shutil

    from huggingface_hub import constants

    from docrerank.models.sources import fetch_config_files

    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    shutil.copytree(data["model"], snap, ignore=shutil.ignore_patterns("*.safetensors"))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = fetch_config_files("org/tiny")
    assert not list(snap.glob("*.safetensors"))
    check_vlm_budget(config(data).model, path)  # passes without weights
    with pytest.raises(ValueError, match="max_seq_len=40"):
        check_vlm_budget(config(data, **{"model.max_seq_len": 40}).model, path)


def test_export_merges_lora_in_float32_then_casts(tmp_path, groups):
    """A bf16 base: each merged weight is W + scale * B @ A computed in float32 and rounded once to bf16 (a merge in
    bf16 rounds twice and differs), and the merged model scores like the trained adapter."""
    from transformers import AutoModelForImageTextToText

    from docrerank.models.tiny import make_tiny_qwen2_vl
    from docrerank.train.export import export_model, load_trained

    base = make_tiny_qwen2_vl(tmp_path / "bf16", dtype="bfloat16", initializer_range=0.02)
    cfg = TrainConfig.model_validate({
        "output": str(tmp_path / "out"), "data": {"sources": [{"path": "x"}]}, "lora": {"r": 32, "alpha": 64},
        "model": {"path": str(base), "max_pixels": MAX_PIXELS, "max_seq_len": 256, "dtype": "bfloat16",
                  "gradient_checkpointing": False}})
    ref = build_scorer(cfg.model.model_copy(update={"dtype": "float32"}), cfg.lora, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for n, p in ref.named_parameters():
        if p.requires_grad:  # a trained-looking adapter: both factors non-zero
            p.data = torch.randn(p.shape, generator=gen) * 0.05
            state[n] = p.detach().clone()
    export_model(state, cfg, device="cpu")
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "out" / "model" / "merged", local_files_only=True)
    assert next(merged.parameters()).dtype == torch.bfloat16
    plain = AutoModelForImageTextToText.from_pretrained(base, local_files_only=True)
    old = load_trained(cfg, state, "cpu", dtype="bfloat16").model.merge_and_unload()  # the former export
    weights, old_weights = dict(merged.named_parameters()), dict(old.named_parameters())
    differ = old_differ = 0
    for name, w in plain.named_parameters():
        prefix = "model.base_model.model." + name.removesuffix(".weight")
        if f"{prefix}.lora_A.default.weight" not in state:
            continue
        a, b = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
        want = (w.float() + 2.0 * b @ a).bfloat16()  # scale = alpha / r
        assert torch.equal(weights[name], want), name
        # bf16 factors (PEFT without its float32 adapter autocast) round differently: the check above can fail
        differ += int(((w + 2.0 * b.bfloat16() @ a.bfloat16()) != want).sum())
        old_differ += int((old_weights[name] != want).sum())
    assert differ > 0
    print(f"weights where a bf16 merge differs: {old_differ} (fp32 adapters), {differ} (bf16 factors)")

    inputs = pair_inputs(ref, collate_groups(groups[:2]))
    with torch.no_grad():
        want = ref(**inputs)  # the adapter on the bf16 base's exact values, in float32
    got = plain_scores(merged.float().eval(), inputs, ref.answer_ids)
    before = plain_scores(old.float().eval(), inputs, ref.answer_ids)
    err, err_before = (got - want).abs().mean().item(), (before - want).abs().mean().item()
    print(f"mean |merged - adapter|: fp32 merge {err:.3g}, bf16 merge {err_before:.3g}, "
          f"max |score| {want.abs().max().item():.3g}")
    assert err < 0.01 * want.abs().max().item()
