#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py, then tests/test_gpu.py): on a Qwen2-VL-2B-shaped random model in bf16 with
# 1024-token pages, LoRA training steps (the loss must fall, the page image must change the score), export + reload
# parity (asserted), hf engine judge (prefix reuse vs plain, equal judgements) and generate, and one DeepSpeed ZeRO-2
# bf16 run with the `auto` Adam choice; then the GPU tests (the Reranker in bf16, the ColQwen2 first stage).
#   bash bench/gpu_check.sh            # on a GPU machine: the whole run fits GPU_CHECK_TIMEOUT (default 540 s)
#   bash bench/gpu_check.sh --tiny     # a CPU check of the script itself (writes *_cpu_tiny.json; skips the GPU tests)
# Results go to $OUT when it is set (the device tool's output folder), else bench/results/.
# The lent GPU machine has no package index, transformers 5.17 (no mm_encoder_outputs: page images would be
# ignored) and no pydantic or DeepSpeed: the wheels in bench/wheels/ (git-ignored; carry them) are installed into a
# private target first. Make them on a machine with an index (Python 3.12, x86-64):
#   P="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64"
#   pip download --no-deps $P -d bench/wheels transformers==5.19.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types typing-inspection typing-extensions hjson colpali-engine==0.3.18
#   DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation -w bench/wheels deepspeed==0.19.8   # pure Python, 2 MB
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_TIMEOUT:-540}   # under the device tool's 600 s per call
START=$SECONDS
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
have=$("$PY" - <<'PY' 2>/dev/null || echo no
import importlib.util
from importlib.metadata import version
from packaging.version import Version
ok = Version(version("transformers")) >= Version("5.18") and all(
    importlib.util.find_spec(m) for m in ("pydantic", "deepspeed"))
print("yes" if ok else "no")
PY
)
if [ "$have" != yes ] && compgen -G "bench/wheels/*.whl" > /dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  echo "installing $(ls bench/wheels/*.whl | wc -l) wheels from bench/wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" bench/wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/lib:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # a JIT-compiled FusedAdam for this GPU only (H100/H200)
"$PY" - <<'PY'
import importlib, platform, sys
print("python", platform.python_version())
for m in ("torch", "transformers", "peft", "PIL", "numpy", "pydantic", "yaml", "deepspeed", "colpali_engine"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')} ({mod.__file__})")
    except Exception as err:
        print(f"  {m} MISSING ({type(err).__name__}: {err})")
import torch
print("  cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
      "torch CUDA", torch.version.cuda)
from packaging.version import Version
import transformers, pydantic  # noqa: F401  (the project needs both)
if Version(transformers.__version__) < Version("5.18"):
    sys.exit(f"transformers {transformers.__version__} < 5.18 (no mm_encoder_outputs): put transformers>=5.18 in bench/wheels/")
PY
TINY=0
for a in "$@"; do [ "$a" = "--tiny" ] && TINY=1; done
LEFT=$((TOTAL - (SECONDS - START)))
TESTS_S=$([ "$TINY" = 1 ] && echo 0 || echo 150)   # what the GPU tests keep for themselves
rc=0
timeout $((LEFT - TESTS_S > 30 ? LEFT - TESTS_S : 30)) "$PY" bench/gpu_check.py --out-dir "$OUTDIR" \
    --budget-s $((LEFT - TESTS_S - 20)) "$@" || rc=$?
echo "gpu_check.py exit status: $rc"
if [ "$TINY" = 0 ]; then
  LEFT=$((TOTAL - (SECONDS - START) - 5))
  trc=0
  timeout $((LEFT > 30 ? LEFT : 30)) "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
      --junitxml "$OUTDIR/test_gpu_junit.xml" || trc=$?
  echo "tests/test_gpu.py exit status: $trc"
  [ "$rc" = 0 ] && rc=$trc
fi
exit $rc
