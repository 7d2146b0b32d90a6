"""The GPU check (run by ``bench/gpu_check.sh``): on a Qwen2-VL-2B-shaped random model in bf16 with 1024-token pages,
without Ray, vLLM or DeepSpeed (torch, transformers and peft only, plus docrerank's pydantic and pyyaml):

1. hf engine ``judge``: shared-page prefix reuse vs plain judging, 12 and 24 checks per page (pairs/s, ratio);
2. hf engine ``generate``: page-grounded requests, batched vs one at a time (output tokens/s);
3. LoRA training steps of the reranker (``scaling.use_ray=false`` path: the scorer, collate, loss, plain AdamW):
   samples/s, tokens/s, peak memory, MFU estimate, vs a plain transformers step (full forward per example);
4. export (LoRA merged in float32, cast to bf16) and reload through the ``Reranker``: score parity with the
   trained adapter;
5. one DeepSpeed ZeRO-2 bf16 run of a few steps through the training's own engine (``train.step.make_engine``) with
   ``deepspeed.optimizer: auto`` (skipped, saying so, where DeepSpeed is not installed);
6. the two training paths (``model.shared_prefix`` false/true): samples/s, model FLOPs, MFU (``train_paths``;
   DeepSpeed ZeRO-2 when installed).

It asserts, not only measures (the run exits non-zero, naming the check): the page image changes the score (a
model that ignored the images, as transformers < 5.18 silently did, scores every page the same), the training loss
decreases, the exported model scores as the trained adapter did, and the DeepSpeed steps lower the loss.
``--budget-s`` bounds the whole run: a check that would start too late is skipped and recorded as such.

Each writes ``<out-dir>/<name>_<tag>.json`` (metric, unit, baseline, value, ratio, device, command, date), tag
``cuda_2b`` on a GPU, ``cpu_tiny`` with ``--tiny`` (a tiny model and small pages: checks the script end to end on
a CPU in a few minutes). The model is built from its config: nothing is downloaded.

    python bench/gpu_check.py [--tiny] [--out-dir bench/results] [--only judge,generate,train,deepspeed,train_paths]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN2_VL_2B = dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
                   vision_depth=32, vision_embed_dim=1280, vision_heads=16, vision_mlp_ratio=4, vocab_size=151936,
                   initializer_range=0.02)
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vision_depth=2, vision_embed_dim=32,
            vision_heads=2)
# Dense bf16 peak of common training GPUs (vendor datasheets), for the MFU estimate.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
QUERIES = ["What is the total revenue in {y}?", "Which segment grew fastest in {y}?",
           "How many employees were there in {y}?", "What was the net income of the cloud segment in {y}?",
           "What percentage of sales came from software in {y}?", "What dividend was paid per share in {y}?"]
JUDGE = "Can this page answer the question? Answer Yes or No.\nQuestion: {q}"
WRITE = "Write one question that this page answers. Return only the question."


def make_page(seed: int, size: int) -> bytes:
    """A synthetic document page (PNG): text-like bars and a figure block."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.full((size, size, 3), 255, dtype=np.uint8)
    for y in range(size // 20, size - size // 20, max(4, size // 40)):
        a[y:y + max(2, size // 90), size // 20:int(rng.integers(size // 2, size - size // 20))] = rng.integers(0, 80)
    y0, x0 = int(rng.integers(size // 8, size // 2)), int(rng.integers(size // 12, size // 2))
    a[y0:y0 + size // 4, x0:x0 + size // 3] = rng.integers(100, 200, (size // 4, size // 3, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class Recorder:
    """Writes one result file per check in the project format."""

    def __init__(self, out_dir: Path, tag: str, device: str, argv: list[str]):
        self.out_dir, self.tag, self.device, self.argv = out_dir, tag, device, argv
        self.written: list[str] = []

    def device_name(self) -> str:
        import torch

        if self.device == "cuda":
            return torch.cuda.get_device_name(0)
        return f"cpu: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"

    def write(self, name: str, metric: str, unit: str, baseline, value, **extra) -> dict:
        rec = {"metric": metric, "unit": unit,
               "baseline": None if baseline is None else round(float(baseline), 6),
               "value": round(float(value), 6),
               "ratio": round(float(value) / float(baseline), 4) if baseline else None,
               "device": self.device_name(),
               "command": "bash bench/gpu_check.sh " + " ".join(self.argv),
               "date": dt.date.today().isoformat(), **extra}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{name}_{self.tag}.json"
        path.write_text(json.dumps(rec, indent=2, default=str) + "\n")
        self.written.append(str(path))
        print(f"[{name}] baseline {rec['baseline']} -> value {rec['value']} {unit} (ratio {rec['ratio']}) -> {path}",
              flush=True)
        return rec


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class CheckFailed(AssertionError):
    """A check's assertion: the run goes on with the other checks and exits non-zero at the end."""


def require(ok: bool, what: str) -> None:
    """Fail the current check with ``what`` unless ``ok``."""
    if not ok:
        raise CheckFailed(what)


def build_model(work: Path, tiny: bool, device: str) -> tuple[str, float]:
    """A random Qwen2-VL checkpoint with 2B shapes (or tiny) written to ``work``; (path, seconds)."""
    from docrerank.models.tiny import make_tiny_qwen2_vl

    t0 = time.perf_counter()
    dims = TINY if tiny else QWEN2_VL_2B
    path = make_tiny_qwen2_vl(work / "qwen2vl", **dims, max_pixels=802_816,
                              dtype=None if tiny else "bfloat16", init_device=device)
    return str(path), time.perf_counter() - t0


def check_judge(rec: Recorder, model: str, args, pages: list[bytes]) -> None:
    from docrerank.engines import EngineConfig, JudgeRequest, build_engine, user

    engine = build_engine(EngineConfig(backend="hf", model=model, dtype="bfloat16" if rec.device == "cuda" else "float32",
                                       max_pixels=args.max_pixels, batch_size=args.batch_size,
                                       hf={"device": rec.device, "local_files_only": True}))

    def requests(n_pages: int, per_page: int):
        return [JudgeRequest([user(pages[p], JUDGE.format(q=QUERIES[k % len(QUERIES)].format(y=2000 + k)))],
                             id=f"{p}-{k}") for p in range(n_pages) for k in range(per_page)]

    def timed(reqs, reuse: bool):
        engine.cfg.hf.prefix_reuse = reuse
        sync(rec.device)
        t = time.perf_counter()
        res = engine.judge(reqs)
        sync(rec.device)
        return time.perf_counter() - t, res

    timed(requests(1, 4), True)
    timed(requests(1, 4), False)
    settings = {}
    for per_page in (12,):  # 24 checks per page: --only judge with a larger budget
        reqs = requests(len(pages), per_page)
        best = {True: float("inf"), False: float("inf")}
        out = {}
        for _ in range(args.repeats):
            for reuse in (True, False):
                secs, res = timed(reqs, reuse)
                best[reuse] = min(best[reuse], secs)
                out[reuse] = res
        errors = [r.error for rs in out.values() for r in rs if r.error]
        if errors:
            raise SystemExit(f"judge errors: {errors[:3]}")
        diff = max(abs(a.p_yes - b.p_yes) for a, b in zip(out[True], out[False]))
        # the same question on different pages: the image must change the judgement
        same_q = [r.p_yes for r in out[False][::per_page]]
        require(max(same_q) - min(same_q) > 1e-6, f"judge: one question on {len(same_q)} different pages got the "
                f"same p_yes {same_q}: the page image is ignored")
        require(diff < 0.05, f"judge: prefix reuse and plain judging differ by {diff:.4f} in p_yes")
        settings[str(per_page)] = {"pairs": len(reqs), "baseline_pairs_per_s": len(reqs) / best[False],
                                   "value_pairs_per_s": len(reqs) / best[True], "ratio": best[False] / best[True],
                                   "max_abs_diff_p_yes": diff, "prompt_tokens_per_pair": out[True][0].prompt_tokens}
    head = settings["12"]
    rec.write("judge_prefix_reuse", "judged pairs per second, hf engine, 12 checks per page", "pairs/s",
              head["baseline_pairs_per_s"], head["value_pairs_per_s"], target_ratio=5.0,
              baseline_desc="plain: every pair its own sequence (image + instruction + query), batched",
              value_desc="prefix reuse: each page's image + instruction encoded once, the queries on its KV cache",
              by_checks_per_page=settings, pages=len(pages), batch_size=args.batch_size, repeats=args.repeats)


def check_generate(rec: Recorder, model: str, args, pages: list[bytes]) -> None:
    from docrerank.engines import EngineConfig, GenerateRequest, SamplingParams, build_engine, user

    def run(batch_size: int) -> tuple[float, int, list]:
        engine = build_engine(EngineConfig(backend="hf", model=model, max_pixels=args.max_pixels,
                                           dtype="bfloat16" if rec.device == "cuda" else "float32",
                                           batch_size=batch_size, reject_refusals=False,
                                           hf={"device": rec.device, "local_files_only": True}))
        reqs = [GenerateRequest([user(p, WRITE)], SamplingParams(max_tokens=args.gen_tokens, seed=i), id=str(i))
                for i, p in enumerate(pages * 2)]
        engine.generate(reqs[:1])  # warm-up
        sync(rec.device)
        t = time.perf_counter()
        res = engine.generate(reqs)
        sync(rec.device)
        secs = time.perf_counter() - t
        return secs, sum(r.completion_tokens for r in res), res

    base_s, base_tok, _ = run(1)
    val_s, val_tok, res = run(args.batch_size)
    errors = [r.error for r in res if r.error]
    rec.write("generate", f"generated tokens per second, hf engine, {args.gen_tokens}-token budget, page images",
              "tokens/s", base_tok / base_s, val_tok / val_s,
              baseline_desc="one request per forward pass", value_desc=f"batches of {args.batch_size} requests",
              requests=len(res), output_tokens=val_tok, seconds=val_s, request_errors=len(errors),
              error_examples=errors[:3], prompt_tokens_per_request=res[0].prompt_tokens,
              note="random weights: requests usually run to the token budget and are rejected as truncated; "
                   "their generated tokens are counted")


def groups_of(pages: list[bytes], n: int):
    from docrerank.data.examples import Group

    out = []
    for g in range(n):
        q = [QUERIES[(g + i) % len(QUERIES)].format(y=2010 + g + i) for i in range(4)]
        out.append(Group(group_id=f"g{g}", queries=q, page_index=[0, 0, 0, 0], labels=[1, 0, 0, 0],
                         page_ids=[f"p{g}"], images=[pages[g % len(pages)]], texts=[""]))
    return out


def lm_params(model) -> tuple[int, int]:
    """(language-model parameters, vision-tower parameters) of a Qwen2-VL-family model."""
    vis = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    return sum(p.numel() for p in model.parameters()) - vis, vis


def check_train_and_export(rec: Recorder, model: str, args, pages: list[bytes], work: Path) -> None:
    import torch

    from docrerank.models.hub import resolve_dtype
    from docrerank.models.reranker import Reranker
    from docrerank.models.backbones import build_scorer
    from docrerank.data.collate import collate_groups
    from docrerank.train.config import TrainConfig
    from docrerank.train.export import load_trained, save_local, trainable_state
    from docrerank.train.loss import example_weights, pointwise_loss
    from docrerank.train.step import PlainEngine, prepare, train_step

    device = rec.device
    cfg = TrainConfig.model_validate({
        "output": str(work / "train"), "data": {"sources": [{"path": "unused"}], "groups_per_device": args.groups},
        "model": {"path": model, "max_pixels": args.max_pixels, "max_seq_len": 2048, "gradient_checkpointing": True,
                  "shared_prefix": False},  # hf_step below reads the per-pair layout
        "deepspeed": {"enabled": False}, "scaling": {"use_ray": False, "device": device},
        "optim": {"warmup_steps": 0, "lr": 1e-4}})
    groups = groups_of(pages, args.groups)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    scorer = build_scorer(cfg.model, cfg.lora, device=device, seed=0)
    engine = PlainEngine(scorer, cfg, total_steps=2 * args.steps + 4, device=device)
    mb = prepare(scorer, collate_groups(groups))
    scorer.eval()
    with torch.no_grad():
        x = {k: v.to(device) for k, v in mb.inputs.items()}
        untrained = scorer(**x).float().cpu()

    def hf_step() -> None:  # what a Trainer's compute_loss does: per-example pixels, full forward, all logits
        per_page = torch.split(x["pixel_values"], [int(g.prod()) for g in x["page_grid"]])
        pixels = torch.cat([per_page[i] for i in x["page_of"].tolist()])
        out = scorer.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], pixel_values=pixels,
                           image_grid_thw=x["page_grid"][x["page_of"]], mm_token_type_ids=x["mm_token_type_ids"],
                           use_cache=False)
        last = out.logits[:, -1].float()
        scores = last[:, scorer.answer_ids[0]] - last[:, scorer.answer_ids[1]]
        labels = mb.labels.to(device)
        engine.backward(pointwise_loss(scores, labels, example_weights(labels, 3.0)))
        engine.step()

    def timed(step) -> list[float]:
        times = []
        for i in range(args.steps + 1):
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t)
        return times

    engine.train()
    base_times = timed(hf_step)
    base_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses = []
    ours = timed(lambda: losses.append(train_step(engine, [mb], cfg.loss, device)["loss"]))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    step_s, base_s = min(ours), min(base_times)
    n_lm, n_vis = lm_params(scorer.model)
    pixels_per_page = float(mb.inputs["page_grid"].prod(-1).float().mean())
    # forward + backward (activation gradients) + recomputation = 3 forward passes of the language model; the frozen
    # vision tower runs once per distinct page without gradients
    flops = 6 * n_lm * mb.tokens + 2 * n_vis * pixels_per_page * len(mb.inputs["page_grid"])
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in rec.device_name()), None)
    mfu = flops / step_s / (peak_tflops * 1e12) if peak_tflops and device == "cuda" else None
    require(losses[-1] < losses[0], f"train: the loss did not decrease over {len(losses)} steps on one batch: {losses}")
    # one query against each page: the image must change the score
    scorer.eval()
    pix = [scorer.page_pixels(pages[i], f"p{i}") for i in range(len(pages))]
    with torch.no_grad():
        per_page = scorer.score_pairs([QUERIES[0]] * len(pix), list(range(len(pix))), pix, device).float().cpu()
    require(float(per_page.max() - per_page.min()) > 1e-6, f"train: one query on {len(pix)} pages scores "
            f"{per_page.tolist()}: the page image is ignored (transformers >= 5.18 needed)")
    rec.write("train_lora", "reranker training samples/s, LoRA, gradient checkpointing, no DeepSpeed", "samples/s",
              mb.examples / base_s, mb.examples / step_s, examples_per_step=mb.examples, tokens_per_step=mb.tokens,
              tokens_per_s=mb.tokens / step_s, step_s=step_s, baseline_step_s=base_s, peak_memory_mb=peak,
              baseline_peak_memory_mb=base_peak, mfu_estimate=mfu, peak_bf16_tflops=peak_tflops,
              flops_per_step=flops, lm_params=n_lm, vision_params=n_vis, losses=losses,
              baseline_desc="plain transformers LoRA step: per-example page pixels, full forward, all logits",
              value_desc="the project's step: each distinct page through the frozen vision tower once, "
                         "True/False rows only")

    # export: LoRA merged in float32, cast to the training dtype, reloaded through the Reranker
    scorer.eval()
    with torch.no_grad():
        trained = scorer(**x).float().cpu()
    state = trainable_state(scorer)
    out = work / "export"
    t = time.perf_counter()
    save_local(load_trained(cfg, state, device, dtype="float32"), cfg, out, resolve_dtype(cfg.model.dtype, device))
    export_s = time.perf_counter() - t
    engine = scorer = None  # free the GPU for the reloaded model
    if device == "cuda":
        torch.cuda.empty_cache()
    rr = Reranker.load(str(out / "merged"), device=device, batch_size=8)
    batch = collate_groups(groups)
    merged = torch.from_numpy(rr.score(batch.queries, [batch.images[i] for i in batch.page_of])).float()
    gap = (merged - trained).abs().max().item()
    moved = (trained - untrained).abs().max().item()
    rank = lambda t: t.argsort().argsort().float()  # noqa: E731 - Spearman without scipy (not on every GPU box)
    rho = float(torch.corrcoef(torch.stack([rank(merged), rank(trained)]))[0, 1]) if len(merged) > 2 else None
    # fp32 end to end on the CPU: equal up to float rounding; bf16 on the GPU: within bf16 rounding of the scores,
    # far below how far training moved them, and the same order
    limit = 1e-3 if device == "cpu" else 0.5 * moved + 0.1
    require(gap <= limit, f"export: the merged model's scores differ from the trained adapter's by {gap:.4f} "
            f"(> {limit:.4f}; training moved them by {moved:.4f})")
    require(rho is None or rho > 0.9, f"export: Spearman {rho} between the merged and the trained scores")
    require(moved > 0, "export: training did not move the scores at all")
    rec.write("export_parity", "max |merged model score - trained adapter score| (Reranker reload)", "score",
              moved, gap, pairs=len(merged), spearman=rho, export_s=export_s, merged_dtype=str(next(rr.model.parameters()).dtype),
              baseline_desc="max |trained - untrained| score: how far training moved the scores",
              value_desc="max |Reranker on the exported merged model - the trained scorer| on the same pairs")


def check_deepspeed(rec: Recorder, model: str, args, pages: list[bytes], work: Path) -> None:
    """A few ZeRO-2 steps (bf16 on the GPU, fp32 on the CPU) through the training's DeepSpeed engine with the `auto`
    Adam choice: the choice is logged and recorded, the loss must decrease."""
    import importlib.util
    import logging

    if importlib.util.find_spec("deepspeed") is None:
        print("[deepspeed] SKIPPED: DeepSpeed is not installed here (put its wheel in bench/wheels/: "
              "DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.19.8)", flush=True)
        rec.write("deepspeed_zero2_step", "DeepSpeed ZeRO-2 step: skipped (DeepSpeed not installed)", "s", None, 0,
                  skipped="deepspeed not installed")
        return
    import torch

    from docrerank.models.backbones import build_scorer
    from docrerank.data.collate import collate_groups
    from docrerank.train.config import TrainConfig
    from docrerank.train.step import make_engine, prepare, train_step

    device = rec.device
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    cfg = TrainConfig.model_validate({
        "output": str(work / "ds"), "data": {"sources": [{"path": "unused"}], "groups_per_device": args.groups},
        "model": {"path": model, "max_pixels": args.max_pixels, "max_seq_len": 2048, "gradient_checkpointing": True},
        "deepspeed": {"enabled": True, "stage": 2, "precision": "auto", "optimizer": "auto"},
        "scaling": {"use_ray": False, "device": device}, "optim": {"warmup_steps": 0, "lr": 1e-4}})
    scorer = build_scorer(cfg.model, cfg.lora, device=device, seed=0)
    seen: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Grab()
    logging.getLogger("docrerank.train").addHandler(handler)
    logging.getLogger("docrerank.train").setLevel(logging.INFO)
    t = time.perf_counter()
    engine = make_engine(scorer, cfg, total_steps=args.steps + 4, device=device)
    init_s = time.perf_counter() - t
    logging.getLogger("docrerank.train").removeHandler(handler)
    choice = next((m for m in seen if m.startswith("optimizer:")), "optimizer: ?")
    mb = prepare(scorer, collate_groups(groups_of(pages, args.groups)))
    engine.train()
    losses, times = [], []
    for _ in range(args.steps + 1):
        sync(device)
        t = time.perf_counter()
        losses.append(train_step(engine, [mb], cfg.loss, device)["loss"])
        sync(device)
        times.append(time.perf_counter() - t)
    require(all(loss == loss for loss in losses), f"deepspeed: NaN loss {losses}")
    require(losses[-1] < losses[0], f"deepspeed: the loss did not decrease over {len(losses)} ZeRO-2 steps: {losses}")
    dtype = str(next(p for p in scorer.parameters() if p.requires_grad).dtype)
    rec.write("deepspeed_zero2_step", "DeepSpeed ZeRO-2 step time, LoRA, optimizer auto", "s", None, min(times[1:]),
              optimizer=choice, init_s=init_s, losses=losses, step_s=times, trainable_dtype=dtype,
              precision="bf16" if device == "cuda" else "fp32", examples_per_step=mb.examples,
              value_desc="fastest of the timed ZeRO-2 steps (the first, warm-up step excluded)")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    del engine, scorer
    if device == "cuda":
        torch.cuda.empty_cache()
# ---------------------------------------------------------------------------------------------------------------
# Issue 22: the two training paths of the vlm scorer (model.shared_prefix false / true), a section of its own.
def check_train_paths(rec: Recorder, model: str, args, pages: list[bytes], work: Path) -> None:
    """Training samples/s, model FLOPs and MFU of the per-pair path (every (page, query) pair through the language
    model in full) and the shared-prefix path (each page's prefix once per micro-batch, its queries against it),
    same batch (``--groups`` groups of 1 positive + 3 negatives, 1024-token pages), LoRA r=32, gradient
    checkpointing, bf16; DeepSpeed ZeRO-2 (one process) when DeepSpeed is installed, else the plain AdamW engine.
    Writes ``train_paths_<tag>.json`` (baseline: per-pair samples/s; value: shared-prefix samples/s)."""
    import gc

    import torch

    from docrerank.models.backbones import build_scorer
    from docrerank.data.collate import collate_groups
    from docrerank.train.config import TrainConfig
    from docrerank.models.flops import peak_bf16_tflops
    from docrerank.train.step import PlainEngine, make_engine, prepare, train_step

    device = rec.device
    try:
        import deepspeed  # noqa: F401

        zero2 = True
    except ImportError:
        zero2 = False
    groups = groups_of(pages, args.groups)
    res: dict = {}
    for name, shared in (("per_pair", False), ("shared_prefix", True)):
        cfg = TrainConfig.model_validate({
            "output": str(work / f"train_{name}"),
            "data": {"sources": [{"path": "unused"}], "groups_per_device": args.groups},
            "model": {"path": model, "max_pixels": args.max_pixels, "max_seq_len": 2048,
                      "gradient_checkpointing": True, "shared_prefix": shared},
            "deepspeed": {"enabled": zero2, "stage": 2}, "scaling": {"use_ray": False, "device": device},
            "optim": {"warmup_steps": 0, "lr": 1e-4}})
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        scorer = build_scorer(cfg.model, cfg.lora, device=device, seed=0)
        total = args.steps + 2
        engine = (make_engine(scorer, cfg, total_steps=total, device=device) if zero2
                  else PlainEngine(scorer, cfg, total_steps=total, device=device))
        mb = prepare(scorer, collate_groups(groups))
        steps = [train_step(engine, [mb], cfg.loss, device) for _ in range(args.steps + 1)][1:]  # 1 warm-up
        best = min(steps, key=lambda st: st["step_s"])
        flops = scorer.model_flops(mb.inputs)
        res[name] = {"samples_per_s": best["samples_per_s"], "step_s": best["step_s"],
                     "step_s_all": [round(st["step_s"], 4) for st in steps], "lm_tokens": mb.tokens,
                     "model_flops_per_step": flops["total"], "lm_flops_per_step": flops["lm"],
                     "vision_flops_per_step": flops["vision"], "model_tflops_per_s": best.get("model_tflops_per_s"),
                     "mfu": best.get("mfu"), "losses": [round(st["loss"], 5) for st in steps],
                     "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}
        engine = scorer = mb = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    base, ours = res["per_pair"], res["shared_prefix"]
    rec.write("train_paths", "reranker training samples/s: shared page prefix vs per-pair (same batch)", "samples/s",
              base["samples_per_s"], ours["samples_per_s"], variants=res,
              engine="deepspeed zero-2" if zero2 else "plain",
              flop_ratio=base["model_flops_per_step"] / ours["model_flops_per_step"],
              groups=args.groups, examples_per_step=4 * args.groups,
              peak_bf16_tflops=peak_bf16_tflops(rec.device_name()) if device == "cuda" else None,
              note="model FLOPs by docrerank.models.flops (vision forward once per page, language model forward + "
                   "backward as laid out, recomputation not counted); MFU against the device's dense bf16 peak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model and small pages (a CPU check of the script)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--only", default="judge,generate,train,deepspeed,train_paths", help="comma-separated checks to run")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 0)) or None,
                    help="seconds the whole run may take: a check is skipped when less than its estimate is left")
    ap.add_argument("--pages", type=int, default=None, help="pages per check (default 4; tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per judge path (best kept)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per variant")
    ap.add_argument("--groups", type=int, default=None, help="groups per training batch (8 = 32 examples)")
    args = ap.parse_args(argv)
    import torch

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if not args.tiny and device != "cuda":
        raise SystemExit("no CUDA GPU visible: run with --tiny for a CPU check of the script")
    big = not args.tiny
    args.pages = args.pages or (3 if big else 2)
    args.repeats = args.repeats or 1
    args.steps = args.steps or (3 if big else 2)
    args.groups = args.groups or (4 if big else 2)
    args.batch_size = 8
    args.gen_tokens = 64 if big else 8
    args.max_pixels = 802_816 if big else 28 * 28 * 64  # 1024 image tokens per page (tiny: 64)
    size = 896 if big else 224
    rec = Recorder(Path(args.out_dir), "cuda_2b" if big else "cpu_tiny", device,
                   argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        model, build_s = build_model(work, args.tiny, device)
        print(f"model built in {build_s:.0f}s: {model}", flush=True)
        pages = [make_page(s, size) for s in range(args.pages)]
        only = set(args.only.split(","))
        # (name, function, seconds it needs at least on an H100, estimated; tiny: a tenth)
        checks = [("train", lambda: check_train_and_export(rec, model, args, pages, work), 120),
                  ("judge", lambda: check_judge(rec, model, args, pages), 60),
                  ("deepspeed", lambda: check_deepspeed(rec, model, args, pages, work), 150),
                  ("generate", lambda: check_generate(rec, model, args, pages), 60),
                  ("train_paths", lambda: check_train_paths(rec, model, args, pages, work), 150)]
        failed, skipped = [], []
        for name, run, need in checks:
            if name not in only:
                continue
            left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - t0)
            if left is not None and left < (need / 10 if args.tiny else need):
                print(f"[{name}] SKIPPED: {left:.0f} s of --budget-s left, it needs about {need} s", flush=True)
                skipped.append(name)
                continue
            t = time.perf_counter()
            try:
                run()
                print(f"[{name}] passed in {time.perf_counter() - t:.0f}s", flush=True)
            except CheckFailed as err:
                print(f"[{name}] FAILED: {err}", flush=True)
                failed.append(f"{name}: {err}")
        summary = {"failed": failed, "skipped": skipped, "written": rec.written, "device": rec.device_name(),
                   "seconds": round(time.perf_counter() - t0, 1), "command": "bash bench/gpu_check.sh "
                   + " ".join(rec.argv), "date": dt.date.today().isoformat()}
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.out_dir) / f"gpu_check_summary_{rec.tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu check done in {time.perf_counter() - t0:.0f}s; wrote {', '.join(rec.written)}; "
          f"failed: {failed or 'none'}; skipped: {skipped or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
