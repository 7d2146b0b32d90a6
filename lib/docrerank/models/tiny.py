"""Tiny random-weight models of the real architectures, saved like real checkpoints, for CPU tests and CPU runs.

``make_tiny_qwen2_vl(path)`` writes a Qwen2-VL model (config, safetensors weights, tokenizer with the Qwen2
special tokens and the Qwen2-VL chat template, ``preprocessor_config.json``), so code under test loads it by
path exactly as it would load ``Qwen/Qwen2-VL-2B-Instruct``. ``make_tiny_qwen3_vl_reranker(path)`` writes a Qwen3-VL
model laid out as a Qwen3-VL-Reranker checkpoint ("yes"/"no" single tokens; optionally the sentence-transformers
files with a LogitScore module and a reranker chat template). ``make_tiny_causal_lm(path)`` does the same for a
Qwen2 or Llama causal LM. Nothing is downloaded; torch/transformers/tokenizers are imported inside the functions.

``tiny:ARCH`` model names (``tiny:qwen2_vl``, ``tiny:qwen2_5_vl``, ``tiny:qwen3_vl``, ``tiny:qwen2``,
``tiny:llama``; optionally ``tiny:ARCH@SEED``) stand for such a checkpoint wherever an engine config takes a model:
``tiny_checkpoint`` writes it once (hidden size 128, so attention heads of 32 as vLLM's CPU attention needs) into
``$DOCRERANK_TINY_MODELS`` (default ``~/.cache/docrerank/tiny_models``) and returns its directory. They let a whole
build run its real engines (vLLM's CPU build included) on random weights: the plumbing, never the quality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_PREFIX = "tiny:"
TINY_HIDDEN = 128
TINY_VERSION = 1  # bump when the tiny checkpoints change: the cache keeps one directory per version

# Qwen2 special tokens, in the order the real tokenizer has them (the ids differ: the tiny vocabulary is small).
QWEN2_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template shipped with Qwen2-VL-*-Instruct (also accepts plain string content, as for Qwen2 text).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the tokenizer must hold as single tokens (answer words of judge prompts) and common prompt text.
ANSWER_WORDS = ["Yes", "No", "True", "False"]
_CORPUS_TEXT = """
You are a helpful assistant. Can this page answer the question? Answer Yes or No. Answer with one word.
Assert the relevance of the previous image document to the following query, answer True or False.
The query is: What is the total revenue in 2021? Which platform is most used by women to access content?
How many employees did the company have in 2019? What was the net income of the segment last year?
Write queries a user might ask about this page. Return JSON with a list of queries. Rewrite the query so
that it asks for different information on the same topic. Rephrase the question with the same meaning.
{"queries": ["what is the revenue", "which year"], "query": "what", "answer": "yes", "score": 1}
The figure shows the sales of cloud software and manufacturing by quarter, price, percentage, dividends,
stocks, options, acquisitions, income tax, Apple, IBM, Coca-Cola, table, chart, report, slide, document.
0 1 2 3 4 5 6 7 8 9 10 2018 2019 2020 2021 2022 2023 2024 % $ . , : ; ? ! ( ) [ ] { } " ' - _ / \\ + = * #
"""


def make_tiny_tokenizer(path: str | Path | None = None, vocab_size: int = 600, answer_words: tuple = ()):
    """Build a byte-level BPE tokenizer with the Qwen2 special tokens and the Qwen2-VL chat template.

    Trained deterministically on a small built-in corpus; "Yes", "No", "True" and "False" are single tokens, and so
    are ``answer_words`` (e.g. ``("yes", "no")``: a different corpus, so different ids for everything).
    Returns a ``PreTrainedTokenizerFast``; saves it to ``path`` when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    # Answer words repeated at line starts (as after "assistant\n") so BPE merges them into single tokens.
    words = ANSWER_WORDS + [w for w in answer_words if w not in ANSWER_WORDS]
    lines = _CORPUS_TEXT.strip().splitlines() + [w for w in words for _ in range(50)]
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_special_tokens(QWEN2_SPECIAL_TOKENS)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        model_max_length=32768,
    )
    hf_tok.padding_side = "left"
    for word in words:
        ids = hf_tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1, f"tiny tokenizer must hold {word!r} as one token, got {ids}"
    if path is not None:
        hf_tok.save_pretrained(str(path))
    return hf_tok


def _special_ids(tok) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in QWEN2_SPECIAL_TOKENS}


