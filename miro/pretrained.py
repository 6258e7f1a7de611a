"""The exported model format shared by training, generation and GRPO.

An export is a directory with two files:

* ``model.safetensors``: EMA weights of the DiT (``model.*``) and, when the text encoder was trained,
  of the text encoder (``text_encoder.*``). safetensors, so opening someone else's model never runs
  their code.
* ``config.json``: everything needed to rebuild the model without the training config: the DiT config,
  the text encoder's Hydra config, the VAE's (or null for pixel space), the reward names with their
  fitted bins, and sampling defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file
from torch import nn

from miro.data.bins import RewardBins
from miro.data.shards import write_bytes_atomic

FORMAT = "miro-pretrained/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if getattr(text_encoder, "trainable", False):
        tensors |= {f"text_encoder.{k}": v.detach().cpu().contiguous() for k, v in text_encoder.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / WEIGHTS)
    config = {
        "format": FORMAT,
        "model": model.to_config(),
        "text_encoder": text_encoder_config,
        "vae": vae_config,
        "reward_names": list(reward_names),
        "bins": bins.to_dict() if bins is not None else None,
        "image_size": int(image_size),
        "sampling": dict(sampling),
        **(extra or {}),
    }
    write_bytes_atomic(out / CONFIG, json.dumps(config, indent=2).encode())
    return out


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    from miro.models.dit import MiroDiT

    root = Path(path)
    if root.is_file():
        root = root.parent
    if not (root / CONFIG).exists() or not (root / WEIGHTS).exists():
        raise CheckpointError(
            f"{root} is not a MIRO model directory (it needs {CONFIG} and {WEIGHTS}; "
            "training writes them to <run dir>/export)"
        )
    try:
        config = json.loads((root / CONFIG).read_text())
    except ValueError as err:
        raise CheckpointError(f"{root / CONFIG}: not valid JSON ({err})") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{root / CONFIG}: format {config.get('format')!r}, expected {FORMAT!r}")
    tensors = load_file(str(root / WEIGHTS))
    model = MiroDiT.from_config(config["model"])
    _load_prefixed(model, tensors, "model.", root)
    text_encoder = instantiate(config["text_encoder"])
    if any(k.startswith("text_encoder.") for k in tensors):
        _load_prefixed(text_encoder, tensors, "text_encoder.", root)
    vae = instantiate(config["vae"]) if config.get("vae") else None
    bins = RewardBins.from_dict(config["bins"]) if config.get("bins") else None
    out = Pretrained(model.eval(), text_encoder.eval(), vae, list(config["reward_names"]), bins, config, root)
    return out.to(device)


def _load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, root: Path) -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{root / WEIGHTS}: weights do not match {CONFIG} ({first})") from None


def file_hash(path: str | Path, n_bytes: int = 12) -> str:
    """Short content hash of the weights file, recorded next to generated images."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[: 2 * n_bytes]
