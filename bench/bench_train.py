"""Training throughput of the embedded demo's model: samples/s through the real Lightning loop.

    python bench/bench_train.py [--steps 150] [--warmup 20] [--threads 2] [ARGS as Hydra overrides...]

Builds exactly what ``python -m miro.train +experiment=shapes`` builds (``miro.train.build``), on a
freshly generated, scored and binned shapes set, and times optimiser steps after a warm-up (data
decoding into memory happens before, as in a real run). Results: ``bench/results/train.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from miro.config import compose_config
from miro.data.bins import fit_from_shards
from miro.scoring import build_rewards, reward_specs, score_shards
from miro.shapes.scenes import write_shapes_shards
from miro.train import build
from miro.utils.machine import machine


class StepTimer(L.Callback):
    """Wall time of every optimiser step (batch start to batch end, callbacks included), and the process's
    CPU time over the same span: with one thread on a shared box, the CPU time is what other processes'
    load disturbs least (the wall time includes the time slices they get)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._t = self._c = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self._t)
        self.cpu_times.append(time.process_time() - self._c)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=2000, help="samples in the generated training set")
    parser.add_argument("--experiment", default="shapes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the training config")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = compose_config(
            "train",
            [
                f"+experiment={args.experiment}",
                f"paths.data_dir={root}",
                f"paths.output_dir={root / 'run'}",
                f"trainer.max_steps={args.warmup + args.steps}",
                "callbacks=none",
                "logger=none",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                *args.overrides,
            ],
        )
        write_shapes_shards(root / "shards", n=args.n, size=cfg.data.image_size, per_shard=1000)
        score_shards(
            str(root / "shards"), root / "scored", build_rewards(reward_specs(list(cfg.reward_names)))
        )
        fit_from_shards(str(root / "scored")).save(root / "bins.json")
        module, datamodule, trainer = build(cfg)
        timer = StepTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=datamodule)
    timed = timer.times[args.warmup :]
    timed_cpu = timer.cpu_times[args.warmup :]
    batch = int(cfg.data.batch_size)
    step_s = sum(timed) / len(timed)
    results = {
        "benchmark": "train",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "experiment": args.experiment,
        "overrides": list(args.overrides),
        "model": {k: v for k, v in module.model.to_config().items() if k != "reward_names"},
        "reward_names": list(cfg.reward_names),
        "parameters_m": round(sum(p.numel() for p in module.model.parameters()) / 1e6, 3),
        "batch_size": batch,
        "precision": str(trainer.precision),  # what ran (the config may say auto)
        "timed_steps": len(timed),
        "seconds_per_step": round(step_s, 4),
        "cpu_seconds_per_step": round(sum(timed_cpu) / len(timed_cpu), 4),
        "steps_per_minute": round(60 / step_s, 1),
        "samples_per_s": round(batch / step_s, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "train.md").write_text(markdown(results))
    print(
        f"{results['samples_per_s']} samples/s ({results['steps_per_minute']} steps/min at batch {batch}) "
        f"-> {args.out / 'train.md'}"
    )
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    model = r["model"]
    return (
        "# Training throughput\n\n"
        f"Measured {r['date']} with `{r['command'].strip()}`.\n\n"
        f"Machine: {m['cpu']} ({m.get('cpu_kind', 'CPU kind not recorded')}), {m['cores']} cores "
        f"(torch threads {m['torch_threads']}, 1-minute load "
        f"{m['load_average_1m']} at the end), Python {m['python']}, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + ".\n\n"
        f"Model: experiment `{r['experiment']}`, {r['parameters_m']}M parameters "
        f"({model['image_size']} px, patch {model['patch_size']}, hidden {model['hidden_size']}, depth "
        f"{model['depth']}, "
        + (f"conv levels {list(model['unet_channels'])}" if model.get("unet_channels")
           else f"conv {model['conv_channels']}")
        + "), "
        f"rewards {', '.join(r['reward_names']) or 'none'}, "
        f"batch {r['batch_size']}, precision {r['precision']}.\n\n"
        f"| timed steps | s/step | CPU s/step | steps/min | samples/s |\n|---:|---:|---:|---:|---:|\n"
        f"| {r['timed_steps']} | {r['seconds_per_step']} | {r.get('cpu_seconds_per_step', '—')} "
        f"| {r['steps_per_minute']} "
        f"| **{r['samples_per_s']}** |\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