VL_ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CAUSAL_ARCHS = ("qwen2", "llama")


def make_tiny_qwen2_vl(
    path: str | Path,
    *,
    arch: str = "qwen2_vl",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_embed_dim: int = 32,
    vision_depth: int = 2,
    vision_heads: int = 2,
    initializer_range: float = 0.1,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    seed: int = 0,
    intermediate_size: int | None = None,
    vision_mlp_ratio: int = 2,
    vocab_size: int | None = None,
    dtype: str | None = None,
    init_device: str = "cpu",
    answer_words: tuple = (),
) -> Path:
    """Write a random-weight Qwen2-VL-family checkpoint with its tokenizer to ``path``; returns ``path``.

    ``arch``: "qwen2_vl" (Qwen2-VL: patch 14, M-RoPE), "qwen2_5_vl" (window attention in the vision tower),
    or "qwen3_vl" (patch 16, interleaved M-RoPE, deepstack). Tiny widths, real structure.
    ``initializer_range`` is larger than the real 0.02 so that outputs depend visibly on the input.
    ``intermediate_size``, ``vision_mlp_ratio``, ``vocab_size`` (>= the tokenizer's; padded rows never occur),
    ``dtype`` and ``init_device`` (e.g. "cuda" to initialise a large model fast) build full-size shapes for
    benchmarks, e.g. Qwen2-VL-2B's: hidden 1536, 28 layers, 12 heads, 2 kv heads, intermediate 8960, vision depth
    32, vision embed 1280, 16 vision heads, mlp ratio 4, vocab 151936.
    """
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    if arch not in VL_ARCHS:
        raise ValueError(f"arch: got {arch!r}, expected one of {VL_ARCHS}")
    path = Path(path)
    tok = make_tiny_tokenizer(path, answer_words=answer_words)
    ids = _special_ids(tok)
    head_dim = hidden_size // num_heads
    if head_dim % 8 != 0:
        raise ValueError(f"hidden_size/num_heads must be a multiple of 8 for M-RoPE, got {head_dim}")
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text: dict[str, Any] = dict(
        vocab_size=max(len(tok), vocab_size or 0),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 1000000.0},
        initializer_range=initializer_range,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision: dict[str, Any] = dict(depth=vision_depth, hidden_size=hidden_size, num_heads=vision_heads, spatial_merge_size=2,
                  temporal_patch_size=2, initializer_range=initializer_range)
    patch = 14
    if arch == "qwen2_vl":
        cls = Qwen2VLConfig
        vision.update(embed_dim=vision_embed_dim, mlp_ratio=vision_mlp_ratio, patch_size=patch)
    elif arch == "qwen2_5_vl":
        cls = Qwen2_5_VLConfig
        vision.update(hidden_size=vision_embed_dim, out_hidden_size=hidden_size, intermediate_size=2 * vision_embed_dim,
                      patch_size=patch, window_size=56, fullatt_block_indexes=[vision_depth - 1])
    else:
        cls, patch = Qwen3VLConfig, 16
        text.update(head_dim=head_dim)
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(hidden_size=vision_embed_dim, out_hidden_size=hidden_size, intermediate_size=2 * vision_embed_dim,
                      patch_size=patch, num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    with torch.device(init_device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=getattr(torch, dtype) if dtype else None).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(str(path))
    _write_json(
        path / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "min_pixels": min_pixels,
            "max_pixels": max_pixels,
            "patch_size": patch,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
        },
    )
    return path


# A reranker chat template in the layout the Qwen3-VL-Reranker serving examples use: the pair's roles ("query",
# "document"), the instruction as the system message with a default; written here, not copied.
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<Instruct>: "
    "{{{{ messages | selectattr('role', 'eq', 'system') | map(attribute='content') | first "
    "| default('{instruction}') }}}}<Query>:"
    "{{{{ messages | selectattr('role', 'eq', 'query') | map(attribute='content') | first }}}}\n<Document>:"
    "{{{{ messages | selectattr('role', 'eq', 'document') | map(attribute='content') | first }}}}"
    "<|im_end|>\n<|im_start|>assistant\n"
)


