"""Generation time per image of the embedded demo's model (random weights: the same FLOPs as trained).

    python bench/bench_generate.py [--steps 25] [--batch 16] [--threads 2]

Times ``miro.pipeline.generate_images`` (Euler sampler, multi-reward guidance: both branches in one
batched forward) for the model ``conf/experiment/shapes`` builds. Results: ``bench/results/generate.*``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from miro.config import compose_config
from miro.pipeline import generate_images
from miro.utils.machine import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experiment", default="shapes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose_config("train", [f"+experiment={args.experiment}"])
    text = instantiate(cfg.text_encoder).eval()
    model = instantiate(cfg.model, text_dim=text.dim, reward_names=list(cfg.reward_names)).eval()
    prompts = ["a red circle above a blue square"] * args.batch
    high = torch.ones(len(cfg.reward_names))

    def run() -> None:
        with torch.no_grad():
            generate_images(
                model,
                text,
                prompts,
                cfg.data.image_size,
                positive=high,
                guidance=args.guidance,
                steps=args.steps,
                seed=0,
            )

    run()  # warm-up
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    per_batch = min(times)
    results = {
        "benchmark": "generate",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "experiment": args.experiment,
        "image_size": int(cfg.data.image_size),
        "steps": args.steps,
        "batch": args.batch,
        "guidance": args.guidance,
        "seconds_per_batch": round(per_batch, 3),
        "seconds_per_image": round(per_batch / args.batch, 4),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.json").write_text(json.dumps(results, indent=1) + "\n")
    m = results["machine"]
    (args.out / "generate.md").write_text(
        "# Generation time\n\n"
        f"Measured {results['date']} with `{results['command'].strip()}` (best of {args.repeats}).\n\n"
        f"Machine: {m['cpu']} ({m.get('cpu_kind', 'CPU kind not recorded')}), {m['cores']} cores "
        f"(torch threads {m['torch_threads']}, 1-minute load "
        f"{m['load_average_1m']}), torch {m['torch']}.\n\n"
        f"Model of experiment `{args.experiment}` at {results['image_size']} px, {args.steps} Euler steps, "
        f"guidance {args.guidance} (two branches in one batched forward), batch {args.batch}.\n\n"
        "| s/batch | s/image |\n|---:|---:|\n"
        f"| {results['seconds_per_batch']} | **{results['seconds_per_image']}** |\n"
    )
    print(
        f"{results['seconds_per_image']} s/image at batch {args.batch}, {args.steps} steps "
        f"-> {args.out / 'generate.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
