"""The model card (``README.md`` beside the merged model): a Hugging Face card with YAML front matter.

It says what the model is and how it scores, how to use it (the ``Reranker``; plain transformers; for the text
backbone also ``sentence_transformers.CrossEncoder``), and how it was trained: base model, LoRA settings, loss and
optimizer, the realised data mix (``mix.json``), the final validation metrics and, when given, an evaluation table
(``jobs.push_to_hub`` renders one from an evaluation job's ``metrics.json``). The license is left for the user.
Pure text: nothing heavy is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from docrerank.models.hub import DEFAULT_TEXT, DEFAULT_VLM
from docrerank.train.config import TrainConfig

LICENSE_LINE = ("# license: set the license of the base model and of the training data before publishing, or pass "
                "license= to jobs.push_to_hub\n")


def hub_id(path: Optional[str]) -> Optional[str]:
    """``path`` when it reads as a hub id (``owner/name``, not a local path, URI or ``pkg:``), else None."""
    if not path or path.startswith(("pkg:", "/", ".", "~")) or "://" in path or path.count("/") != 1:
        return None
    return None if Path(path).exists() else path


def front_matter(cfg: TrainConfig, license: Optional[str] = None) -> str:
    """The card's YAML block: base model (a hub id only), library, pipeline tag, tags; license or a comment."""
    import yaml

    m = cfg.model
    base = hub_id(m.path or (DEFAULT_VLM if m.backbone == "vlm" else None))
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    if license:
        meta["license"] = license
    if m.backbone == "text" and m.text_scoring == "biencoder":
        meta.update(library_name="sentence-transformers", pipeline_tag="sentence-similarity")
        tags = ["docrerank", "reranker", "bi-encoder", "sentence-transformers"]
    elif m.backbone == "text":
        meta.update(library_name="sentence-transformers", pipeline_tag="text-ranking")
        tags = ["docrerank", "reranker", "cross-encoder"]
    else:
        meta.update(library_name="transformers", pipeline_tag="visual-document-retrieval")
        tags = ["docrerank", "reranker", "multimodal-reranker", "document-pages"]
    meta["tags"] = tags + (["lora"] if cfg.lora.enabled else [])
    return "---\n" + ("" if license else LICENSE_LINE) + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _scoring(card: dict) -> str:
    if card.get("text_scoring") == "biencoder":
        return ("A bi-encoder over query and page text layer: each is embedded apart (token embeddings mean-pooled, "
                "L2-normalised) and the relevance score is the cosine of the two embeddings; trained "
                "contrastively from the zero-shot encoder (step 0 scores exactly as it does).")
    if card["backbone"] == "text":
        return ("A cross-encoder over (query, page text layer) with one output: the relevance score "
                "logit(True) - logit(False) of the 2-label head it was trained with (folded into one label at export).")
    if card.get("prompt_format") == "qwen3_reranker":
        return ("A vision-language reranker in the Qwen3-VL-Reranker format: system prompt, `<Instruct>: "
                "{instruction}<Query>:{query}` then `<Document>:` and the page image; score = logit(\"" +
                card["true_token"] + "\") - logit(\"" + card["false_token"] + "\") at the last position "
                "(sigmoid(score) is the model's probability of relevance).")
    return ("A vision-language reranker in the MonoQwen2-VL format: the page image, then the prompt with the query; "
            f"score = logit(\"{card['true_token']}\") - logit(\"{card['false_token']}\") at the last position.")


def usage(card: dict, where: str) -> str:
    """Markdown usage snippets for the model at ``where`` (a local directory or hub id)."""
    lines = ["## Usage", "", "With docrerank (any page: image bytes, PIL image, page row or text):", "", "```python",
             "from docrerank.models.reranker import Reranker", "",
             f'rr = Reranker.load("{where}")',
             'scores = rr.score("What was the 2021 revenue?", pages)  # float32, higher = more relevant',
             "```", ""]
    if card.get("text_scoring") == "biencoder":
        lines += ["With sentence-transformers (the same cosine as the Reranker up to float rounding):", "",
                  "```python", "from sentence_transformers import SentenceTransformer", "",
                  f'model = SentenceTransformer("{where}")  # max_seq_length {card["max_seq_len"]}',
                  'q = model.encode(["What was the 2021 revenue?"])',
                  'p = model.encode(["Revenue in 2021 was $4.2 billion."])',
                  "scores = model.similarity(q, p)  # cosine", "```", ""]
        return "\n".join(lines)
    if card["backbone"] == "text":
        lines += ["With sentence-transformers (raw scores, the same numbers as the Reranker up to float rounding):",
                  "", "```python", "from sentence_transformers import CrossEncoder", "",
                  f'model = CrossEncoder("{where}", max_length={card["max_seq_len"]})',
                  'scores = model.predict([("What was the 2021 revenue?", "Revenue in 2021 was $4.2 billion.")])',
                  "```", "", "With plain transformers:", "", "```python", "import torch",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                  f'tok = AutoTokenizer.from_pretrained("{where}")',
                  f'model = AutoModelForSequenceClassification.from_pretrained("{where}").eval()',
                  'enc = tok(["What was the 2021 revenue?"], ["Revenue in 2021 was $4.2 billion."],',
                  f'          truncation="only_second", max_length={card["max_seq_len"]}, return_tensors="pt")',
                  "with torch.no_grad():", "    scores = model(**enc).logits[:, 0]", "```", ""]
        return "\n".join(lines)
    if card.get("prompt_format") == "qwen3_reranker":
        messages = ('[{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},\n'
                    '            {"role": "user", "content": [{"type": "text", "text": f"<Instruct>: {INSTRUCTION}"},\n'
                    '                                         {"type": "text", "text": f"<Query>:{query}"},\n'
                    '                                         {"type": "text", "text": "\\n<Document>:"},\n'
                    '                                         {"type": "image"}]}]')
        consts = [f"SYSTEM = {card['system_prompt']!r}", f"INSTRUCTION = {card['instruction']!r}"]
    else:
        messages = ('[{"role": "user", "content": [{"type": "image"},\n'
                    '                                         {"type": "text", "text": PROMPT.format(query=query)}]}]')
        consts = [f"PROMPT = {card['prompt']!r}"]
    lines += ["With plain transformers (the Qwen-VL processor needs torchvision):", "", "```python", "import torch",
              "from PIL import Image", "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
              *consts, f'model = AutoModelForImageTextToText.from_pretrained("{where}").eval()',
              f'processor = AutoProcessor.from_pretrained("{where}")',
              'query = "What was the 2021 revenue?"', f"messages = {messages}",
              "text = processor.apply_chat_template(messages, add_generation_prompt=True)",
              'inputs = processor(text=[text], images=[Image.open("page.png")], return_tensors="pt")',
              "with torch.no_grad():", "    logits = model(**inputs).logits[0, -1].float()",
              f"score = (logits[{card['true_token_id']}] - logits[{card['false_token_id']}]).item()"
              f"  # token ids of {card['true_token']!r} and {card['false_token']!r}", "```", ""]
    return "\n".join(lines)


