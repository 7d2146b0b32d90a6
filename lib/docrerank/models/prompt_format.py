"""Prompt formats of the VLM rerankers that score a (page image, query) pair by two answer-token logits.

- ``monoqwen`` (MonoQwen2-VL, the paper's format): user turn = the page image, then ``prompt`` with the query;
  score = logit("True") - logit("False") at the last position. Any Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint.
- ``qwen3_reranker`` (Qwen3-VL-Reranker-2B/8B): a system prompt, then one user turn
  ``<Instruct>: {instruction}<Query>:{query}\\n<Document>:`` followed by the page image; score = logit("yes") -
  logit("no") at the last position (the official code reports sigmoid(score)). The query comes before the page, so
  several queries of one page share no image prefix (no prefix reuse).

What a checkpoint ships wins over the documented defaults (``shipped``): the answer token ids of a
sentence-transformers ``LogitScore`` module (``modules.json``), and the system prompt and default instruction of a
reranker chat template (one holding ``<Instruct>``). ``detect_format`` picks ``qwen3_reranker`` for a checkpoint
that ships such a module or template, or whose path names a Qwen3-VL-Reranker; else ``monoqwen``. The qwen3 prompt
is written with the Qwen chat markup directly (the tokens the Qwen-VL chat template renders for these messages),
so it does not depend on which chat template the checkpoint carries. Pure: no heavy import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

MONOQWEN = "monoqwen"
QWEN3_RERANKER = "qwen3_reranker"
FORMATS = (MONOQWEN, QWEN3_RERANKER)
MONOQWEN_PROMPT = (
    "Assert the relevance of the previous image document to the following query, answer True or False. "
    "The query is: {query}"
)
# The official Qwen3-VL-Reranker defaults (QwenLM/Qwen3-VL-Embedding, src/models/qwen3_vl_reranker.py).
QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                'Note that the answer can only be "yes" or "no".')
QWEN3_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
ANSWER_WORDS = {MONOQWEN: ("True", "False"), QWEN3_RERANKER: ("yes", "no")}
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass(frozen=True)
class PromptFormat:
    """One resolved prompt format: its name, texts, answer words and (when the checkpoint ships them) ids."""

    name: str
    prompt: str = MONOQWEN_PROMPT
    system: str = QWEN3_SYSTEM
    instruction: str = QWEN3_INSTRUCTION
    true_token: str = ""  # default: the format's answer words (``ANSWER_WORDS``)
    false_token: str = ""
    answer_ids: Optional[tuple[int, int]] = None

    def __post_init__(self):
        if self.name not in FORMATS:
            raise ValueError(f"prompt format: expected one of {FORMATS}, got {self.name!r}")
        words = ANSWER_WORDS[self.name]
        object.__setattr__(self, "true_token", self.true_token or words[0])
        object.__setattr__(self, "false_token", self.false_token or words[1])

    @property
    def image_first(self) -> bool:
        """Whether the page image precedes the query (then a page's queries share their [image][prompt] prefix)."""
        return self.name == MONOQWEN

    def messages(self, query: str) -> list[dict]:
        """The chat messages of one example, one ``{"type": "image"}`` part for the page."""
        if self.name == MONOQWEN:
            return [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.prompt.format(query=query)}]}]
        return [{"role": "system", "content": [{"type": "text", "text": self.system}]},
                {"role": "user", "content": [{"type": "text", "text": f"<Instruct>: {self.instruction}"},
                                             {"type": "text", "text": f"<Query>:{query}"},
                                             {"type": "text", "text": "\n<Document>:"}, {"type": "image"}]}]

    def text(self, query: str) -> str:
        """qwen3_reranker: the prompt text with the generation prompt and one image placeholder."""
        return (f"<|im_start|>system\n{self.system}<|im_end|>\n<|im_start|>user\n<Instruct>: {self.instruction}"
                f"<Query>:{query}\n<Document>:{IMAGE}<|im_end|>\n<|im_start|>assistant\n")

    def prompt_ids(self, tokenizer: Any, query: str) -> list[int]:
        """Token ids of one example with a single image placeholder, generation prompt on."""
        if self.name == MONOQWEN:
            from docrerank.models.qwen_vl import prompt_ids

            return prompt_ids(tokenizer, self.messages(query))
        return list(tokenizer(self.text(query), add_special_tokens=False)["input_ids"])

    def answer_token_ids(self, tokenizer: Any) -> tuple[int, int]:
        """(true, false) token ids: the checkpoint's when shipped, else the answer words' (each one token)."""
        if self.answer_ids is not None:
            return self.answer_ids
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in (self.true_token, self.false_token)]
        if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"model.true_token/false_token: expected two different single tokens, got "
                             f"{self.true_token!r} -> {ids[0]}, {self.false_token!r} -> {ids[1]}")
        return ids[0][0], ids[1][0]


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def chat_template_text(model_dir: Path) -> str:
    """The checkpoint's chat template text (``chat_template.jinja``, ``chat_template.json``, tokenizer_config)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = _read_json(model_dir / name) or {}
        if isinstance(data.get("chat_template"), str):
            return data["chat_template"]
    return ""


def shipped(model_dir: str | Path) -> dict:
    """What a checkpoint directory ships about its reranking prompt: ``answer_ids`` (a sentence-transformers
    ``LogitScore`` module listed in ``modules.json``), ``system`` and ``instruction`` (a reranker chat template
    holding ``<Instruct>``: its literal system prompt and the instruction's ``default(...)``), ``template`` (True
    when it has such a template)."""
    model_dir = Path(model_dir)
    found: dict = {}
    for module in _read_json(model_dir / "modules.json") or []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("LogitScore"):
            conf = _read_json(model_dir / str(module.get("path", "")) / "config.json") or {}
            if isinstance(conf.get("true_token_id"), int) and isinstance(conf.get("false_token_id"), int):
                found["answer_ids"] = (conf["true_token_id"], conf["false_token_id"])
    template = chat_template_text(model_dir)
    if "<Instruct>" in template and "<Document>" in template:
        found["template"] = True
        system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, re.S)
        if system and "{" not in system.group(1):
            found["system"] = system.group(1)
        default = re.search(r"<Instruct>.*?default\(\s*(['\"])(.+?)\1\s*\)", template, re.S)
        if default:
            found["instruction"] = default.group(2)
    return found


def detect_format(model_dir: str | Path, ships: Optional[dict] = None) -> str:
    """``qwen3_reranker`` for a checkpoint that ships a LogitScore module or a reranker chat template, or whose path
    names a Qwen3-VL-Reranker; else ``monoqwen``."""
    ships = shipped(model_dir) if ships is None else ships
    named = "qwen3-vl-reranker" in str(model_dir).lower().replace("_", "-")
    return QWEN3_RERANKER if named or ships.get("answer_ids") or ships.get("template") else MONOQWEN


def resolve_format(model_dir: str | Path, prompt_format: str = "auto", prompt: str = MONOQWEN_PROMPT,
                   instruction: Optional[str] = None, system: Optional[str] = None,
                   true_token: Optional[str] = None, false_token: Optional[str] = None) -> PromptFormat:
    """The prompt format of the checkpoint at ``model_dir``: the given values, else what it ships, else the format's
    defaults. ``prompt_format`` "auto" detects it (``detect_format``); answer words other than the format's own
    (yes/no) replace the shipped ids."""
    if prompt_format not in ("auto", *FORMATS):
        raise ValueError(f"model.prompt_format: expected 'auto' or one of {FORMATS}, got {prompt_format!r}")
    ships = shipped(model_dir)
    name = detect_format(model_dir, ships) if prompt_format == "auto" else prompt_format
    words = ANSWER_WORDS[name]
    chosen = (true_token or words[0], false_token or words[1])
    return PromptFormat(name=name, prompt=prompt, system=system or ships.get("system") or QWEN3_SYSTEM,
                        instruction=instruction or ships.get("instruction") or QWEN3_INSTRUCTION,
                        true_token=chosen[0], false_token=chosen[1],
                        answer_ids=ships.get("answer_ids") if name == QWEN3_RERANKER and chosen == words else None)
