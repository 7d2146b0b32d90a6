"""Scoring models: ``vlm`` (Qwen2-VL-family, MonoQwen2-VL input, logit(True) - logit(False), or the
Qwen3-VL-Reranker format, logit(yes) - logit(no): ``models.prompt_format``) and ``text`` (a cross-encoder over
query and page text). Each scorer turns a ``Batch`` into model inputs on the CPU
(``encode``) and inputs into float32 scores (``forward``), so the same module serves DeepSpeed and plain torch.

VLM inputs go through ``models.qwen_vl``, the input path the hf engine and the Reranker use too (chat template,
``<|image_pad|>`` expanded to the image's token count, the PIL image processor: no Qwen2VLProcessor, no
torchvision). A page shared by several examples of a batch goes through the frozen vision tower once (no
gradient), its features are reused for each query. For inference (the Reranker) the vlm scorer also takes queries
and per-page pixels directly (``score_pairs``) and scores several queries of one page on its cached prefix
(``score_shared_page``).

Importing this module does not import torch. DeepSpeed needs ``nn.Module`` scorers: ``VLMScorer`` and
``TextScorer`` are the torch-free ``VLMScoring`` / ``TextScoring`` mixed with ``nn.Module``, created (importing
torch) on first use by ``scorer_class``; the module attributes ``VLMScorer`` / ``TextScorer`` resolve through it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Optional, Sequence

from docrerank.models import qwen_vl
from docrerank.models.config import LoraConfig, ModelConfig
from docrerank.models.hub import DEFAULT_TEXT, DEFAULT_VLM, load_tokenizer, resolve_dtype, resolve_model_path
from docrerank.models.prompt_format import PromptFormat, resolve_format

if TYPE_CHECKING:
    from docrerank.data.collate import Batch

LM_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_PROJECTIONS = ["query", "key", "value", "dense"]
SCORER_CLASSES = {"vlm": "VLMScorer", "text": "TextScorer", "biencoder": "BiEncoderScorer"}


def lora_targets(backbone: str, names: Optional[list[str]]) -> Any:
    """PEFT ``target_modules``: for vlm a regex confined to the language model (the vision tower stays frozen)."""
    if backbone == "vlm":
        names = names or LM_PROJECTIONS
        return rf".*language_model.*\.({'|'.join(names)})"
    return names or TEXT_PROJECTIONS


def apply_lora(model: Any, backbone: str, lora: LoraConfig, head: bool = True) -> Any:
    """Wrap ``model`` with LoRA adapters (only they train), or, LoRA disabled, unfreeze the trained part; ``head``
    (text): the model has a ``classifier`` head, trained in full."""
    if not lora.enabled:
        for name, p in model.named_parameters():
            # vlm: the decoder layers train; embeddings, lm_head (the True/False rows) and the vision tower don't.
            p.requires_grad_(backbone == "text" or (".language_model." in f".{name}" and ".layers." in name))
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pcfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora_targets(backbone, lora.target_modules),
                          modules_to_save=["classifier"] if backbone == "text" and head else None)
    return get_peft_model(model, pcfg)


def base_of(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class VLMScoring:
    """score = h_last . (W[True] - W[False]) in float32, h_last the final hidden state at the generation prompt.

    The torch-free logic of ``VLMScorer`` (which mixes it with ``nn.Module``; build one with ``build_scorer``).
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, cfg: ModelConfig, path: str):
        super().__init__()
        self.model = model
        self.tokenizer, self.image_processor, self.cfg, self.path = tokenizer, image_processor, cfg, path
        base = base_of(model)
        qwen_vl.require_encoder_outputs(base.model)  # else images are silently ignored (transformers < 5.18)
        self.image_token_id = base.config.image_token_id
        self.merge_size = getattr(image_processor, "merge_size", 2)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.fmt = prompt_format_of(cfg, path)  # monoqwen or qwen3_reranker, with what the checkpoint ships
        self.answer_ids = self.fmt.answer_token_ids(tokenizer)
        w = base.get_output_embeddings().weight.detach()
        # A plain attribute, not a buffer: DeepSpeed's bf16 cast must not round it (scores stay float32).
        self._w_diff = (w[self.answer_ids[0]].float() - w[self.answer_ids[1]].float()).clone()

    # ------------------------------------------------------------------------------------- inputs
    def prompt_ids(self, query: str) -> list[int]:
        """Token ids of one example with a single ``<|image_pad|>`` placeholder (generation prompt on)."""
        return self.fmt.prompt_ids(self.tokenizer, query)

    def image_tokens(self, grid_thw: Any) -> int:
        """Language-model tokens of one page image of grid ``grid_thw``."""
        return qwen_vl.image_token_count(grid_thw, self.merge_size)

    def example_ids(self, query: str, n_image_tokens: int, where: str = "") -> list[int]:
        """Token ids of one example with its image placeholder expanded to ``n_image_tokens``; ValueError when
        that exceeds ``max_seq_len``."""
        ids = qwen_vl.expand_image_tokens(self.prompt_ids(query), self.image_token_id, [n_image_tokens])
        if len(ids) > self.cfg.seq_len:
            raise ValueError(
                f"{where}{len(ids)} tokens after expanding {n_image_tokens} image tokens > "
                f"model.max_seq_len={self.cfg.seq_len} (query {query[:60]!r}); lower model.max_pixels "
                f"(now {self.cfg.max_pixels}) or raise model.max_seq_len")
        return ids

    def page_pixels(self, image: Any, page_id: str = "") -> tuple[Any, Any]:
        """``(pixel_values, grid_thw)`` of one page image (encoded bytes or a PIL image); ValueError naming the page
        when it has no image or the image does not decode."""
        if image is None:
            raise ValueError(f"page {page_id}: no image (the vlm backbone needs page images)")
        return qwen_vl.page_pixels(self.image_processor, image, f"page {page_id}")

    def encode(self, batch: Batch, pixels: Optional[list] = None) -> dict[str, Any]:
        """Model inputs of a batch, each distinct page's pixels once; ValueError when an example exceeds
        ``max_seq_len``. With ``model.shared_prefix`` (and an image-first format) one packed row per page
        (``encode_shared``), else one left-padded row per example (``encode_pairs``). ``pixels``: the pages'
        ``(pixel_values, grid_thw)`` when already computed."""
        pages = pixels or [self.page_pixels(img, pid) for img, pid in zip(batch.images, batch.page_ids)]
        if getattr(self.cfg, "shared_prefix", False) and self.fmt.image_first:
            return self.encode_shared(batch.queries, batch.page_of, pages, batch.page_ids)
        return self.encode_pairs(batch.queries, batch.page_of, pages, batch.page_ids)

    def encode_shared(self, queries: Sequence[str], page_of: Sequence[int], pages: Sequence[tuple[Any, Any]],
                      page_ids: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """CPU inputs of ``forward`` with each page's shared prefix once: row r is page r's examples packed as
        ``[prefix][suffix 1][suffix 2]...`` (right-padded), the prefix being the longest token prefix they share
        (system prompt, image tokens, prompt text; at least one token of each example left as its suffix).
        ``segment_ids`` tells the block mask who sees whom (0: prefix, j: the j-th suffix, -1: padding);
        ``position_ids`` are the model's own M-RoPE positions of the prefix, each suffix continuing after it as
        in its full sequence; ``score_row``/``score_col`` locate each example's last token. ValueError when a
        page's image tokens are not all in its shared prefix (the query precedes the page) or a page has no
        example."""
        import torch

        from docrerank.models.prefix import common_prefix_len

        names = list(page_ids) if page_ids is not None else [str(p) for p in range(len(pages))]
        seqs = [self.example_ids(q, self.image_tokens(pages[p][1]), f"example {i} (page {names[p]}): ")
                for i, (q, p) in enumerate(zip(queries, page_of))]
        members: list[list[int]] = [[] for _ in pages]
        for i, p in enumerate(page_of):
            members[p].append(i)
        model = base_of(self.model)
        rows_ids, rows_seg, rows_pos = [], [], []
        score_row, score_col = [0] * len(seqs), [0] * len(seqs)
        for r, idx in enumerate(members):
            if not idx:
                raise ValueError(f"page {names[r]}: no example in the batch")
            ms = [seqs[i] for i in idx]
            plen = min(common_prefix_len(ms), min(len(s) for s in ms) - 1)
            first = ms[0]
            if self.image_token_id in first[plen:]:
                raise ValueError(f"page {names[r]}: image tokens after the shared prefix ({plen} tokens): the "
                                 f"prompt format must put the page before the query")
            prefix = first[:plen]
            pos = [qwen_vl.sequence_positions(model, prefix, self.image_token_id, pages[r][1])]
            start = int(pos[0].max()) + 1 if plen else 0
            ids, seg = list(prefix), [0] * plen
            for j, i in enumerate(idx):
                suffix = seqs[i][plen:]
                ids.extend(suffix)
                seg.extend([j + 1] * len(suffix))
                pos.append(torch.arange(start, start + len(suffix)).expand(3, -1))
                score_row[i], score_col[i] = r, len(ids) - 1
            rows_ids.append(ids)
            rows_seg.append(seg)
            rows_pos.append(torch.cat(pos, dim=1))
        width = max(len(x) for x in rows_ids)
        n = len(rows_ids)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        segment_ids = torch.full((n, width), -1, dtype=torch.long)
        position_ids = torch.zeros((3, n, width), dtype=torch.long)
        for r, (ids, seg, pos) in enumerate(zip(rows_ids, rows_seg, rows_pos)):
            input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            segment_ids[r, :len(seg)] = torch.tensor(seg, dtype=torch.long)
            position_ids[:, r, :pos.shape[1]] = pos
        return {"input_ids": input_ids, "attention_mask": (segment_ids >= 0).long(),
                "pixel_values": torch.cat([pv for pv, _ in pages]), "page_grid": torch.cat([g for _, g in pages]),
                "page_of": torch.arange(n), "mm_token_type_ids": (input_ids == self.image_token_id).int(),
                "segment_ids": segment_ids, "position_ids": position_ids,
                "score_row": torch.tensor(score_row, dtype=torch.long),
                "score_col": torch.tensor(score_col, dtype=torch.long)}

    def encode_pairs(self, queries: Sequence[str], page_of: Sequence[int], pages: Sequence[tuple[Any, Any]],
                     page_ids: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """CPU inputs of ``forward`` for pairs: pair i asks ``queries[i]`` of page ``page_of[i]``; ``pages``: each
        distinct page's ``(pixel_values, grid_thw)`` once (``page_ids`` name them in errors)."""
        import torch

        names = list(page_ids) if page_ids is not None else [str(p) for p in range(len(pages))]
        seqs = [self.example_ids(q, self.image_tokens(pages[p][1]), f"example {i} (page {names[p]}): ")
                for i, (q, p) in enumerate(zip(queries, page_of))]
        input_ids, mask = qwen_vl.left_pad(seqs, self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.cat([pv for pv, _ in pages]),
                "page_grid": torch.cat([g for _, g in pages]), "page_of": torch.tensor(list(page_of), dtype=torch.long),
                "mm_token_type_ids": (input_ids == self.image_token_id).int()}

    # -------------------------------------------------------------------------------------- score
    def forward(self, input_ids, attention_mask, pixel_values, page_grid, page_of, mm_token_type_ids,
                segment_ids=None, position_ids=None, score_row=None, score_col=None):
        """float32 scores of ``encode``'s inputs, one per example (``encode_pairs``'s rows or ``encode_shared``'s
        packed pages)."""
        import torch

        inner = base_of(self.model).model
        with torch.no_grad():  # frozen vision tower: no activations kept, one pass per distinct page
            feats = inner.get_image_features(pixel_values, page_grid, return_dict=True)
        index = page_of.tolist()
        feats.pooler_output = [feats.pooler_output[i] for i in index]
        if getattr(feats, "deepstack_features", None) is not None:  # Qwen3-VL
            feats.deepstack_features = [[layer[i] for i in index] for layer in feats.deepstack_features]
        if segment_ids is not None:
            mask = block_attention_mask(segment_ids, inner.get_input_embeddings().weight.dtype)
            out = inner(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                        image_grid_thw=page_grid[page_of], mm_token_type_ids=mm_token_type_ids,
                        mm_encoder_outputs={"image": feats}, use_cache=False)
            h = out.last_hidden_state[score_row, score_col].float()
        else:
            out = inner(input_ids=input_ids, attention_mask=attention_mask, image_grid_thw=page_grid[page_of],
                        mm_token_type_ids=mm_token_type_ids, mm_encoder_outputs={"image": feats}, use_cache=False)
            h = out.last_hidden_state[:, -1].float()
        if self._w_diff.device != h.device:
            self._w_diff = self._w_diff.to(h.device)
        return h @ self._w_diff

    def score_pairs(self, queries: Sequence[str], page_of: Sequence[int], pages: Sequence[tuple[Any, Any]],
                    device: Any) -> Any:
        """float32 scores of (query, page) pairs as ``encode_pairs`` takes them, run on ``device`` (inference: the
        caller sets the grad mode)."""
        inputs = self.encode_pairs(queries, page_of, pages)
        return self(**{k: v.to(device, non_blocking=True) for k, v in inputs.items()})  # type: ignore[operator]  # an nn.Module once mixed (scorer_class)

    def score_shared_page(self, queries: Sequence[str], pixels: tuple[Any, Any], batch_size: int, device: Any) -> Any:
        """float32 scores of several queries on one page (``pixels``: its ``(pixel_values, grid_thw)``): the
        [image][prompt] prefix encoded once (KV cache), each query's tokens run against it, ``batch_size`` at a
        time; equal to ``score_pairs`` up to rounding."""
        from docrerank.models import prefix

        model = base_of(self.model)
        n_img = self.image_tokens(pixels[1])
        seqs = [self.example_ids(q, n_img) for q in queries]
        plen = min(prefix.common_prefix_len(seqs), min(len(s) for s in seqs) - 1)
        positions = [qwen_vl.sequence_positions(model, s, self.image_token_id, pixels[1]) for s in seqs]
        logits = prefix.shared_prefix_logits(model, seqs, plen, positions, self.answer_ids, self.pad_id, batch_size,
                                             device, self.image_token_id, [pixels], model.dtype)
        return (logits[:, 0] - logits[:, 1]).float()


    # -------------------------------------------------------------------------------------- FLOPs
    def model_flops(self, inputs: dict) -> dict[str, float]:
        """Model FLOPs of one training micro-batch of ``encode``'s inputs (``train/flops.py``): the frozen vision
        tower's forward once per page, the language model's forward and backward over the tokens as laid out
        (each shared prefix once, or every pair in full); gradient-checkpointing recomputation not counted."""
        from docrerank.models import flops

        if getattr(self, "_flop_shapes", None) is None:
            self._flop_shapes = flops.vlm_shapes(base_of(self.model))
        return flops.vlm_step_flops(self._flop_shapes, inputs, self.merge_size)


class TextScoring:
    """score = logit("True") - logit("False") of a 2-label sequence classifier over (query, page text).

    The torch-free logic of ``TextScorer`` (which mixes it with ``nn.Module``; build one with ``build_scorer``).
    """

    def __init__(self, model: Any, tokenizer: Any, cfg: ModelConfig, path: str):
        super().__init__()
        self.model, self.tokenizer, self.cfg, self.path = model, tokenizer, cfg, path

    def encode(self, batch: Batch) -> dict[str, Any]:
        """Tokenized (query, page text) pairs: the page truncated to ``max_seq_len``, or, ``model.max_windows`` > 1,
        up to that many overlapping windows of it per pair (``models/windows.py``)."""
        from docrerank.models.windows import encode_pairs

        texts = [batch.texts[p] for p in batch.page_of]
        return encode_pairs(self.tokenizer, batch.queries, texts, self.cfg.seq_len, self.cfg.max_windows,
                            self.cfg.window_overlap)

    def forward(self, window_of=None, **inputs):
        """float32 scores of ``encode``'s inputs, one per example (its windows pooled by ``model.window_pool``)."""
        logits = self.model(**inputs).logits.float()
        scores = logits[:, 1] - logits[:, 0]
        if window_of is None:
            return scores
        from docrerank.models.windows import pool_windows

        return pool_windows(scores, window_of, self.cfg.window_pool)


def block_attention_mask(segment_ids: Any, dtype: Any) -> Any:
    """Additive attention mask ``(rows, 1, L, L)`` of packed rows (``VLMScoring.encode_shared``): a token sees the
    tokens before it that are prefix (segment 0) or in its own segment; padding (-1) sees only itself (no empty
    softmax row); 0 where allowed, the dtype's minimum elsewhere (what sdpa and eager attention add)."""
    import torch

    length = segment_ids.shape[1]
    pos = torch.arange(length, device=segment_ids.device)
    causal = pos[None, :] <= pos[:, None]
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = causal & (q >= 0) & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


class BiEncoderScoring:
    """score = ``biencoder_scale`` x cos(query embedding, page embedding), each the encoder's token embeddings
    mean-pooled over the attention mask and L2-normalised (``models.embed.mean_pooled``): with the base weights the
    cosine is exactly the zero-shot encoder's (``models.embed.Embedder``), texts truncated to ``max_seq_len``.

    Each distinct query and page text of a batch is encoded once (a group's positive and negatives share the
    query). The torch-free logic of ``BiEncoderScorer`` (build one with ``build_scorer``).
    """

    def __init__(self, model: Any, tokenizer: Any, cfg: ModelConfig, path: str):
        super().__init__()
        self.model, self.tokenizer, self.cfg, self.path = model, tokenizer, cfg, path
        self.scale = float(cfg.biencoder_scale)

    def _tokens(self, texts: Sequence[str]) -> Any:
        return self.tokenizer([t or "" for t in texts], padding=True, truncation=True, max_length=self.cfg.seq_len,
                              return_tensors="pt")

    def encode(self, batch: Batch) -> dict[str, Any]:
        """The distinct queries (``input_ids``, ``attention_mask``) and the batch's pages (``page_input_ids``,
        ``page_attention_mask``) tokenized apart, and each example's query and page row (``query_of``,
        ``page_of``)."""
        import torch

        queries = list(dict.fromkeys(batch.queries))
        row = {q: i for i, q in enumerate(queries)}
        q, p = self._tokens(queries), self._tokens(batch.texts)
        return {"input_ids": q["input_ids"], "attention_mask": q["attention_mask"],
                "page_input_ids": p["input_ids"], "page_attention_mask": p["attention_mask"],
                "query_of": torch.tensor([row[x] for x in batch.queries], dtype=torch.long),
                "page_of": torch.tensor(list(batch.page_of), dtype=torch.long)}

    def embed(self, input_ids, attention_mask):
        """Unit-length float32 embeddings of tokenized texts."""
        from docrerank.models.embed import mean_pooled

        return mean_pooled(self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                           attention_mask)

    def forward(self, input_ids, attention_mask, page_input_ids, page_attention_mask, query_of, page_of):
        """float32 scores of ``encode``'s inputs, one per example: ``scale`` x the cosine."""
        q = self.embed(input_ids, attention_mask)
        p = self.embed(page_input_ids, page_attention_mask)
        return self.scale * (q[query_of] * p[page_of]).sum(-1)


@functools.cache
def scorer_class(backbone: str) -> type:
    """The ``nn.Module`` scorer class of a backbone: ``VLMScorer`` (vlm), ``TextScorer`` (text, cross-encoder) or
    ``BiEncoderScorer`` (biencoder: text scored by a bi-encoder), created on the first call (torch is imported
    here)."""
    from torch import nn

    logic = {"vlm": VLMScoring, "text": TextScoring, "biencoder": BiEncoderScoring}.get(backbone)
    if logic is None:
        raise ValueError(f"backbone: got {backbone!r}, expected one of {sorted(SCORER_CLASSES)}")
    name = SCORER_CLASSES[backbone]
    return type(name, (logic, nn.Module), {"__module__": __name__, "__qualname__": name, "__doc__": logic.__doc__})


def __getattr__(name: str) -> Any:
    """``VLMScorer`` / ``TextScorer`` / ``BiEncoderScorer``: the scorer module classes, created by ``scorer_class``
    on first access."""
    for backbone, cls_name in SCORER_CLASSES.items():
        if name == cls_name:
            return scorer_class(backbone)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prompt_format_of(cfg: ModelConfig, path: str) -> PromptFormat:
    """The vlm prompt format of the checkpoint at ``path`` under ``cfg`` (see ``models.prompt_format``)."""
    return resolve_format(path, cfg.prompt_format, cfg.prompt, cfg.instruction, cfg.system_prompt, cfg.true_token,
                          cfg.false_token)


def check_vlm_budget(cfg: ModelConfig, path: str) -> None:
    """Fail before training when a page at the pixel cap cannot fit ``max_seq_len`` (no weights loaded)."""
    proc = qwen_vl.load_image_processor(path, cfg.min_pixels, cfg.max_pixels)
    from docrerank.models.tokens import tokens_at

    image_tokens = tokens_at(cfg.max_pixels, getattr(proc, "patch_size", 14) * getattr(proc, "merge_size", 2))
    need = len(prompt_format_of(cfg, path).prompt_ids(load_tokenizer(path), "")) - 1 + image_tokens
    if need > cfg.seq_len:
        raise ValueError(f"model.max_seq_len={cfg.seq_len} cannot hold a page at model.max_pixels={cfg.max_pixels}: "
                         f"{image_tokens} image tokens + the prompt = {need} tokens before the query")


def build_scorer(cfg: ModelConfig, lora: LoraConfig, device: str = "cpu", seed: int = 0) -> Any:
    """Load the backbone from ``cfg.path`` as a ``VLMScorer``, ``TextScorer`` or (``text_scoring: biencoder``)
    ``BiEncoderScorer`` (an ``nn.Module``), add LoRA (or unfreeze), enable gradient checkpointing; on the CPU, in
    ``cfg.dtype`` (auto: bfloat16 for any cuda ``device``). The cross-encoder's head is initialised from ``seed``;
    the bi-encoder has none (its encoder's pooler, unused, stays frozen)."""
    import torch

    path = resolve_model_path(cfg.path or (DEFAULT_VLM if cfg.backbone == "vlm" else DEFAULT_TEXT))
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    torch.manual_seed(seed)
    if cfg.backbone == "vlm":
        from transformers import AutoModelForImageTextToText

        check_vlm_budget(cfg, path)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        tok = load_tokenizer(path)
    elif cfg.text_scoring == "biencoder":
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(path, **kwargs)  # a cross-encoder checkpoint gives its encoder
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if _one_label_classifier(path):  # a model this project exported (its head folded): train it on
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
            unfold_one_label_head(model)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=2, id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1}, **kwargs)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    biencoder = cfg.backbone == "text" and cfg.text_scoring == "biencoder"
    model = apply_lora(model, cfg.backbone, lora, head=not biencoder)
    if cfg.backbone == "vlm":
        processor = qwen_vl.load_image_processor(path, cfg.min_pixels, cfg.max_pixels)
        return scorer_class("vlm")(model, tok, processor, cfg, path)
    if biencoder:
        for name, p in model.named_parameters():
            if name.startswith("pooler.") or ".pooler." in name:  # BERT's [CLS] pooler: mean pooling skips it
                p.requires_grad_(False)
        return scorer_class("biencoder")(model, tok, cfg, path)
    return scorer_class("text")(model, tok, cfg, path)


