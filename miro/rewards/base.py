"""The reward-model interface and registry.

Every reward, from a few lines of numpy to a multi-billion-parameter VQA model, is a
:class:`RewardModel`: it takes a batch of RGB images and their captions and returns one float32 score
per image. Scoring, binning, training, guidance and GRPO only ever see this interface, so a user's own
reward plugs in by subclassing it and either registering it (``@register_reward``) or pointing a
Hydra config at it (``conf/rewards/NAME.yaml`` with a ``_target_``).

Rewards are known by name from two places: the core's own modules (below) and the modules named by the
``_target_`` of every file in ``conf/rewards/``, the user's configuration. The second is how a plug-in's
reward (the shapes world's ``alignment``, ``conf/rewards/alignment.yaml``) is found without the core
importing it; a model directory never names a reward module (it lists reward names only).

Scores are *raw*: any increasing rescaling is irrelevant, because bins are quantiles fitted on data.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

ImageLike = Image.Image | np.ndarray | torch.Tensor

_REGISTRY: dict[str, type[RewardModel]] = {}
_ALIASES: dict[str, str] = {}
# Modules that define built-in rewards; imported lazily so `import miro` stays cheap.
# Each imports its heavy dependency (open_clip, transformers) only when a model is built.
_BUILTIN_MODULES = tuple(
    f"miro.rewards.{m}"
    for m in ("offline", "aesthetic", "hps", "imagereward", "pick", "vqa", "jina_clip", "sci")
)


class UnknownRewardError(KeyError):
    """An unknown reward name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RewardModel(ABC):
    """Scores a batch of images against their captions.

    Subclasses set ``name`` and ``version`` (bump the version whenever scores would change, so bins
    fitted on old scores are recognisably stale) and implement :meth:`score_batch`.
    """

    name: str = ""
    version: str = "0"
    aliases: tuple[str, ...] = ()
    needs_captions: bool = True

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @abstractmethod
    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Scores for ``images`` (uint8, shape [B, 3, H, W], RGB, on CPU) -> float32 [B] on CPU."""

    def to(self, device: str | torch.device) -> RewardModel:
        """Move the model; subclasses holding modules override this and call super()."""
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def score(self, images: Sequence[ImageLike] | torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Score any number of images in chunks of ``batch_size``; returns float32 [N] on CPU."""
        batch = to_uint8_batch(images) if not isinstance(images, torch.Tensor) else _check_uint8(images)
        if len(captions) != batch.shape[0]:
            raise ValueError(f"{self.name}: {batch.shape[0]} images but {len(captions)} captions")
        out = [
            self.score_batch(batch[i : i + self.batch_size], list(captions[i : i + self.batch_size]))
            .detach()
            .float()
            .cpu()
            .reshape(-1)
            for i in range(0, batch.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, device={self.device})"


def _check_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected uint8 images of shape [B, 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    return images.cpu()


def to_uint8_batch(images: Sequence[ImageLike]) -> torch.Tensor:
    """PIL images, HWC uint8 arrays or CHW uint8 tensors (all the same size) -> uint8 [B, 3, H, W]."""
    tensors = []
    for img in images:
        if isinstance(img, Image.Image):
            arr = np.asarray(img.convert("RGB"))
            tensors.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        elif isinstance(img, np.ndarray):
            tensors.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        elif isinstance(img, torch.Tensor):
            tensors.append(img)
        else:
            raise TypeError(f"unsupported image type {type(img).__name__}")
    if not tensors:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return _check_uint8(torch.stack(tensors))


def register_reward(cls: type[RewardModel]) -> type[RewardModel]:
    """Class decorator: make a reward available by its ``name`` and ``aliases``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def configured_reward_modules(rewards_dir: Path | None = None) -> list[str]:
    """Modules named by the ``_target_`` of the reward files in ``conf/rewards/`` (one reward per file,
    nested under its name; reward sets, which only list other files, name none), in file order."""
    if rewards_dir is None:
        from miro.config import CONF_DIR

        rewards_dir = CONF_DIR / "rewards"
    modules: list[str] = []
    for path in sorted(Path(rewards_dir).glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue  # reported where the file is composed (scoring), not while listing names
        for config in (data or {}).values() if isinstance(data, dict) else ():
            target = config.get("_target_") if isinstance(config, dict) else None
            if isinstance(target, str) and "." in target:
                modules.append(target.rpartition(".")[0])
    return list(dict.fromkeys(modules))


def _load_builtins() -> None:
    for module in (*_BUILTIN_MODULES, *configured_reward_modules()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a module not written yet must not hide the others
            if err.name != module:
                raise


def available_rewards() -> dict[str, tuple[str, ...]]:
    """Registered reward names -> their aliases."""
    _load_builtins()
    return {name: cls.aliases for name, cls in sorted(_REGISTRY.items())}


def registered_class(name: str) -> type[RewardModel]:
    """The class behind a reward name or alias, without instantiating (and so loading) it."""
    return _REGISTRY[resolve_name(name)]


def resolve_name(name: str) -> str:
    """Canonical reward name for a name or alias; a clear error listing valid names otherwise."""
    _load_builtins()
    key = name.strip().lower()
    if key in _REGISTRY:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    valid = ", ".join(f"{n} ({'/'.join(a)})" if a else n for n, a in available_rewards().items())
    raise UnknownRewardError(f"unknown reward {name!r}; valid rewards: {valid}")


def build_reward(spec: str | dict[str, Any] | Callable[..., RewardModel], **kwargs: Any) -> RewardModel:
    """A reward from a registered name/alias, a Hydra-style dict with ``_target_``, or a factory."""
    if isinstance(spec, str):
        return _REGISTRY[resolve_name(spec)](**kwargs)
    if callable(spec):
        return spec(**kwargs)
    spec = dict(spec)
    target = spec.pop("_target_", None)
    if target is None:
        name = spec.pop("name")
        return _REGISTRY[resolve_name(name)](**spec, **kwargs)
    module_name, _, attr = target.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UnknownRewardError(f"cannot import reward target {target!r}: {err}") from None
    return factory(**spec, **kwargs)
