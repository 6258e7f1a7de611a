"""The demo model's bare training step (forward + backward + AdamW, batch 32) under one setting per run.

    python bench/bench_demo_step.py [--cpu native|avx2] [--threads 1] [--precision fp32|bf16]
        [--compile none|model] [--adamw default|fused] [--channels-last] [--steps 20] [--profile]
        [--out FILE.jsonl]
        [MODEL OVERRIDES as key=value, e.g. unet_channels=[24,48] depth=3]

Why a bare step: it separates the network's cost from the training loop's (data, EMA, logging,
Lightning), which ``bench/bench_train.py`` measures. ``--cpu avx2`` emulates an AVX2-only CPU on a
bigger one: it restarts this script with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (torch and
oneDNN read them once, at start-up), so torch's own kernels and oneDNN's convolutions and matmuls use
AVX2 code only, as they would on such a CPU. ``--compile model`` times ``torch.compile`` of the network
(inductor's C++/OpenMP code on CPU) and reports the compile time apart. ``--profile`` prints torch's
profiler table of one step, grouped by operator, to see where the step goes.

Every result records the CPU model, torch's kernel level (``cpu_capability``), precision, threads and
the 1-minute load before and after, because a shared box measures slower; with one thread the process's
CPU time per step (``median_cpu_s``) is the figure that other processes' load disturbs least (the wall
time includes the time slices the scheduler gives to others).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` -> (key, value as JSON where it parses, else the string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"model override {text!r} is not key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_model(overrides: dict[str, object]):  # noqa: ANN201 - torch imported late on purpose
    from miro.config import compose_config
    from miro.models.dit import MiroDiT

    cfg = compose_config("train", ["+experiment=shapes"]).model
    kw = {k: v for k, v in dict(cfg).items() if k != "_target_"}
    kw["image_size"] = 24
    kw["unet_channels"] = list(kw["unet_channels"])
    kw.update(overrides)
    return MiroDiT(**kw, text_dim=384, reward_names=["a", "b", "c", "d"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", choices=("native", "avx2"), default="native")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", choices=("none", "model"), default="none")
    parser.add_argument("--adamw", choices=("default", "fused"), default="default",
                        help="torch's default AdamW (foreach) or its fused kernel")
    parser.add_argument("--channels-last", action="store_true", help="inputs and conv weights NHWC")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="append the result as one JSON line")
    parser.add_argument("overrides", nargs="*", help="model config overrides, key=value (JSON values)")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_override(o) for o in args.overrides)
    except ValueError as e:
        parser.error(str(e))
    if args.cpu == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.environ.update(AVX2_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load_before = os.getloadavg()[0]

    import torch

    from miro.utils.machine import machine

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(overrides)
    b, n = args.batch, 12
    x, t = torch.randn(b, 3, 24, 24), torch.rand(b)
    text, mask, rewards = torch.randn(b, n, 384), torch.ones(b, n, dtype=torch.bool), torch.rand(b, 4)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.adamw == "fused" or None)
    forward = torch.compile(model) if args.compile == "model" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            loss = forward(x, t, text, mask, rewards).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # the first step compiles (if asked)
    first_s = time.perf_counter() - t0
    for _ in range(2):
        step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    m = machine()
    result = {
        "cpu": m["cpu"], "cpu_capability": m["cpu_capability"], "cpu_kind": m["cpu_kind"],
        "emulated": args.cpu == "avx2", "precision": args.precision, "threads": torch.get_num_threads(),
        "compile": args.compile, "adamw": args.adamw, "channels_last": args.channels_last, "batch": b,
        "overrides": args.overrides, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "first_step_s": round(first_s, 2), "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4), "max_s": round(max(times), 4),
        "median_cpu_s": round(statistics.median(cpu_times), 4),
        "load_1m_before": round(load_before, 2), "load_1m_after": round(os.getloadavg()[0], 2),
        "torch": m["torch"],
    }
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