def _lora_line(cfg: TrainConfig) -> str:
    lora = cfg.lora
    if not lora.enabled:
        return "- full fine-tuning (no LoRA)"
    if lora.target_modules:
        where = ", ".join(lora.target_modules)
    elif cfg.model.backbone == "vlm":
        where = "the language model's attention and MLP projections; vision tower frozen"
    else:
        where = "the encoder's query/key/value and dense layers; the head trained in full"
    return f"- LoRA: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, on {where} (merged into the weights here)"


def _mix_table(mix: dict) -> list[str]:
    kinds = sorted(mix["total"]["negatives"])
    head = "| source | groups | share | examples | " + " | ".join(f"negatives: {k}" for k in kinds) + " |"
    rows = [head, "|---|---:|---:|---:|" + "---:|" * len(kinds)]
    for name, r in list(mix["sources"].items()) + [("total", mix["total"])]:
        negs = " | ".join(str(r["negatives"].get(k, 0)) for k in kinds)
        rows.append(f"| {name} | {r['groups']} | {100 * r.get('share', 1.0):.1f}% | {r['examples']} | {negs} |")
    return rows


def model_card(cfg: TrainConfig, card: dict, metrics: Optional[dict] = None, mix: Optional[dict] = None,
               evaluation: Optional[str] = None, where: Optional[str] = None, license: Optional[str] = None) -> str:
    """The text of ``README.md``: front matter, what the model is, usage (for ``where``, default the merged model
    directory), training setup, data mix, validation ``metrics`` and the ``evaluation`` Markdown when given.
    ``card``: the ``reranker.json`` content."""
    m, o = cfg.model, cfg.optim
    where = where or str(Path(cfg.output) / "model" / "merged")
    base = m.path or (DEFAULT_VLM if m.backbone == "vlm" else DEFAULT_TEXT)
    lines = [front_matter(cfg, license), f"# {cfg.name}", "",
             "A reranker for document pages trained with docrerank (single-page hard negative query generation, "
             "DocReRank).", "", _scoring(card), "", usage(card, where), "## Training", "",
             f"- base model: `{base}` ({m.backbone} backbone)", _lora_line(cfg),
             f"- loss: {cfg.loss.kind}" + (f", positives weighted {cfg.loss.positive_weight}:1"
                                           if cfg.loss.kind == "pointwise" else ""),
             f"- optimizer: AdamW, lr {o.lr}, {o.warmup_steps} warm-up steps then linear decay, {o.epochs} epoch(s)"
             + (f", at most {o.max_steps} steps" if o.max_steps else ""),
             f"- batches: {cfg.data.groups_per_device} groups (1 positive + its negatives) per device, "
             f"{cfg.scaling.num_workers} worker(s)",
             f"- inputs: at most {m.seq_len} tokens" + (f", pages at most {m.max_pixels} pixels"
                                                        if m.backbone == "vlm" else " (page text truncated)"), ""]
    if mix:
        lines += ["### Data mix", "", f"The realised mix ({mix['total']['groups']} groups):", "",
                  *_mix_table(mix), ""]
    val = {k: v for k, v in (metrics or {}).items() if k.startswith("val_")}
    if val:
        lines += ["### Validation", "", f"On `{cfg.data.validation}`:", "", "| metric | value |", "|---|---:|",
                  *[f"| {k} | {round(v, 4) if isinstance(v, float) else v} |" for k, v in val.items()], ""]
    if evaluation:
        lines += ["## Evaluation", "", evaluation.strip(), ""]
    lines += ["## Limits", "",
              "Trained on pages and questions of the documents in its data mix; scores are comparable between "
              "pages for one query, not calibrated across queries.", ""]
    return "\n".join(lines)
