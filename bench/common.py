"""Shared helpers for benchmarks: the result record every benchmark writes."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    """The GPU's name, else the CPU and its core count (recorded with every result)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    import os

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_result(name: str, metric: str, unit: str, baseline: float, value: float, **extra) -> dict:
    """Write ``bench/results/<name>.json`` with the project's standard keys and print it."""
    rec = {
        "metric": metric,
        "unit": unit,
        "baseline": round(baseline, 4),
        "value": round(value, 4),
        "ratio": round(value / baseline, 4) if baseline else None,
        "device": device_name(),
        "command": "python " + " ".join(sys.argv),
        "date": _dt.date.today().isoformat(),
        **extra,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec, indent=2))
    return rec
