"""The exported model format shared by training, generation and GRPO.

An export is a directory with two files:

* ``model.safetensors``: EMA weights of the DiT (``model.*``) and, when the text encoder was trained,
  of the text encoder (``text_encoder.*``). safetensors, so opening someone else's model never runs
  their code.
* ``config.json``: everything needed to rebuild the model without the training config: the DiT config,
  the text encoder's Hydra config, the VAE's (or null for pixel space), the reward names with their
  fitted bins, and sampling defaults.

Loading never hands ``config.json`` to Hydra's ``instantiate``: its component entries are matched
against the closed registry in :mod:`miro.components` (known classes, checked arguments), so a crafted
file cannot name a function to call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from miro.components import TEXT_ENCODERS, VAES, build_component, build_model
from miro.data.bins import RewardBins
from miro.data.shards import write_bytes_atomic
from miro.model_card import write_model_card

FORMAT = "miro-pretrained/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
REQUIRED_FIELDS = ("model", "text_encoder", "reward_names", "image_size")


def periodic_export(exports_dir: str | Path, step: int) -> Path:
    """Where the export written during training at optimiser step ``step`` goes. Training writes it and
    the evidence study reads it, so the name is defined once, here."""
    return Path(exports_dir) / f"step{step:07d}"


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible model directory; the message names the path and field."""


@dataclass
class Pretrained:
    model: nn.Module
    text_encoder: nn.Module
    vae: nn.Module | None
    reward_names: list[str]
    bins: RewardBins | None
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def sampling(self) -> dict[str, Any]:
        return dict(self.config.get("sampling", {}))

    def to(self, device: str | torch.device) -> Pretrained:
        self.model.to(device)
        self.text_encoder.to(device)
        if self.vae is not None:
            self.vae.to(device)
        return self


def save_pretrained(
    out_dir: str | Path,
    model: nn.Module,
    text_encoder: nn.Module,
    text_encoder_config: dict[str, Any],
    reward_names: list[str],
    bins: RewardBins | None,
    image_size: int,
    sampling: dict[str, Any],
    vae_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` then ``config.json`` into ``out_dir`` (each atomically); returns the dir.

    The text encoder's weights are stored only when it was trained (``trainable``): a frozen
    pretrained encoder is rebuilt from ``text_encoder_config`` instead of copied into every export.
    """
    model_rewards = list(getattr(model, "reward_names", reward_names))
    if list(reward_names) != model_rewards:
        raise ValueError(f"reward_names {list(reward_names)} differ from the model's {model_rewards}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if getattr(text_encoder, "trainable", False):
        tensors |= {
            f"text_encoder.{k}": v.detach().cpu().contiguous() for k, v in text_encoder.state_dict().items()
        }
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / WEIGHTS)
    config = {
        "format": FORMAT,
        "model": model.to_config(),
        "text_encoder": text_encoder_config,
        "vae": vae_config,
        "reward_names": list(reward_names),
        "bins": bins.to_json() if bins is not None else None,
        "image_size": int(image_size),
        "sampling": dict(sampling),
        **(extra or {}),
    }
    write_bytes_atomic(out / CONFIG, json.dumps(config, indent=2).encode())
    write_model_card(out, config)
    return out


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu", revision: str | None = None
) -> Pretrained:
    """Rebuild an exported model from a directory or a Hugging Face Hub repo id (``owner/name``, with
    ``revision`` or ``owner/name@revision``; :func:`miro.hub.resolve_model_dir`); every way a directory
    can be wrong is a :class:`CheckpointError` naming the file and the field, so a CLI can show it as one
    line."""
    from miro.hub import resolve_model_dir

    root = resolve_model_dir(path, revision)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such model directory (training exports one to <run dir>/export)")
    missing = [name for name in (CONFIG, WEIGHTS) if not (root / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{root} is not a MIRO model directory: {' and '.join(missing)} missing "
            "(training exports both to <run dir>/export)"
        )
    config = _read_config(root / CONFIG)
    try:
        tensors = load_file(str(root / WEIGHTS))
    except Exception as err:  # safetensors raises its own (untyped) error for a damaged file
        raise CheckpointError(f"{root / WEIGHTS}: not a readable safetensors file ({err})") from None
    model = _build(root, "model", lambda: build_model("model", config["model"]))
    _load_prefixed(model, tensors, "model.", root)
    reward_names = [str(n) for n in config["reward_names"]]
    if reward_names != list(model.reward_names):
        raise CheckpointError(
            f"{root / CONFIG}: reward_names {reward_names} differ from the model's {list(model.reward_names)}"
        )
    text_encoder = _build(
        root, "text_encoder", lambda: build_component(TEXT_ENCODERS, "text_encoder", config["text_encoder"])
    )
    if any(k.startswith("text_encoder.") for k in tensors):
        _load_prefixed(text_encoder, tensors, "text_encoder.", root)
    vae = None
    if config.get("vae") is not None:
        vae = _build(root, "vae", lambda: build_component(VAES, "vae", config["vae"]))
    bins = None
    if config.get("bins"):
        bins = _build(root, "bins", lambda: RewardBins.from_json(config["bins"], f"{root / CONFIG}: bins"))
    out = Pretrained(model.eval(), text_encoder.eval(), vae, reward_names, bins, config, root)
    return out.to(device)


def read_config(path: str | Path, revision: str | None = None) -> dict[str, Any]:
    """A model directory's (or Hub repo id's, resolved as :func:`load_pretrained` does) checked
    config.json without building anything: what a command needs to validate its request (reward names)
    before it pays for loading the model."""
    from miro.hub import resolve_model_dir

    root = resolve_model_dir(path, revision)
    root = root.parent if root.is_file() else root
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such model directory (training exports one to <run dir>/export)")
    if not (root / CONFIG).is_file():
        raise CheckpointError(f"{root} is not a MIRO model directory: {CONFIG} missing")
    return _read_config(root / CONFIG)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    absent = [key for key in REQUIRED_FIELDS if key not in config]
    if absent:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(absent)}")
    if not isinstance(config["reward_names"], list):
        raise CheckpointError(f"{path}: reward_names must be a list, got {config['reward_names']!r}")
    try:
        config["image_size"] = int(config["image_size"])
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{path}: image_size must be an integer, got {config['image_size']!r}"
        ) from None
    return config


T = TypeVar("T")


def _build(root: Path, field_name: str, factory: Callable[[], T]) -> T:
    """Run ``factory``; any failure becomes a one-line CheckpointError naming the config field."""
    try:
        return factory()
    except CheckpointError:
        raise
    except Exception as err:  # user-supplied configs can fail in any constructor
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"{root / CONFIG}: cannot build {field_name!r} ({reason})") from None


def _load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, root: Path) -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    problem = state_mismatch(module, state)
    if problem:
        what = prefix.rstrip(".")
        raise CheckpointError(f"{root / WEIGHTS}: {what} weights do not match {CONFIG}: {problem}")
    module.load_state_dict(state, strict=True)


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor], show: int = 2) -> str | None:
    """One line saying how ``state`` differs from ``module``'s parameters (None when it fits).

    torch's own message spans many lines and starts with a header that says nothing; this names the
    counts and the first few keys, which is what tells "another architecture" from "a damaged file".
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {what} ({', '.join(items[:show])}{', ...' if len(items) > show else ''})"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        if items
    ]
    return "; ".join(parts) or None


def file_hash(path: str | Path, n_bytes: int = 12) -> str:
    """Short content hash of the weights file, recorded next to generated images."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[: 2 * n_bytes]
