"""Which torch thread setting stays fast when the machine is shared: the options behind ``threads=auto``.

    python bench/bench_threads.py [--steps 12] [--busy 0 1] [--threads 1 2]

Each condition runs in a fresh process (OpenMP reads its settings once, at start): the embedded demo's
model (conf/model/dit_shapes.yaml) does fp32 forward + backward + AdamW steps at batch 32 while ``--busy``
other processes each keep one core busy (a pure-Python loop, like another user's job). Reported per
condition: the median and the slowest step, because a stalled OpenMP barrier shows as a long tail.
Conditions: torch threads 1 or 2 (or what ``--threads`` lists), OpenMP's default wait policy or
``OMP_WAIT_POLICY=PASSIVE``. Results: ``bench/results/threads.{json,md}`` with the machine named.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time, torch
from miro.config import compose_config
from miro.models.dit import MiroDiT
torch.manual_seed(0)
steps = int(sys.argv[1])
cfg = compose_config("train", ["+experiment=shapes"]).model
kw = {k: v for k, v in dict(cfg).items() if k != "_target_"}
kw["image_size"] = 24
model = MiroDiT(**kw, text_dim=384, reward_names=["a", "b", "c", "d"])
b, n = 32, 12
x, t = torch.randn(b, 3, 24, 24), torch.rand(b)
text, mask, rewards = torch.randn(b, n, 384), torch.ones(b, n, dtype=torch.bool), torch.rand(b, 4)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
times = []
for i in range(steps + 2):
    t0 = time.perf_counter()
    loss = model(x, t, text, mask, rewards).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= 2:
        times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "threads": torch.get_num_threads()}))
"""

BURNER = "while True: pass"


def run_condition(threads: int, passive: bool, busy: int, steps: int) -> dict:
    """One fresh worker process under ``busy`` burner processes."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(busy)]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER, str(steps)], env=env, capture_output=True, text=True, timeout=1800
        )
    finally:
        for p in burners:
            p.kill()
            p.wait()
    if proc.returncode:
        raise SystemExit(f"worker failed: {proc.stderr.strip().splitlines()[-1]}")
    times = json.loads(proc.stdout.strip().splitlines()[-1])["times"]
    return {
        "threads": threads, "wait_policy": "PASSIVE" if passive else "default", "busy_processes": busy,
        "median_s": statistics.median(times), "max_s": max(times), "load_average_1m": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    from miro.utils.machine import machine

    rows = []
    for busy in args.busy:
        for threads in args.threads:
            for passive in (False, True):
                row = run_condition(threads, passive, busy, args.steps)
                rows.append(row)
                print(f"busy {busy}  threads {threads}  {row['wait_policy']:<8} "
                      f"median {row['median_s']:.3f} s"
                      f"  slowest {row['max_s']:.3f} s", flush=True)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "steps": args.steps,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# Torch threads on a shared machine",
        "",
        f"Measured {result['when']} with `python bench/bench_threads.py`.",
        "",
        f"Machine: {m['cpu']} ({m['cpu_kind']}), {m['cores']} cores, 1-minute load {m['load_average_1m']} "
        f"at the end, torch {m['torch']}.",
        "",
        "The demo model's fp32 training step (batch 32) in a fresh process, while other processes each keep "
        "one core busy.",
        "",
        "| other busy processes | torch threads | OpenMP wait policy | median step (s) | slowest step (s) |",
        "|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['busy_processes']} | {r['threads']} | {r['wait_policy']} | {r['median_s']:.3f} | "
                     f"{r['max_s']:.3f} |")
    (args.out / "threads.md").write_text("\n".join(lines) + "\n")
    print(f"-> {args.out / 'threads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
