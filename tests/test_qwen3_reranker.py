"""Qwen3-VL-Reranker as a vlm backbone, on a tiny random Qwen3-VL saved in that layout (CPU, no downloads): its
prompt is the official layout, what the checkpoint ships (LogitScore ids, chat template) is read, zero-shot scores
are logit(yes) - logit(no) of a plain forward, jobs.evaluate runs it, and a LoRA step, export and reload give the
trained scores."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from docrerank.models.prompt_format import (  # noqa: E402
    MONOQWEN,
    QWEN3_INSTRUCTION,
    QWEN3_RERANKER,
    QWEN3_SYSTEM,
    PromptFormat,
    resolve_format,
    shipped,
)

MAX_PIXELS = 32 * 32 * 16  # 16 visual tokens per page (Qwen3-VL: 32x32 pixels per token)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples
    from docrerank.models.tiny import make_tiny_qwen3_vl_reranker

    root = tmp_path_factory.mktemp("qwen3_reranker")
    corpus = make_corpus(root / "corpus", num_companies=2, years=[2021])
    examples = make_examples(root / "examples", corpus, dpi=20, groups_per_file=3)
    model = make_tiny_qwen3_vl_reranker(root / "Qwen3-VL-Reranker-tiny", max_pixels=MAX_PIXELS)
    return {"root": root, "corpus": corpus, "model": str(model), "examples": str(examples)}


def test_prompt_is_the_official_layout_rendered_by_the_qwen_vl_chat_template():
    """The official script's messages (system prompt; "<Instruct>: ...", "<Query>:", the query, "\\n<Document>:",
    the image) through a Qwen-VL chat template give exactly the text and ids the format writes directly."""
    from docrerank.models.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer(answer_words=("yes", "no"))
    fmt = PromptFormat(QWEN3_RERANKER)
    query = "What was the total revenue in 2021?"
    official = [{"role": "system", "content": [{"type": "text", "text": QWEN3_SYSTEM}]},
                {"role": "user", "content": [{"type": "text", "text": "<Instruct>: " + QWEN3_INSTRUCTION},
                                             {"type": "text", "text": "<Query>:"}, {"type": "text", "text": query},
                                             {"type": "text", "text": "\n<Document>:"}, {"type": "image"}]}]
    rendered = tok.apply_chat_template(official, tokenize=False, add_generation_prompt=True)
    assert rendered == fmt.text(query) == tok.apply_chat_template(fmt.messages(query), tokenize=False,
                                                                  add_generation_prompt=True)
    assert fmt.prompt_ids(tok, query) == tok(rendered, add_special_tokens=False)["input_ids"]
    assert rendered.index(query) < rendered.index("<|image_pad|>") and rendered.endswith("<|im_start|>assistant\n")
    assert not fmt.image_first and PromptFormat(MONOQWEN).image_first
    ids = fmt.answer_token_ids(tok)
    assert ids == (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))


def test_what_the_checkpoint_ships_wins_over_the_defaults(tmp_path):
    from docrerank.models.tiny import QWEN3_RERANKER_TEMPLATE

    ckpt = tmp_path / "my-reranker"
    (ckpt / "1_LogitScore").mkdir(parents=True)
    (ckpt / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LogitScore",
         "type": "sentence_transformers.cross_encoder.modules.LogitScore"}]))
    (ckpt / "1_LogitScore" / "config.json").write_text(json.dumps({"true_token_id": 11, "false_token_id": 7}))
    (ckpt / "chat_template.jinja").write_text(QWEN3_RERANKER_TEMPLATE.format(system="Say yes or no.",
                                                                             instruction="Find the page."))
    assert shipped(ckpt) == {"answer_ids": (11, 7), "template": True, "system": "Say yes or no.",
                             "instruction": "Find the page."}
    fmt = resolve_format(ckpt)
    assert (fmt.name, fmt.answer_ids, fmt.system, fmt.instruction) == (QWEN3_RERANKER, (11, 7), "Say yes or no.",
                                                                       "Find the page.")
    assert fmt.answer_token_ids(tokenizer=None) == (11, 7)
    # config values win; answer words other than yes/no replace the shipped ids
    own = resolve_format(ckpt, instruction="Retrieve the filing.", true_token="Yes", false_token="No")
    assert own.instruction == "Retrieve the filing." and own.answer_ids is None and own.true_token == "Yes"
    assert resolve_format(ckpt, true_token="yes").answer_ids == (11, 7)
    # a checkpoint named like the official ones, shipping nothing: the official defaults
    named = tmp_path / "models--Qwen--Qwen3-VL-Reranker-2B" / "snapshots" / "abc"
    named.mkdir(parents=True)
    fmt = resolve_format(named)
    assert (fmt.name, fmt.system, fmt.instruction, fmt.true_token, fmt.false_token, fmt.answer_ids) == (
        QWEN3_RERANKER, QWEN3_SYSTEM, QWEN3_INSTRUCTION, "yes", "no", None)
    # any other Qwen-VL checkpoint stays MonoQwen2-VL unless told
    plain = tmp_path / "Qwen2-VL-2B-Instruct"
    plain.mkdir()
    assert resolve_format(plain).name == MONOQWEN and resolve_format(plain).true_token == "True"
    assert resolve_format(plain, "qwen3_reranker").name == QWEN3_RERANKER
    with pytest.raises(ValueError, match="model.prompt_format: expected 'auto' or one of"):
        resolve_format(plain, "mono")


def test_zero_shot_scores_are_yes_minus_no_of_a_plain_forward(tiny):
    from docrerank.models import qwen_vl
    from docrerank.models.hub import load_tokenizer
    from docrerank.models.reranker import Reranker
    from docrerank.testing.examples import render_pages
    from transformers import AutoModelForImageTextToText

    pages = [img for _, img, _ in render_pages(tiny["corpus"] / "pdfs" / sorted(
        p.name for p in (tiny["corpus"] / "pdfs").glob("*.pdf"))[0], 20)][:2]
    queries = ["What was the total revenue in 2021?", "How many employees were there?", "Who is the chair?"]
    pairs = [(q, p) for q in queries for p in pages]
    rr = Reranker.load(tiny["model"], device="cpu", max_pixels=MAX_PIXELS)
    assert rr.backbone == "vlm" and rr.model.fmt.name == QWEN3_RERANKER and not rr.prefix_reuse
    got = rr.score([q for q, _ in pairs], [p for _, p in pairs])

    model = AutoModelForImageTextToText.from_pretrained(tiny["model"], local_files_only=True).eval()
    tok = load_tokenizer(tiny["model"])
    proc = qwen_vl.load_image_processor(tiny["model"], None, MAX_PIXELS)
    yes, no = (json.loads((tiny["root"] / "Qwen3-VL-Reranker-tiny" / "1_LogitScore" / "config.json").read_text())[k]
               for k in ("true_token_id", "false_token_id"))
    want = []
    for q, p in pairs:
        pv, grid = qwen_vl.page_pixels(proc, p)
        ids = qwen_vl.expand_image_tokens(tok(PromptFormat(QWEN3_RERANKER).text(q), add_special_tokens=False)
                                          ["input_ids"], model.config.image_token_id, [int(grid.prod()) // 4])
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pv,
                           image_grid_thw=grid, mm_token_type_ids=(input_ids == model.config.image_token_id).int()
                           ).logits[0, -1].float()
        want.append(float(logits[yes] - logits[no]))
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4), (got, want)
    assert len({round(float(s), 4) for s in got}) == len(pairs)  # the pairs are told apart


def test_evaluate_runs_it_as_a_zero_shot_baseline(tiny, tmp_path):
    from docrerank.testing.examples import make_beir

    from jobs.evaluate import main

    beir = make_beir(tmp_path / "beir", tiny["corpus"], companies=[0], years=[2021], dpi=20)
    out = tmp_path / "eval"
    assert main(["output=" + str(out), f'datasets=[{{"path": "{beir}"}}]', "first_stage.top_k=3",
                 f'rerankers=[{{"path": "{tiny["model"]}", "name": "qwen3-zero-shot"}}]', "n_resamples=100"]) == 0
    ds = json.loads((out / "metrics.json").read_text())["datasets"]["beir"]
    system = ds["systems"]["bm25+qwen3-zero-shot"]
    assert system["rerank"]["backbone"] == "vlm" and system["rerank"]["pairs"] == 3 * ds["num_queries"]
    assert 0 <= system["metrics"]["ndcg@5"] <= 1


def test_lora_step_export_and_reload_give_the_trained_scores(tiny):
    from docrerank.models.reranker import Reranker
    from docrerank.data.collate import collate_groups
    from docrerank.train.config import TrainConfig
    from docrerank.data.examples import read_groups
    from docrerank.train.local import train_local

    out = tiny["root"] / "out"
    cfg = TrainConfig.model_validate({
        "output": str(out), "data": {"sources": [{"path": tiny["examples"]}], "groups_per_device": 2,
                                     "chunk_groups": 4},
        "model": {"path": tiny["model"], "max_pixels": MAX_PIXELS, "max_seq_len": 256,
                  "gradient_checkpointing": False},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "max_steps": 2}, "deepspeed": {"enabled": False},
        "scaling": {"device": "cpu", "use_ray": False}})
    res = train_local(cfg, device="cpu")
    assert res.steps == 2 and res.scorer.fmt.name == QWEN3_RERANKER
    merged = out / "model" / "merged"
    card = json.loads((merged / "reranker.json").read_text())
    shipped_ids = shipped(tiny["model"])["answer_ids"]
    assert card["prompt_format"] == QWEN3_RERANKER and (card["true_token_id"], card["false_token_id"]) == shipped_ids
    assert card["instruction"] == QWEN3_INSTRUCTION and card["true_token"] == "yes"
    assert shipped(merged)["answer_ids"] == shipped_ids  # the base's sentence-transformers files came along
    readme = (merged / "README.md").read_text()
    assert "<Instruct>" in readme and f"logits[{shipped_ids[0]}] - logits[{shipped_ids[1]}]" in readme

    groups = read_groups(tiny["examples"])[:2]
    batch = collate_groups(groups)
    trained = res.scorer.eval()
    with torch.no_grad():
        want = trained(**trained.encode(batch))
    pages = [batch.images[i] for i in batch.page_of]
    got = torch.tensor(Reranker.load(str(out), device="cpu").score(batch.queries, pages))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    base_rr = Reranker.load(tiny["model"], device="cpu", max_pixels=MAX_PIXELS)
    base = torch.tensor(base_rr.score(batch.queries, pages))
    assert not torch.allclose(base, want, atol=1e-3)  # the step changed the scores