def make_tiny_qwen3_vl_reranker(path: str | Path, *, sentence_transformers: bool = True,
                                system: str | None = None, instruction: str | None = None, seed: int = 0,
                                **kwargs: Any) -> Path:
    """Write a random-weight Qwen3-VL checkpoint in the Qwen3-VL-Reranker layout to ``path``; returns ``path``.

    The tokenizer holds "yes" and "no" as single tokens. With ``sentence_transformers`` it also ships what a
    sentence-transformers CrossEncoder checkpoint of the reranker carries: ``modules.json`` (a Transformer and a
    ``LogitScore`` module), ``1_LogitScore/config.json`` (the token ids of "yes" and "no"),
    ``config_sentence_transformers.json`` and a reranker chat template (``chat_template.jinja``) with ``system``
    and the default ``instruction`` (the official ones when None). ``kwargs``: ``make_tiny_qwen2_vl``'s.
    """
    from docrerank.models.prompt_format import QWEN3_INSTRUCTION, QWEN3_SYSTEM

    path = make_tiny_qwen2_vl(path, arch="qwen3_vl", seed=seed, answer_words=("yes", "no"), **kwargs)
    if not sentence_transformers:
        return path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    yes, no = (tok.convert_tokens_to_ids(w) for w in ("yes", "no"))
    _write_json(path / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LogitScore",
         "type": "sentence_transformers.cross_encoder.modules.LogitScore"},
    ])
    (path / "1_LogitScore").mkdir(exist_ok=True)
    _write_json(path / "1_LogitScore" / "config.json", {"true_token_id": yes, "false_token_id": no,
                                                        "module_input_name": "causal_logits"})
    _write_json(path / "config_sentence_transformers.json", {"model_type": "CrossEncoder",
                                                             "activation_fn": "torch.nn.modules.activation.Sigmoid"})
    text = QWEN3_RERANKER_TEMPLATE.format(system=system or QWEN3_SYSTEM, instruction=instruction or QWEN3_INSTRUCTION)
    (path / "chat_template.jinja").write_text(text)
    return path


def make_tiny_causal_lm(
    path: str | Path,
    *,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a random-weight causal LM checkpoint (``arch`` "qwen2" or "llama") with the tiny tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    classes: dict[str, Any] = dict(zip(CAUSAL_ARCHS, (Qwen2Config, LlamaConfig)))
    if arch not in classes:
        raise ValueError(f"arch: got {arch!r}, expected one of {sorted(classes)}")
    path = Path(path)
    tok = make_tiny_tokenizer(path)
    ids = _special_ids(tok)
    config = classes[arch](
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        initializer_range=initializer_range,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(str(path))
    return path


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def is_tiny(name: str) -> bool:
    """Whether a model name is a ``tiny:ARCH[@SEED]`` checkpoint."""
    return isinstance(name, str) and name.startswith(TINY_PREFIX)


def parse_tiny(name: str) -> tuple[str, int]:
    """``tiny:ARCH[@SEED]`` -> (arch, seed); ValueError naming the architectures on anything else."""
    arch, _, seed = name[len(TINY_PREFIX):].partition("@")
    archs = VL_ARCHS + CAUSAL_ARCHS
    if arch not in archs or (seed and not seed.isdigit()):
        raise ValueError(f"model {name!r}: expected tiny:ARCH or tiny:ARCH@SEED with ARCH one of {', '.join(archs)}")
    return arch, int(seed or 0)


def tiny_home() -> Path:
    """Where ``tiny:`` checkpoints are kept: ``$DOCRERANK_TINY_MODELS`` or ``~/.cache/docrerank/tiny_models``."""
    import os

    return Path(os.environ.get("DOCRERANK_TINY_MODELS") or Path.home() / ".cache" / "docrerank" / "tiny_models")


def tiny_dir(name: str) -> Path:
    """The directory ``tiny_checkpoint(name)`` writes (whether or not it exists yet)."""
    arch, seed = parse_tiny(name)
    return tiny_home() / f"{arch}-h{TINY_HIDDEN}-s{seed}-v{TINY_VERSION}"


def tiny_checkpoint(name: str, key: str = "model") -> Path:
    """The local directory of ``tiny:ARCH[@SEED]`` (ValueError naming ``key`` on a bad name), written on first use (atomically: written beside and renamed,
    so processes that ask at once all get a complete checkpoint)."""
    import shutil
    import tempfile

    try:
        arch, seed = parse_tiny(name)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None
    final = tiny_dir(name)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        if arch in VL_ARCHS:
            make_tiny_qwen2_vl(tmp, arch=arch, hidden_size=TINY_HIDDEN, seed=seed)
        else:
            make_tiny_causal_lm(tmp, arch=arch, hidden_size=TINY_HIDDEN, seed=seed)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: keep its copy
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