HEAD_PATHS = ("classifier", "classifier.out_proj", "score")  # a sequence classifier's last Linear, by architecture


def _one_label_classifier(path: str) -> bool:
    """Whether ``path`` holds a sequence classifier with one label (a text model as training exports it)."""
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(path, local_files_only=True)
    heads = [a for a in (conf.architectures or []) if a.endswith("ForSequenceClassification")]
    return bool(heads) and conf.num_labels == 1


def classifier_head(model: Any, outputs: int) -> Optional[tuple[Any, str, Any]]:
    """(owner module, attribute name, Linear) of a sequence classifier's last Linear with ``outputs`` outputs, looked
    up at ``HEAD_PATHS``; None when there is none."""
    import torch

    for where in HEAD_PATHS:
        parent, _, name = where.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        head = getattr(owner, name, None)
        if isinstance(head, torch.nn.Linear) and head.out_features == outputs:
            return owner, name, head
    return None


def unfold_one_label_head(model: Any) -> None:
    """Make a 1-label sequence classifier the 2-label one this backbone trains, scoring the same: label 0's row
    is zero, label 1's the old row, so logit 1 - logit 0 is the old logit (in place). The inverse of the export's
    fold (``train/export.fold_two_label_head``)."""
    import torch

    found = classifier_head(model, 1)
    if found is None:
        raise ValueError(f"{type(model).__name__}: no 1-output Linear head at {' / '.join(HEAD_PATHS)} to unfold")
    owner, name, head = found
    two = torch.nn.Linear(head.in_features, 2, bias=head.bias is not None, dtype=head.weight.dtype,
                          device=head.weight.device)
    with torch.no_grad():
        two.weight.zero_()
        two.weight[1].copy_(head.weight[0])
        if head.bias is not None:
            two.bias.zero_()
            two.bias[1].copy_(head.bias[0])
    setattr(owner, name, two)
    model.config.num_labels = 2
    model.config.id2label, model.config.label2id = {0: "False", 1: "True"}, {"False": 0, "True": 1}
    model.num_labels = 2

