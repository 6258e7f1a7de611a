"""GPU training and generation speed of the cc12m networks, next to the reference ``miro-t2i`` network.

    python bench/bench_train_gpu.py [--sizes S B L XL] [--batch 64] [--compile off on]
                                    [--reference-dir .bench/miro_t2i] [--steps 30] [--warmup 10]

What is timed (random weights and inputs, no data loading: the step the GPU does once the cached
batch is on it): a training step at 256 px images = 4 x 32 x 32 SDXL-VAE latents, FLAN-T5-XL-sized
text features (77 tokens x 2048, all real: the longest caption a batch can hold, as the reference pads
every caption to 77) and seven reward levels, in bf16 autocast: forward, flow-matching loss,
backward, fused AdamW step and the EMA update; then 50-step guided Euler sampling (both guidance
branches in one batch of 2B) at batch 1 and 16, network only (no FLAN-T5, no VAE decode).

FLOPs, counted two ways:

* **Analytically** (:func:`miro.models.dit.flops_per_image`): every matrix product of one forward pass
  of one image, 2 FLOPs per multiply-add. With N = (32 / patch)^2 image tokens, M = 77 text + 7 reward
  tokens, width d and MLP width 4d, a DiT block costs 2 (4 N d^2 [self-attn q, k, v, out]
  + 2 N^2 d [scores, mixing] + 2 N d^2 + 2 M d^2 [cross-attn q, out; k, v] + 2 N M d
  + 2 N d 4d [MLP] + 6 d^2 [adaLN]); outside the blocks: patch embedding, text projection, timestep,
  reward and pooled-text MLPs, final layer.
  Element-wise work (norms, activations, softmax) is left out, as is customary (< 1%).
* **By PyTorch** (``torch.utils.flop_counter.FlopCounterMode``) on one forward pass; this is how the
  reference network, whose code is not ours, is counted. For the DiT the two counts agree exactly
  (``tests/test_bench_flops.py``).

A training step costs 3 forward passes' FLOPs (backward = 2x forward for every matrix product); the
reference recipe adds a forward over the whole batch for latent self-conditioning (its output is kept
for 90% of samples, but the pass runs for all), counted too (:func:`miro.models.dit.training_flops`).
MFU = counted training FLOPs x images/s / peak, with the peak the H100 SXM's dense bf16 989
TFLOP/s (``--peak-tflops`` for other GPUs). Gradient checkpointing would not change it (recomputation
is not model FLOPs); it is off here.

The reference network (PyPI ``miro-t2i``, import name also ``miro``) must be installed into a separate
directory, never into this environment: ``pip install --no-deps --target .bench/miro_t2i miro-t2i``
(it needs ``einops``). It runs in a child process that puts that directory first on ``sys.path``.
Its sizes are the released checkpoint's (RIN: 4 blocks x 4 processing layers, 256 latents x 1024,
data width 256, patch 2, 16 text registers, latent self-conditioning: :data:`REFERENCE_NETWORK`).

Results: ``bench/results/train_gpu.{json,md}``, with the GPU's name. Refuses to run without CUDA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_TFLOPS = 989.0  # H100 SXM, dense bf16
LATENT = (4, 32, 32)  # SDXL-VAE latents of a 256 px image
TEXT_LEN, TEXT_DIM = 77, 2048  # FLAN-T5-XL, max length 77
REWARDS = ["aesthetic", "hps", "imagereward", "pick", "vqa", "clip", "sci"]
GUIDANCE, SAMPLING_STEPS = 7.0, 50
REFERENCE_KEYS = [
    "clip_score",
    "aesthetic_score",
    "image_reward_score",
    "pick_a_score_score",
    "hpsv2_score",
    "vqa_score",
    "sciscore_score",
]
REFERENCE_NETWORK: dict[str, Any] = dict(
    data_size=32,
    data_dim=256,
    num_input_channels=4,
    num_latents=256,
    latents_dim=1024,
    label_dim=TEXT_DIM,
    num_processing_layers=4,
    num_blocks=4,
    patch_size=2,
    num_cond_tokens=7 + 16 + TEXT_LEN,
    read_write_heads=16,
    compute_heads=16,
    latent_mlp_multiplier=4,
    data_mlp_multiplier=4,
    use_cond_rin_block=True,
    concat_cond_token_to_latents=False,
    use_self_conditioning=True,
    num_text_registers=16,
    coherence_keys=REFERENCE_KEYS,
)
REFERENCE_SELF_COND_RATE = 0.9


# --------------------------------------------------------------------------------------------------
# FLOPs


def counted_flops(fn: Callable[[], Any]) -> float:
    """FLOPs PyTorch counts while running ``fn`` (matrix products, convolutions, attention).

    Attention runs in SDPA's math backend here: it decomposes into matrix products the counter sees on
    every device, whereas fused CPU kernels are not counted at all.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def text_inputs(
    batch: int, device: torch.device, text_len: int = TEXT_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, text_len, TEXT_DIM, device=device), torch.ones(
        batch, text_len, dtype=torch.bool, device=device
    )


