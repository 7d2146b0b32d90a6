"""GPU paths (skipped without CUDA): the Reranker in bfloat16 on the GPU agrees with float32 on the CPU, batched
equals one pair per forward, and scores are deterministic. Run on a lent GPU: ``pytest -q -m gpu tests/test_gpu.py``."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _pages(n=6):
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        img = Image.new("RGB", (300 + 40 * i, 400), "white")
        ImageDraw.Draw(img).text((20, 20 + 30 * i), f"page {i} revenue {1000 + i}", fill="black")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    return str(make_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "m", hidden_size=128, num_heads=4,
                                  max_pixels=28 * 28 * 64, initializer_range=0.02))


def test_gpu_bf16_scores_agree_with_cpu_fp32_and_batching(vlm):
    from scipy.stats import spearmanr

    from docrerank.models.reranker import Reranker

    pages = _pages()
    queries = [f"what was the revenue on page {i}" for i in range(len(pages))] * 2
    pages = pages * 2
    cpu = Reranker.load(vlm, device="cpu").score(queries, pages)
    gpu_rr = Reranker.load(vlm, device="cuda", batch_size=4)
    assert next(gpu_rr.model.parameters()).dtype == torch.bfloat16
    gpu = gpu_rr.score(queries, pages)
    assert gpu.dtype == np.float32 and not np.isnan(gpu).any()
    rel = np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu)
    assert rel < 0.05, rel
    assert spearmanr(gpu, cpu).statistic > 0.9
    one = gpu_rr.score(queries, pages, batch_size=1)
    assert np.linalg.norm(one - gpu) / np.linalg.norm(gpu) < 0.05
    np.testing.assert_array_equal(gpu_rr.score(queries, pages), gpu)  # deterministic


def test_colpali_first_stage_with_a_tiny_colqwen2(tmp_path):
    """The evaluation's ColQwen2 first stage through colpali-engine, on a tiny random ColQwen2 (no download)."""
    cm = pytest.importorskip("colpali_engine.models")
    from docrerank.retrieval.retrievers import ColPaliRetriever
    from docrerank.models.tiny import make_tiny_qwen2_vl

    src = make_tiny_qwen2_vl(tmp_path / "qwen2vl", hidden_size=128, num_heads=4, max_pixels=28 * 28 * 64)
    colqwen = tmp_path / "colqwen2-tiny"
    model = cm.ColQwen2.from_pretrained(str(src))  # the Qwen2-VL weights; the 128-d projection starts random
    model.save_pretrained(str(colqwen))
    for f in src.iterdir():
        if not (colqwen / f.name).exists():
            (colqwen / f.name).write_bytes(f.read_bytes())
    retriever = ColPaliRetriever(str(colqwen), device="cuda", batch_size=2)
    pages = _pages(5)
    ids = [f"p{i}" for i in range(5)]
    queries = {"a": "revenue on page 1", "b": "page 3"}
    run = retriever.search(queries, ids, pages, k=3)
    assert set(run) == {"a", "b"} and all(len(v) == 3 and set(v) <= set(ids) for v in run.values())
    assert retriever.search(queries, ids, pages, k=3) == run  # deterministic
