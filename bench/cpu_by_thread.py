"""Where the machine's CPU time goes, thread by thread, over a window: every thread of every process, from
/proc/<pid>/task/<tid>/stat (user + system time), .../schedstat (time runnable but waiting for a CPU) and .../status (context
switches), diffed
between the window's two ends. Used to find what runs beside a training worker (``bench/bench_train_loop.py``).

    python bench/cpu_by_thread.py --wait 60 --seconds 30 [--top 25] [--out FILE.json]

Prints the top threads by CPU seconds in the window (process name, thread name, pid/tid, CPU %, % of the window
runnable but waiting for a CPU, voluntary and involuntary context switches a second) and the sum per process name; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def read_threads() -> dict[tuple[int, int], dict]:
    """{(pid, tid): {proc, thread, cpu_s, vol, invol}} for every thread readable now."""
    out: dict[tuple[int, int], dict] = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            proc = (pid_dir / "comm").read_text().strip()
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            tasks = list((pid_dir / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
                status = (task / "status").read_text()
                sched = (task / "schedstat").read_text().split()  # ns on a CPU, ns runnable waiting, slices
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
            sw = {k: int(v) for k, v in (line.split(":\t") for line in status.splitlines()
                                         if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))}
            out[(int(pid_dir.name), int(task.name))] = {
                "proc": proc, "cmd": cmd, "thread": name, "cpu_s": cpu, "wait_s": int(sched[1]) / 1e9,
                "vol": sw.get("voluntary_ctxt_switches", 0), "invol": sw.get("nonvoluntary_ctxt_switches", 0)}
    return out


def window(seconds: float) -> tuple[list[dict], float]:
    """Per-thread CPU seconds and context switches over ``seconds`` (threads alive at both ends)."""
    a, t0 = read_threads(), time.monotonic()
    time.sleep(seconds)
    b, t1 = read_threads(), time.monotonic()
    dt = t1 - t0
    rows = []
    for key, end in b.items():
        start = a.get(key)
        if start is None:
            continue
        rows.append({"pid": key[0], "tid": key[1], "proc": end["proc"], "thread": end["thread"], "cmd": end["cmd"],
                     "cpu_pct": 100 * (end["cpu_s"] - start["cpu_s"]) / dt,
                     "runq_wait_pct": 100 * (end["wait_s"] - start["wait_s"]) / dt,
                     "vol_per_s": (end["vol"] - start["vol"]) / dt, "invol_per_s": (end["invol"] - start["invol"]) / dt})
    rows.sort(key=lambda r: -r["cpu_pct"])
    return rows, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait before the window opens")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the window")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()
    time.sleep(args.wait)
    rows, dt = window(args.seconds)
    per_proc: dict[str, float] = defaultdict(float)
    for r in rows:
        per_proc[r["proc"]] += r["cpu_pct"]
    print(f"window {dt:.1f} s; machine total {sum(r['cpu_pct'] for r in rows):.0f}% of {os.cpu_count() * 100}%")
    print(f"{'cpu%':>6} {'runq%':>6} {'vol/s':>7} {'invol/s':>7}  proc / thread (pid/tid)")
    for r in rows[:args.top]:
        print(f"{r['cpu_pct']:6.1f} {r['runq_wait_pct']:6.1f} {r['vol_per_s']:7.0f} {r['invol_per_s']:7.0f}  {r['proc']} / {r['thread']} "
              f"({r['pid']}/{r['tid']})")
    print("per process name:", ", ".join(f"{k} {v:.0f}%" for k, v in sorted(per_proc.items(), key=lambda x: -x[1])
                                          if v >= 0.5))
    if args.out:
        Path(args.out).write_text(json.dumps({"seconds": dt, "threads": [r for r in rows if r["cpu_pct"] > 0.1],
                                              "per_process": dict(per_proc)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
