"""GPU check of the vLLM engine with a real model (not collected by pytest; needs a CUDA GPU and vllm >= 0.11.1).

    python tests/integration/vllm_gpu_check.py --model Qwen/Qwen2-VL-2B-Instruct --out vllm_gpu_check.json
    python tests/integration/vllm_gpu_check.py --model mistralai/Pixtral-12B-2409 --mistral   # gated checkpoint

What the CPU tests cannot show: that ``LLM.chat`` renders our messages for the model (image before text, one image
per prompt), that one page's checks decode its image once, that a judgement's p(yes) comes from the two answer
tokens, that a JSON schema constrains generation, and that a request vLLM rejects (a prompt over max_model_len,
parameters it refuses) fails alone. Prints and writes a JSON report; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time


def page_png(text: str) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (896, 1152), "white")
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(text.split("\n")):
        draw.text((60, 60 + 40 * k), line, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Qwen/Qwen2-VL-2B-Instruct")
    ap.add_argument("--mistral", action="store_true", help="Mistral-format checkpoint (Pixtral)")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, user

    vllm_opts = {"gpu_memory_utilization": 0.85}
    if args.mistral:
        vllm_opts.update(tokenizer_mode="mistral", config_format="mistral", load_format="mistral")
    t0 = time.perf_counter()
    eng = build_engine(EngineConfig(backend="vllm", model=args.model, max_model_len=args.max_model_len,
                                    vllm=vllm_opts))
    load_s = time.perf_counter() - t0
    page = page_png("Norvalis Energy - Annual report 2021\nFinancial highlights\n"
                    "Total revenue 2021: 4.2 billion USD\nTotal revenue 2020: 3.9 billion USD\nEmployees: 12,400")
    ask = "Can this page answer the question? Answer Yes or No.\nQuestion: "
    answerable = ["What was Norvalis Energy's total revenue in 2021?", "How many employees does Norvalis have?"]
    not_answerable = ["What was Norvalis Energy's total revenue in 2017?", "Who is the CEO of Castellan Insurance?"]
    queries = (answerable + not_answerable) * 6  # 24 checks of one page
    t0 = time.perf_counter()
    judged = eng.judge([JudgeRequest([user(page, ask + q)]) for q in queries])
    judge_s = time.perf_counter() - t0
    schema = {"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
              "required": ["queries"]}
    gen = eng.generate([
        GenerateRequest([user(page, "Write 3 questions this page answers. Reply as JSON {\"queries\": [...]}.")],
                        SamplingParams(temperature=0.7, seed=1, max_tokens=200), json_schema=schema),
        GenerateRequest([user(page, "x " * (args.max_model_len + 10))], SamplingParams(max_tokens=8)),  # too long
        GenerateRequest([user("Write a question.")], SamplingParams(temperature=0.0, n=2)),  # vLLM rejects n=2
        GenerateRequest([user(page, "Write one question about this page.")], SamplingParams(max_tokens=40)),
    ])
    p_yes = [j.p_yes for j in judged]
    checks = {
        "all judgements ok": all(j.ok for j in judged),
        "answerable > not answerable (mean p_yes)": (
            sum(p for p, q in zip(p_yes, queries) if q in answerable) / 12
            > sum(p for p, q in zip(p_yes, queries) if q in not_answerable) / 12) if all(j.ok for j in judged)
        else False,
        "page image decoded once": eng.images.decoded == 1,
        "schema output parsed": gen[0].ok and isinstance(gen[0].parsed[0].get("queries"), list),
        "too long fails alone": (gen[1].error or "").startswith("prompt_too_long"),
        "rejected parameters fail alone": (gen[2].error or "").startswith("bad_input"),
        "the last request still ran": gen[3].ok,
    }
    report = {
        "model": args.model, "load_s": round(load_s, 1), "judge_24_s": round(judge_s, 2),
        "p_yes": [round(p, 4) if p is not None else None for p in p_yes], "methods": sorted({j.method for j in judged}),
        "generate": [{"ok": g.ok, "error": g.error, "texts": g.texts} for g in gen],
        "checks": checks,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    eng.close()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
