"""Scoring throughput: samples/s of each offline reward and of the whole scoring stage.

    python bench/bench_scoring.py [--n 2000] [--size 32] [--threads 1] [--batch-size 256]

Per reward: ``reward.score`` on already decoded uint8 batches. Full stage: ``miro.scoring.score_shards``
on freshly written shards (read, JPEG decode, all rewards, write, report). Results go to
``bench/results/scoring.{json,md}`` with the machine described; rerun on your machine to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from miro.data.shards import atomic_shard_writer, encode_jpeg, iter_shard
from miro.rewards import build_reward
from miro.scoring import score_shards
from miro.utils.machine import machine

REWARDS = ("sharpness", "colorfulness", "compressibility", "alignment")


def write_shards(out: Path, n: int, size: int, per_shard: int) -> list[Path]:
    """Shapes-world shards when miro.shapes.scenes exists, else simple drawn scenes."""
    try:
        from miro.shapes.scenes import write_shapes_shards
    except ImportError:
        write_shapes_shards = None
    if write_shapes_shards is not None:
        return write_shapes_shards(out, n=n, size=size, per_shard=per_shard)
    paths = []
    for s in range(0, n, per_shard):
        path = out / f"{s // per_shard:05d}.tar"
        with atomic_shard_writer(path) as writer:
            for i in range(s, min(n, s + per_shard)):
                rng = np.random.default_rng(i)
                img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
                x, y = (int(v) for v in rng.integers(0, size // 2, 2))
                ImageDraw.Draw(img).ellipse((x, y, x + size // 3, y + size // 3), fill=(200, 30, 40))
                writer.write({"__key__": f"{i:09d}", "jpg": encode_jpeg(img), "txt": b"a red circle"})
        paths.append(path)
    return paths


def decoded(paths: list[Path]) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for path in paths:
        for sample in iter_shard(path):
            img = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
            captions.append(sample["txt"].decode())
    return torch.stack(images), captions


def throughput(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per reward")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results: dict[str, object] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "setup": {"n": args.n, "size": args.size, "batch_size": args.batch_size, "threads": args.threads},
        "rewards_samples_per_s": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp) / "in", args.n, args.size, per_shard=1000)
        images, captions = decoded(shards)
        rewards = {name: build_reward(name, batch_size=args.batch_size) for name in REWARDS}
        for name, reward in rewards.items():
            rate = throughput(lambda r=reward: r.score(images, captions), len(captions), args.repeats)
            results["rewards_samples_per_s"][name] = round(rate, 1)
            print(f"{name:16s} {rate:10.1f} samples/s", file=sys.stderr)
        start = time.perf_counter()
        inputs = [str(p) for p in shards]
        summary = score_shards(inputs, Path(tmp) / "out", rewards, batch_size=args.batch_size)
        elapsed = time.perf_counter() - start
        results["stage"] = {
            "rewards": list(rewards),
            "samples": summary.n_scored,
            "seconds": round(elapsed, 2),
            "samples_per_s": round(summary.n_scored / elapsed, 1),
        }
        print(f"{'full stage':16s} {summary.n_scored / elapsed:10.1f} samples/s", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scoring.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "scoring.md").write_text(markdown(results))
    print(f"wrote {args.out / 'scoring.json'} and {args.out / 'scoring.md'}")
    return 0


def markdown(r: dict) -> str:
    m, s, stage = r["machine"], r["setup"], r["stage"]
    lines = [
        "# Scoring throughput",
        "",
        f"Measured {r['when']} with `python bench/bench_scoring.py --n {s['n']} --size {s['size']} "
        f"--threads {s['threads']} --batch-size {s['batch_size']}`.",
        "",
        f"Machine: {m['cpu']} ({m.get('cpu_kind', 'CPU kind not recorded')}), {m['cores']} cores "
        f"(torch threads {m['torch_threads']}, 1-minute load "
        f"{m['load_average_1m']} at the start), Python {m['python']}, torch {m['torch']}.",
        "",
        f"| reward ({s['size']}x{s['size']} images, decoded) | samples/s |",
        "|---|---:|",
        *(f"| {name} | {rate:,.1f} |" for name, rate in r["rewards_samples_per_s"].items()),
        "",
        f"Full stage (read shards, decode JPEG, {', '.join(stage['rewards'])}, write shards and reports): "
        f"{stage['samples']} samples in {stage['seconds']} s = **{stage['samples_per_s']:,.1f} samples/s**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
