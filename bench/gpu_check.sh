#!/usr/bin/env bash
# The GPU check of issue 13 (bench/gpu_check.py): hf engine judge (prefix reuse vs plain) and generate, LoRA training
# steps, export + reload parity, on a Qwen2-VL-2B-shaped random model in bf16 with 1024-token pages. Needs torch,
# transformers, peft, pillow, numpy, pydantic and pyyaml; no Ray, vLLM or DeepSpeed. Writes bench/results/*_cuda_2b.json.
#   bash bench/gpu_check.sh            # on a GPU machine (sized for under 10 minutes on an H100/H200)
#   bash bench/gpu_check.sh --tiny     # a CPU check of the script itself (writes *_cpu_tiny.json)
# A machine without a package index: put wheels of the missing modules in bench/wheels/ (made elsewhere with
#   pip download --only-binary :all: --python-version 3.X -d bench/wheels pydantic pyyaml) and they are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" - <<'PY'
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "transformers", "peft", "PIL", "numpy", "pydantic", "yaml"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except ImportError:
        print(f"  {m} MISSING")
import torch
print("  cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
missing=$("$PY" -c "
import importlib
names = {'pydantic': 'pydantic', 'yaml': 'pyyaml', 'PIL': 'pillow', 'numpy': 'numpy'}
out = []
for mod, pkg in names.items():
    try:
        importlib.import_module(mod)
    except ImportError:
        out.append(pkg)
print(' '.join(out))")
if [ -n "$missing" ]; then
  if [ -d bench/wheels ]; then
    echo "installing $missing from bench/wheels"
    "$PY" -m pip install -q --no-index --find-links bench/wheels $missing
  else
    echo "missing Python packages: $missing (pip install them, or put their wheels in bench/wheels/)" >&2
    exit 2
  fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-900}" "$PY" bench/gpu_check.py "$@"
