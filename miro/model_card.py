"""The model card (README.md) written into every export, so that an uploaded model describes itself.

The card is the Hugging Face Hub's format: a YAML header the Hub reads (library name, tags, license,
pipeline tag), then Markdown rendered from the export's own ``config.json``: the rewards and their bins,
the training data and steps, the sampling defaults and how to generate. ``miro-eval`` fills in the
evaluation section of the checkpoint it evaluated (between the two ``miro-eval`` markers), so the card
tracks the latest evaluation without rewriting the rest.

Nothing here imports :mod:`miro.pretrained` at module level: the export path calls into this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD = "README.md"
EVAL_START = "<!-- miro-eval:start -->"
EVAL_END = "<!-- miro-eval:end -->"
TAGS = [
    "miro", "text-to-image", "multi-reward", "reward-conditioning", "flow-matching", "diffusion-transformer",
]
NOT_EVALUATED = (
    "Not evaluated yet: `miro-eval --checkpoint <this model> --out <dir>` writes its results here."
)


def model_display_name(model_dir: str | Path) -> str:
    """Training exports to ``<run>/export``: the run's directory names the model."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "export" else path.name


def render_card(config: Mapping[str, Any], name: str, evaluation: str | None = None) -> str:
    """The whole card of an export with ``config`` (its config.json), named ``name``."""
    rewards = [str(r) for r in config.get("reward_names", [])]
    header = [
        "---", "library_name: miro", "tags:", *(f"- {t}" for t in TAGS),
        f"license: {config.get('license', 'apache-2.0')}", "pipeline_tag: text-to-image", "---", "",
    ]
    intro = [
        f"# {name}", "",
        "A text-to-image flow-matching diffusion transformer trained with MIRO (multi-reward conditioned "
        "pretraining): besides the caption, the model is conditioned on one quantile level per reward, so "
        "every reward is a knob from 0 (its lowest bin in the training data) to 10 (its top bin).", "",
    ]
    sections = [
        _model_section(config), _rewards_section(config, rewards), _training_section(config),
        _sampling_section(config), _usage_section(rewards),
        ["## Evaluation", "", EVAL_START, evaluation.strip() if evaluation else NOT_EVALUATED, EVAL_END, ""],
    ]
    return "\n".join(header + intro + [line for section in sections for line in section])


