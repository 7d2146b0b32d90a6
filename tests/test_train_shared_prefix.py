"""The vlm scorer's shared page prefix in training (``model.shared_prefix``): each page of a micro-batch runs the
language model once on the prefix its queries share, each query's tokens attending to it through a block mask.
Scores, the loss and every LoRA gradient equal the per-pair path's (tiny random Qwen2-VL, Qwen2.5-VL and Qwen3-VL in
float32, with and without gradient checkpointing, plain torch and DeepSpeed ZeRO-2 on CPU), and the model FLOPs
counted for a step match what torch's FLOP counter sees."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from docrerank.models.backbones import block_attention_mask, build_scorer  # noqa: E402
from docrerank.data.collate import collate_groups  # noqa: E402
from docrerank.train.config import TrainConfig  # noqa: E402
from docrerank.data.examples import read_groups  # noqa: E402
from docrerank.train.loss import compute_loss, example_weights  # noqa: E402

MAX_PIXELS = 56 * 56 * 4  # 16 visual tokens per page


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples

    root = tmp_path_factory.mktemp("shared_prefix")
    corpus = make_corpus(root / "corpus", num_companies=2, years=[2021])
    examples = make_examples(root / "examples", corpus, dpi=20, groups_per_file=3)
    return {"root": root, "groups": read_groups(str(examples)), "models": {}}


def model_path(data, arch: str) -> str:
    from docrerank.models.tiny import make_tiny_qwen2_vl

    if arch not in data["models"]:
        data["models"][arch] = str(make_tiny_qwen2_vl(data["root"] / arch, arch=arch))
    return data["models"][arch]


def config(data, arch: str, shared: bool, checkpointing: bool = False, **model) -> TrainConfig:
    return TrainConfig.model_validate({
        "output": str(data["root"] / "out"), "data": {"sources": [{"path": "x"}]},
        "model": {"path": model_path(data, arch), "max_pixels": MAX_PIXELS, "max_seq_len": 256,
                  "gradient_checkpointing": checkpointing, "shared_prefix": shared, **model},
        # dropout 0: with dropout the two paths draw different masks (the shared prefix is dropped out once)
        "lora": {"dropout": 0.0}, "optim": {"warmup_steps": 0}, "scaling": {"device": "cpu", "use_ray": False}})


def scorer_for(cfg: TrainConfig):
    """A scorer whose LoRA factors are all non-zero (a trained-looking adapter: every gradient is non-trivial)."""
    scorer = build_scorer(cfg.model, cfg.lora, seed=0)
    gen = torch.Generator().manual_seed(1)
    for p in scorer.parameters():
        if p.requires_grad:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    return scorer.train()


def batch_of(data):
    """Three groups (1 positive + 3 negatives each) on their pages, with one page asked by two groups."""
    groups = data["groups"][:3]
    batch = collate_groups(groups + [dataclasses.replace(groups[0], group_id="again", seq=99)])
    assert len(batch.page_ids) == 3 and len(batch) == 16
    return batch


def loss_and_grads(scorer, batch, cfg):
    inputs = scorer.encode(batch)
    scores = scorer(**inputs)
    loss = compute_loss("pointwise", scores, batch.labels, batch.group_index,
                        example_weights(batch.labels, cfg.loss.positive_weight))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in scorer.named_parameters() if p.requires_grad}
    return inputs, scores.detach(), loss.detach(), grads


def assert_grads_equal(want: dict, got: dict, rtol: float = 1e-4) -> None:
    assert want.keys() == got.keys() and len(want) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B)
    for name, w in want.items():
        assert w.abs().max() > 0, name
        err = (got[name] - w).abs().max() / w.abs().max()
        assert err < rtol, (name, float(err))


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_shared_prefix_gives_the_per_pair_loss_and_gradients(data, arch, checkpointing):
    batch = batch_of(data)
    cfgs = [config(data, arch, shared, checkpointing) for shared in (False, True)]
    pair_in, pair_scores, pair_loss, pair_grads = loss_and_grads(scorer_for(cfgs[0]), batch, cfgs[0])
    shared_scorer = scorer_for(cfgs[1])
    lm = shared_scorer.model.get_base_model().model.language_model
    assert lm.gradient_checkpointing == checkpointing
    shared_in, shared_scores, shared_loss, shared_grads = loss_and_grads(shared_scorer, batch, cfgs[1])
    assert "segment_ids" in shared_in and "segment_ids" not in pair_in
    # one row per page instead of one per example: the image tokens run 3 times instead of 16
    assert shared_in["input_ids"].shape[0] == 3 and pair_in["input_ids"].shape[0] == 16
    assert int(shared_in["attention_mask"].sum()) < int(pair_in["attention_mask"].sum()) / 2
    assert torch.allclose(shared_scores, pair_scores, atol=2e-5), (shared_scores - pair_scores).abs().max()
    assert shared_scores[:12].unique().numel() == 12  # the last group repeats the first one's page and queries
    assert torch.allclose(shared_scores[12:], shared_scores[:4], atol=1e-6)
    assert torch.allclose(shared_loss, pair_loss, rtol=1e-5)
    assert_grads_equal(pair_grads, shared_grads)


def test_shared_prefix_gradients_equal_under_zero2(data):
    """Both paths through a DeepSpeed ZeRO-2 engine (CPU, gloo, fp32): the full gradients equal after backward."""
    from deepspeed.utils import safe_get_full_grad

    from docrerank.train.step import make_engine, prepare

    batch = batch_of(data)
    grads, losses = [], []
    for shared in (False, True):
        cfg = config(data, "qwen2_vl", shared, checkpointing=True).model_copy(deep=True)
        cfg.deepspeed.stage = 2
        scorer = scorer_for(cfg)
        engine = make_engine(scorer, cfg, total_steps=2, device="cpu")
        assert engine.zero_optimization_stage() == 2
        mb = prepare(scorer, batch)
        engine.train()
        scores = engine(**mb.inputs)
        loss = compute_loss("pointwise", scores, mb.labels, mb.group_index, example_weights(mb.labels, 3.0))
        engine.backward(loss)
        grads.append({n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()
                      if p.requires_grad})
        losses.append(float(loss.detach()))
        engine.step()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert_grads_equal(grads[0], grads[1])


def test_packed_rows_hold_each_example_once_in_order(data):
    cfg = config(data, "qwen2_vl", True)
    scorer = build_scorer(cfg.model, cfg.lora)
    batch = batch_of(data)
    x = scorer.encode(batch)
    seg, ids = x["segment_ids"], x["input_ids"]
    for i, (q, p) in enumerate(zip(batch.queries, batch.page_of)):
        r, c = int(x["score_row"][i]), int(x["score_col"][i])
        assert r == p  # one row per page, in the batch's page order
        own = int(seg[r, c])
        # prefix + this example's suffix is exactly the example's own token sequence, ending where it is scored
        tokens = ids[r][(seg[r] == 0) | (seg[r] == own)].tolist()
        assert tokens == scorer.example_ids(q, scorer.image_tokens(x["page_grid"][p]))
        assert c == int(torch.nonzero(seg[r] == own).max())
    # every image token of a page lies in its prefix, once per page
    assert ((x["mm_token_type_ids"] == 1) <= (seg == 0)).all()
    assert int(x["mm_token_type_ids"].sum()) == sum(scorer.image_tokens(g) for g in x["page_grid"])
    # positions: the model's own M-RoPE over each example's full sequence
    model = scorer.model.get_base_model()
    from docrerank.models.qwen_vl import sequence_positions

    for i in (0, 5, 13):
        r, own = int(x["score_row"][i]), int(seg[int(x["score_row"][i]), int(x["score_col"][i])])
        keep = (seg[r] == 0) | (seg[r] == own)
        full = sequence_positions(model, ids[r][keep].tolist(), scorer.image_token_id, x["page_grid"][r:r + 1])
        assert torch.equal(x["position_ids"][:, r][:, keep], full)


def test_block_mask_lets_a_query_see_the_prefix_and_itself_only():
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = block_attention_mask(seg, torch.float32)[0, 0] == 0
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # the second query does not see the first
        [0, 0, 0, 0, 0, 1],  # padding sees only itself (no empty softmax row)
    ], dtype=torch.bool)
    assert torch.equal(allowed, want)


def test_query_first_format_and_switch_off_keep_the_per_pair_path(data, tmp_path):
    from docrerank.models.tiny import make_tiny_qwen3_vl_reranker

    batch = batch_of(data)
    off = config(data, "qwen2_vl", False)
    assert "segment_ids" not in build_scorer(off.model, off.lora).encode(batch)
    path = make_tiny_qwen3_vl_reranker(tmp_path / "qwen3_reranker")
    cfg = config(data, "qwen2_vl", True, path=str(path))
    scorer = build_scorer(cfg.model, cfg.lora)
    assert scorer.fmt.name == "qwen3_reranker"  # the query precedes the page: no image prefix to share
    assert "segment_ids" not in scorer.encode(batch)


def test_flash_attention_with_shared_prefix_is_a_config_error(data):
    with pytest.raises(ValueError, match="model.shared_prefix needs an attention kernel that takes a mask"):
        config(data, "qwen2_vl", True, attn_implementation="flash_attention_2")
    config(data, "qwen2_vl", False, attn_implementation="flash_attention_2")


@pytest.mark.parametrize("shared", [False, True])
def test_counted_flops_match_torch_flop_counter(data, shared):
    """The language model's forward FLOPs as counted (``train/flops.py``) against torch's FlopCounterMode on the
    same forward (eager attention: every matmul visible to the counter; it also counts the masked-out pairs and
    the padding, which the count leaves out, so the counter bounds it from above, close)."""
    from torch.utils.flop_counter import FlopCounterMode


    cfg = config(data, "qwen2_vl", shared, attn_implementation="eager")
    scorer = build_scorer(cfg.model, cfg.lora).eval()
    x = scorer.encode(collate_groups(data["groups"][:2]))
    counted = scorer.model_flops(x)
    inner = scorer.model.get_base_model().model
    with torch.no_grad():
        feats = inner.get_image_features(x["pixel_values"], x["page_grid"], return_dict=True)
        with FlopCounterMode(display=False) as vision_counter:
            inner.get_image_features(x["pixel_values"], x["page_grid"], return_dict=True)
        with FlopCounterMode(display=False) as counter:
            feats.pooler_output = [feats.pooler_output[i] for i in x["page_of"].tolist()]
            if shared:
                mask = block_attention_mask(x["segment_ids"], torch.float32)
                inner(input_ids=x["input_ids"], attention_mask=mask, position_ids=x["position_ids"],
                      image_grid_thw=x["page_grid"][x["page_of"]], mm_token_type_ids=x["mm_token_type_ids"],
                      mm_encoder_outputs={"image": feats}, use_cache=False)
            else:
                inner(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                      image_grid_thw=x["page_grid"][x["page_of"]], mm_token_type_ids=x["mm_token_type_ids"],
                      mm_encoder_outputs={"image": feats}, use_cache=False)
    measured = counter.get_total_flops()
    # the counter sees every padded position and masked pair; the count only real tokens and allowed pairs
    shapes = scorer._flop_shapes
    rows, width = x["input_ids"].shape
    dense_attn = 4 * shapes["lm_layers"] * shapes["lm_attn_dim"] * rows * width * width
    dense = 2 * rows * width * shapes["lm_linear"] + dense_attn
    assert counted["lm_forward"] <= measured <= dense * 1.02, (counted["lm_forward"], measured, dense)
    linear_only = measured - dense_attn
    assert linear_only == pytest.approx(2 * rows * width * shapes["lm_linear"], rel=0.02)
    assert counted["vision"] == pytest.approx(vision_counter.get_total_flops(), rel=0.05)
    assert counted["lm"] > 2 * counted["lm_forward"]  # backward: activation gradients + LoRA weight gradients


def test_shared_prefix_counts_fewer_flops_per_group(data):
    batch = collate_groups(data["groups"][:2])
    got, tokens = {}, {}
    for shared in (False, True):
        cfg = config(data, "qwen2_vl", shared)
        scorer = build_scorer(cfg.model, cfg.lora)
        x = scorer.encode(batch)
        got[shared], tokens[shared] = scorer.model_flops(x), int(x["attention_mask"].sum())
    assert got[True]["vision"] == got[False]["vision"]  # once per page on both paths
    # 16-token pages here: the language model's work falls about as its tokens do (a 1,000-token page: ~4x)
    ratio = got[True]["lm"] / got[False]["lm"]
    assert ratio < 0.55 and ratio == pytest.approx(tokens[True] / tokens[False], rel=0.1)


def test_peak_table_and_mfu():
    from docrerank.models.flops import mfu, peak_bf16_tflops

    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA H200") == 989.0
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_bf16_tflops("NVIDIA L4") == 121.0
    assert peak_bf16_tflops("NVIDIA L40S") == 362.0
    assert peak_bf16_tflops("Some Future Accelerator") is None
    assert mfu(989e12 * 0.5 * 2, 1.0, "NVIDIA H100 80GB HBM3", devices=2) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, "cpu") is None