def ema_step(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float = 0.9999) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1.0 - decay)


# --------------------------------------------------------------------------------------------------
# This project's DiT


def build_dit(size: str, device: torch.device, text_len: int = TEXT_LEN, **overrides: Any) -> nn.Module:
    from miro.models.dit import MiroDiT

    kwargs: dict[str, Any] = dict(
        image_size=LATENT[1], in_channels=LATENT[0], patch_size=2, text_dim=TEXT_DIM, reward_names=REWARDS
    )
    return MiroDiT.from_size(size, **{**kwargs, **overrides}).to(device)


def bench_dit_train(
    size: str, batch: int, compile: bool, steps: int, warmup: int, device: torch.device, **overrides: Any
) -> dict[str, Any]:
    from miro.flow.path import flow_loss, interpolate, sample_timesteps

    reset_memory(device)
    model = build_dit(size, device, **overrides).train()
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    x0 = torch.randn(batch, *LATENT, device=device)
    tokens, mask = text_inputs(batch, device)
    rewards = torch.rand(batch, len(REWARDS), device=device)

    def step() -> None:
        t = sample_timesteps(batch, 0.0, 1.0, 1.0, device=device)
        noise = torch.randn_like(x0)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            v = forward(interpolate(x0, noise, t), t, tokens, mask, rewards, None)
        flow_loss(v.float(), x0, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_step(ema, params)

    seconds = seconds_per_call(step, warmup, steps, device)
    model.eval()
    one = (x0[:1], torch.full((1,), 0.5, device=device), tokens[:1], mask[:1], rewards[:1], None)
    fwd = counted_flops(lambda: model(*one))
    from miro.models.dit import flops_per_image

    return _train_result(
        f"DiT-{size}",
        sum(p.numel() for p in params),
        batch,
        compile,
        seconds,
        fwd,
        3 * fwd,
        device,
        analytic_forward_gflop=round(flops_per_image(model, TEXT_LEN) / 1e9, 2),
    )


@torch.no_grad()
def bench_dit_generate(size: str, batch: int, compile: bool, device: torch.device, repeats: int = 3) -> dict:
    from miro.flow.guidance import guided_velocity_fn
    from miro.flow.sampling import sample_euler

    model = build_dit(size, device).eval()
    forward = torch.compile(model) if compile else model
    tokens, mask = text_inputs(batch, device)
    high = torch.ones(batch, len(REWARDS), device=device)
    velocity = guided_velocity_fn(forward, tokens, mask, high, scale=GUIDANCE)
    noise = torch.randn(batch, *LATENT, device=device)

    def generate() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            sample_euler(velocity, noise, steps=SAMPLING_STEPS)

    seconds = seconds_per_call(generate, 1, repeats, device)
    return _generate_result(f"DiT-{size}", batch, compile, seconds)


# --------------------------------------------------------------------------------------------------
# The reference network (runs in a child process: its package is also called ``miro``)


def import_reference(target_dir: Path) -> Any:
    """The reference package's modules, imported from ``target_dir`` instead of this project's ``miro``."""
    target = str(Path(target_dir).resolve())
    if not (Path(target) / "miro" / "models" / "networks" / "rin.py").is_file():
        raise FileNotFoundError(
            f"no miro-t2i package in {target}: pip install --no-deps --target {target} miro-t2i"
        )
    for name in [m for m in sys.modules if m == "miro" or m.startswith("miro.")]:
        del sys.modules[name]
    sys.path.insert(0, target)
    import miro.models.loss as loss
    import miro.models.networks.rin as rin
    import miro.models.preconditioning as precond
    import miro.models.sampler as sampler
    import miro.models.scheduler as scheduler

    if not Path(rin.__file__).resolve().is_relative_to(target):
        raise ImportError(f"imported the reference network from {rin.__file__}, not from {target}")
    return argparse.Namespace(rin=rin, precond=precond, loss=loss, sampler=sampler, scheduler=scheduler)


def reference_batch(
    ref_batch: int, device: torch.device, value: float | None = None
) -> dict[str, torch.Tensor]:
    tokens, mask = text_inputs(ref_batch, device)
    batch = {"text_tokens_embeddings": tokens, "text_tokens_mask": mask}
    for key in REFERENCE_KEYS:
        levels = torch.rand(ref_batch, device=device) if value is None else torch.full((ref_batch,), value)
        batch[f"{key}_coherence"] = levels.to(device)
    return batch


def bench_reference_train(
    ref: Any,
    batch: int,
    compile: bool,
    steps: int,
    warmup: int,
    device: torch.device,
    network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    reset_memory(device)
    config = network or REFERENCE_NETWORK
    net = ref.rin.CADRINTextCond(**config).to(device).train()
    precond = ref.precond.FlowPrecond(num_latents=config["num_latents"], latents_dim=config["latents_dim"])
    precond = precond.to(device)
    params = [p for p in [*net.parameters(), *precond.parameters()] if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    forward = torch.compile(net) if compile else net
    uncond = torch.zeros(TEXT_LEN, TEXT_DIM, device=device)
    loss_fn = ref.loss.FlowMatchingLoss(
        ref.scheduler.LinearScheduler(),
        uncond,
        self_cond_rate=REFERENCE_SELF_COND_RATE,
        do_gradnorm_reweighting=True,
    )
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    side = config["data_size"]
    x0 = torch.randn(batch, config["num_input_channels"], side, side, device=device)
    fixed = reference_batch(batch, device)

    def step() -> None:
        data = {**fixed, "x_0": x0}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = loss_fn(precond, forward, None, data, 0)
        loss.float().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_step(ema, params)

    seconds = seconds_per_call(step, warmup, steps, device)
    net.eval()
    one = {**reference_batch(1, device), "y": x0[:1], "gamma": torch.full((1,), 0.5, device=device)}
    fwd = counted_flops(lambda: precond(net, dict(one)))
    from miro.models.dit import training_flops

    train = training_flops(fwd, REFERENCE_SELF_COND_RATE)
    n_params = sum(p.numel() for p in net.parameters()) + sum(p.numel() for p in precond.parameters())
    return _train_result("miro-t2i RIN (reference)", n_params, batch, compile, seconds, fwd, train, device)


@torch.no_grad()
def bench_reference_generate(
    ref: Any, batch: int, device: torch.device, repeats: int = 3, network: dict[str, Any] | None = None
) -> dict[str, Any]:
    config = network or REFERENCE_NETWORK
    net = ref.rin.CADRINTextCond(**config).to(device).eval()
    precond = ref.precond.FlowPrecond(num_latents=config["num_latents"], latents_dim=config["latents_dim"])
    precond = precond.to(device).eval()
    keys = [f"{k}_coherence" for k in REFERENCE_KEYS]
    cond = reference_batch(batch, device, value=1.0)
    side = config["data_size"]

    def generate() -> None:  # as the reference's MiroPipeline.__call__, minus text encoding and VAE
        data = {
            "y": torch.randn(batch, config["num_input_channels"], side, side, device=device),
            "previous_latents": None,
            **cond,
        }
        ref.sampler.flow_euler_sampler(
            lambda b: precond(net, b),
            data,
            num_steps=SAMPLING_STEPS,
            scheduler=ref.scheduler.LinearScheduler(),
            conditioning_keys=["text_tokens"],
            uncond_tokens={  # the released pipeline's negative prompt: one embedding token
                "text_tokens_embeddings": torch.zeros(batch, 1, TEXT_DIM, device=device),
                "text_tokens_mask": torch.ones(batch, 1, dtype=torch.bool, device=device),
            },
            cfg_rate=GUIDANCE,
            coherence_keys=keys,
            coherence_values=dict.fromkeys(keys, 1.0),
            uncoherence_values=dict.fromkeys(keys, 0.0),
            sigma_data=0.5,
            data_mean=0.5,
            data_std=0.5,
            sampling_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        )

    seconds = seconds_per_call(generate, 1, repeats, device)
    return _generate_result("miro-t2i RIN (reference)", batch, False, seconds)


# --------------------------------------------------------------------------------------------------
# Results


def _train_result(
    name: str,
    n_params: int,
    batch: int,
    compile: bool,
    seconds: float,
    fwd: float,
    train: float,
    device: torch.device,
    **extra: Any,
) -> dict[str, Any]:
    images_s = batch / seconds
    return {
        "network": name,
        "parameters_m": round(n_params / 1e6, 1),
        "batch_size": batch,
        "compile": compile,
        "seconds_per_step": round(seconds, 4),
        "samples_per_s": round(images_s, 1),
        "forward_gflop_per_image": round(fwd / 1e9, 2),
        "train_gflop_per_image": round(train / 1e9, 2),
        "achieved_tflops": round(train * images_s / 1e12, 1),
        "peak_memory_gib": peak_memory_gib(device),
        **extra,
    }


def _generate_result(name: str, batch: int, compile: bool, seconds: float) -> dict[str, Any]:
    return {
        "network": name,
        "batch_size": batch,
        "compile": compile,
        "steps": SAMPLING_STEPS,
        "guidance": GUIDANCE,
        "seconds_per_batch": round(seconds, 3),
        "seconds_per_image": round(seconds / batch, 4),
    }


def with_mfu(rows: list[dict[str, Any]], peak_tflops: float) -> list[dict[str, Any]]:
    return [{**r, "mfu_percent": round(100 * r["achieved_tflops"] / peak_tflops, 1)} for r in rows]


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# GPU training and generation speed (cc12m networks)\n",
        f"Measured {r['date']} with `{r['command']}` on **{m.get('gpu', '?')}** (torch {m['torch']}).",
        f"Training: 4x32x32 latents, {TEXT_LEN} text tokens x {TEXT_DIM}, 7 rewards, bf16 autocast, "
        f"fused AdamW, EMA; MFU against {r['peak_tflops']} TFLOP/s. FLOP counting: the docstring of "
        "bench/bench_train_gpu.py.\n",
        "| network | params (M) | batch | compile | samples/s | GFLOP/img (train) | TFLOP/s | MFU % "
        "| peak GiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for t in r["train"]:
        if "error" in t:
            lines.append(
                f"| {t['network']} | | {t['batch_size']} | {t['compile']} | error: {t['error']} |||||"
            )
            continue
        cells = [
            t["network"], t["parameters_m"], t["batch_size"], t["compile"], t["samples_per_s"],
            t["train_gflop_per_image"], t["achieved_tflops"], t["mfu_percent"], t["peak_memory_gib"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        f"\nGeneration: {SAMPLING_STEPS} Euler steps, guidance {GUIDANCE} (both branches in one batch), "
        "network only.\n",
        "| network | batch | compile | s / batch | s / image |",
        "|---|---:|---|---:|---:|",
    ]
    for g in r["generate"]:
        if "error" in g:
            lines.append(f"| {g['network']} | {g['batch_size']} | {g['compile']} | error: {g['error']} | |")
            continue
        lines.append(
            f"| {g['network']} | {g['batch_size']} | {g['compile']} | {g['seconds_per_batch']} "
            f"| {g['seconds_per_image']} |"
        )
    return "\n".join(lines) + "\n"


def _guarded(fn: Callable[[], dict[str, Any]], **label: Any) -> dict[str, Any]:
    """One configuration's result, or its error: an out-of-memory size must not lose the others."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - recorded in the results, next to the configuration
        torch.cuda.empty_cache()
        return {**label, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def run_reference(args: argparse.Namespace, device: torch.device) -> dict[str, list[dict[str, Any]]]:
    ref = import_reference(args.reference_dir)
    name = "miro-t2i RIN (reference)"
    train = [
        _guarded(
            lambda c=c: bench_reference_train(ref, args.batch, c, args.steps, args.warmup, device),
            network=name,
            batch_size=args.batch,
            compile=c,
        )
        for c in args.compile
    ]
    generate = [
        _guarded(
            lambda b=b: bench_reference_generate(ref, b, device), network=name, batch_size=b, compile=False
        )
        for b in args.gen_batch
    ]
    return {"train": train, "generate": generate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["S", "B", "L", "XL"])
    parser.add_argument("--batch", type=int, default=64, help="training batch per GPU")
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--gen-batch", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS)
    parser.add_argument("--reference-dir", type=Path, default=None, help="pip --target dir of miro-t2i")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--reference-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.compile = [c == "on" for c in args.compile]
    if not torch.cuda.is_available():
        print(
            "error: bench_train_gpu.py measures GPU speed and needs CUDA, which this machine does not have.",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.reference_worker is not None:  # the child process: the reference network only
        args.reference_worker.write_text(json.dumps(run_reference(args, device)))
        return 0

    from miro.utils.machine import machine

    train, generate = [], []
    for size in args.sizes:
        for c in args.compile:
            train.append(
                _guarded(
                    lambda s=size, c=c: bench_dit_train(s, args.batch, c, args.steps, args.warmup, device),
                    network=f"DiT-{size}",
                    batch_size=args.batch,
                    compile=c,
                )
            )
            print(json.dumps(train[-1]), flush=True)
        for b in args.gen_batch:
            generate.append(
                _guarded(
                    lambda s=size, b=b: bench_dit_generate(s, b, args.compile[-1], device),
                    network=f"DiT-{size}",
                    batch_size=b,
                    compile=args.compile[-1],
                )
            )
            print(json.dumps(generate[-1]), flush=True)
    if args.reference_dir is not None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "reference.json"
            cmd = [
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
                "--reference-worker",
                str(out),
            ]
            proc = subprocess.run(cmd, text=True, capture_output=True)
            if proc.returncode == 0:
                ref = json.loads(out.read_text())
                train += ref["train"]
                generate += ref["generate"]
            else:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                train.append(
                    {
                        "network": "miro-t2i RIN (reference)",
                        "batch_size": args.batch,
                        "compile": None,
                        "error": tail,
                    }
                )
    results = {
        "benchmark": "train_gpu",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/bench_train_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "peak_tflops": args.peak_tflops,
        "train": with_mfu([t for t in train if "error" not in t], args.peak_tflops)
        + [t for t in train if "error" in t],
        "generate": generate,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_gpu.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "train_gpu.md").write_text(markdown(results))
    print(f"-> {args.out / 'train_gpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