def write_model_card(model_dir: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``README.md`` into an export (atomically); ``config`` defaults to its config.json."""
    from miro.data.shards import write_bytes_atomic

    root = Path(model_dir)
    if config is None:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    path = root / CARD
    write_bytes_atomic(path, render_card(config, model_display_name(root)).encode("utf-8"))
    return path


def update_card_evaluation(model_dir: str | Path, evaluation: str) -> Path:
    """Replace the evaluation section of an export's card (writing the card first when it has none)."""
    from miro.data.shards import write_bytes_atomic

    path = Path(model_dir) / CARD
    if not path.is_file() or EVAL_START not in path.read_text(encoding="utf-8"):
        write_model_card(model_dir)
    text = path.read_text(encoding="utf-8")
    before, rest = text.split(EVAL_START, 1)
    after = rest.split(EVAL_END, 1)[1] if EVAL_END in rest else "\n"
    write_bytes_atomic(path, f"{before}{EVAL_START}\n{evaluation.strip()}\n{EVAL_END}{after}".encode())
    return path


def evaluation_section(res: Any) -> str:
    """The card's evaluation section from ``miro-eval``'s results (an ``EvalResults``): the benchmark and
    the mean rewards tables of its report, one heading level down."""
    from miro.eval.report import _benchmark_table, _rewards_table

    sampling = ", ".join(f"{k} {v}" for k, v in res.sampling.items())
    lines = [f"Measured by `miro-eval` on {res.images_generated} generated images ({sampling}).", ""]
    for line in [*_benchmark_table(res), *_rewards_table(res)]:
        lines.append("#" + line if line.startswith("## ") else line)
    return "\n".join(lines)


def _model_section(config: Mapping[str, Any]) -> list[str]:
    model = config.get("model") or {}
    keys = ("hidden_size", "depth", "num_heads", "patch_size", "in_channels", "unet_channels")
    arch = ", ".join(f"{k} {model[k]}" for k in keys if k in model)
    text = config.get("text_encoder") or {}
    vae = config.get("vae")
    space = f"latent space (VAE `{vae.get('_target_', vae)}`)" if isinstance(vae, dict) else "pixel space"
    return [
        "## Model", "",
        f"- format: `{config.get('format')}`: `model.safetensors` (weights) and `config.json`",
        f"- images: {config.get('image_size')} px, {space}",
        f"- DiT: {arch or 'see config.json'}",
        f"- text encoder: `{text.get('_target_', 'see config.json')}`", "",
    ]


def _rewards_section(config: Mapping[str, Any], rewards: list[str]) -> list[str]:
    if not rewards:
        return ["## Rewards", "", "This model was trained without reward conditioning.", ""]
    bins = config.get("bins") or {}
    per_reward = bins.get("rewards", {})
    lines = [
        "## Rewards and their bins", "",
        "Target t (0-10) conditions on the quantile level t/10 of the reward's training distribution; the "
        "edges are the raw reward scores between levels.", "",
        "| reward | levels | min | bin edges | max |", "|---|---|---|---|---|",
    ]
    for name in rewards:
        b = per_reward.get(name)
        if b is None:
            lines.append(f"| {name} | n/a | | | |")
            continue
        edges = ", ".join(f"{e:.4g}" for e in b.get("edges", []))
        lines.append(f"| {name} | {b.get('n_levels', len(b.get('edges', [])) + 1)} | {_num(b.get('min'))} "
                     f"| {edges} | {_num(b.get('max'))} |")
    return [*lines, ""]


def _training_section(config: Mapping[str, Any]) -> list[str]:
    training = config.get("training") or {}
    bins = config.get("bins") or {}
    lines = ["## Training", ""]
    if "global_step" in training:
        lines.append(f"- optimiser steps: {training['global_step']}")
    if config.get("source"):
        lines.append(f"- fine-tuned (GRPO) from: `{config['source']}`")
    if bins:
        shards = bins.get("shards", [])
        shown = ", ".join(f"`{s}`" for s in shards[:4])
        shown += f" and {len(shards) - 4} more" if len(shards) > 4 else ""
        data = f"- data: {bins.get('n_records', '?')} scored samples, binned into "
        data += f"{bins.get('n_bins', '?')} levels per reward"
        lines.append(data + (f", from the shards {shown}" if shards else ""))
    if len(lines) == 2:
        lines.append("- not recorded in this export")
    return [*lines, ""]


def _sampling_section(config: Mapping[str, Any]) -> list[str]:
    sampling = config.get("sampling") or {}
    lines = ["## Sampling defaults", ""]
    lines += [f"- {k}: {v}" for k, v in sampling.items()] or ["- the library's (none recorded)"]
    return [*lines, ""]


def _usage_section(rewards: list[str]) -> list[str]:
    spec = ",".join(f"{r}=10" for r in rewards)
    targets = ", ".join(f'"{r}": 10' for r in rewards)
    rewards_arg = f" --rewards {spec}" if rewards else ""
    return [
        "## How to generate", "",
        "With the MIRO package installed (`pip install .` in its repository; `.[app]` for the web app), by "
        "local path or by Hub repo id (`owner/name`, `owner/name@revision`):", "",
        "```bash",
        f'miro-generate --checkpoint OWNER/NAME --prompt "a red circle"{rewards_arg} --n 4 --out samples',
        "miro-app --checkpoint OWNER/NAME   # a slider per reward in the browser",
        "```", "",
        "```python",
        "from miro.pipeline import MiroPipeline",
        "",
        'pipe = MiroPipeline.from_pretrained("OWNER/NAME")',
        f'images = pipe(["a red circle"], rewards={{{targets}}}, seed=0)',
        "```", "",
    ]


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else ""


def record_evaluation(model_dir: str | Path, res: Any, out_dir: str | Path) -> list[Path]:
    """What ``miro-eval`` does with a card: write the evaluation section next to its report
    (``model_card_evaluation.md``, always), and into the evaluated model's own card when that model is
    a local directory. A snapshot in the Hugging Face Hub cache is left as the Hub served it (its files
    are links into the cache's shared blobs); its section is only written next to the report."""
    from miro.data.shards import write_bytes_atomic

    section = evaluation_section(res)
    side = Path(out_dir) / "model_card_evaluation.md"
    write_bytes_atomic(side, f"## Evaluation\n\n{section}\n".encode())
    written = [side]
    if not _in_hub_cache(Path(model_dir)):
        try:
            written.append(update_card_evaluation(model_dir, section))
        except OSError:  # a read-only model directory: the section next to the report is what there is
            pass
    return written


def _in_hub_cache(path: Path) -> bool:
    from huggingface_hub import constants

    return path.resolve().is_relative_to(Path(constants.HF_HUB_CACHE).resolve())
