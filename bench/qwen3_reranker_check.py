"""Qwen3-VL-Reranker parity on the real weights: docrerank's scores vs the official layout through transformers.

For a machine that has the weights (a local directory or the Hugging Face cache) and torchvision (the Qwen-VL
processor needs it); a GPU makes it quick. It prints what the checkpoint ships (``models.prompt_format.shipped``) and
the resolved format, scores (query, page) pairs of the sample corpus with ``Reranker.load(model)`` and with the
official recipe (QwenLM/Qwen3-VL-Embedding ``format_mm_instruction`` messages, ``processor.apply_chat_template``,
``processor(...)``, the last hidden state times W[yes] - W[no]), and writes the agreement to
``bench/results/qwen3_reranker_parity_<device>.json``:

    HF_HUB_OFFLINE=1 PYTHONPATH=lib python bench/qwen3_reranker_check.py --model Qwen/Qwen3-VL-Reranker-2B
    PYTHONPATH=lib python bench/qwen3_reranker_check.py --tiny     # the script itself, on a tiny random model

Expected: Spearman 1.0 (same ranking) and max |difference| at bf16 rounding (~0.1 on logits of a few units) on a
GPU; the official recipe resizes pages with its own pixel bounds, so ``--max-pixels`` is passed to both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def official_scores(model_dir: str, pairs: list, max_pixels: int, device: str) -> list[float]:
    """The official recipe: messages -> processor chat template -> processor -> last hidden state @ (W_yes - W_no)."""
    import torch
    from docrerank.models.prompt_format import QWEN3_INSTRUCTION, QWEN3_SYSTEM, shipped
    from docrerank.models.qwen_vl import to_rgb
    from transformers import AutoModelForImageTextToText, AutoProcessor

    ships = shipped(model_dir)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    proc = AutoProcessor.from_pretrained(model_dir, padding_side="left", min_pixels=4 * 32 * 32, max_pixels=max_pixels)
    vocab = proc.tokenizer.get_vocab()
    w = model.get_output_embeddings().weight.float()
    diff = w[vocab["yes"]] - w[vocab["no"]]
    out = []
    for query, image in pairs:
        messages = [{"role": "system", "content": [{"type": "text", "text": ships.get("system", QWEN3_SYSTEM)}]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "<Instruct>: " + ships.get("instruction", QWEN3_INSTRUCTION)},
                        {"type": "text", "text": "<Query>:"}, {"type": "text", "text": query},
                        {"type": "text", "text": "\n<Document>:"}, {"type": "image"}]}]
        text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = proc(text=[text], images=[to_rgb(image)], return_tensors="pt").to(device)
        with torch.no_grad():
            h = model.model(**inputs).last_hidden_state[:, -1].float()
        out.append(float(h[0] @ diff))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit 0 when the rankings agree (Spearman >= 0.99), 1 otherwise, 2 without a reference."""
    import numpy as np
    from common import write_result
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.models.prompt_format import resolve_format, shipped
    from docrerank.models.reranker import Reranker
    from docrerank.testing.examples import render_pages, sample_questions
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen/Qwen3-VL-Reranker-2B")
    ap.add_argument("--tiny", action="store_true", help="a tiny random checkpoint in the reranker layout (CPU check)")
    ap.add_argument("--max-pixels", type=int, default=1024 * 32 * 32)
    ap.add_argument("--pairs", type=int, default=24)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="qwen3-check-"))
    model = args.model
    if args.tiny:
        from docrerank.models.tiny import make_tiny_qwen3_vl_reranker

        model = str(make_tiny_qwen3_vl_reranker(tmp / "Qwen3-VL-Reranker-tiny", max_pixels=args.max_pixels))
    from docrerank.models.hub import resolve_model_path

    model_dir = resolve_model_path(model)
    print("ships:", {k: v for k, v in shipped(model_dir).items()})
    print("format:", resolve_format(model_dir))
    corpus = make_corpus(tmp / "corpus", num_companies=2, years=[2021])
    questions = sample_questions(corpus)
    pages = {q["doc"]: [img for _, img, _ in render_pages(corpus / "pdfs" / q["doc"], 72)] for q in questions}
    pairs = [(q["question"], pages[q["doc"]][(q["page_number"] - 1 + k) % len(pages[q["doc"]])])
             for q in questions for k in (0, 1)][: args.pairs]
    rr = Reranker.load(model_dir, max_pixels=args.max_pixels, max_seq_len=4096)
    t0 = time.perf_counter()
    ours = rr.score([q for q, _ in pairs], [p for _, p in pairs])
    seconds = time.perf_counter() - t0
    try:
        ref = official_scores(model_dir, pairs, args.max_pixels, rr.device)
    except Exception as e:  # noqa: BLE001 - e.g. no torchvision for the processor: report ours only
        print(f"official recipe unavailable here ({type(e).__name__}: {str(e)[:200]}); our scores: {ours[:6]} ...")
        return 2
    rho = float(spearmanr(ours, ref).statistic)
    gap = float(np.max(np.abs(np.asarray(ours) - np.asarray(ref))))
    print(f"{len(pairs)} pairs: spearman {rho:.4f}, max |ours - official| {gap:.4f}, ours {len(pairs) / seconds:.1f} "
          "pairs/s")
    write_result(f"qwen3_reranker_parity_{rr.device.split(':')[0]}", "spearman(docrerank, official recipe)",
                 "rank correlation", 1.0, rho, max_abs_diff=gap, pairs=len(pairs),
                 pairs_per_s=len(pairs) / seconds, model=model)
    return 0 if rho >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
