"""Generation: captions + requested reward levels -> images, with multi-reward guidance.

The user-facing scale for reward targets is 0..10 (10 = the top bin). The model is conditioned on
values in [0, 1]; ``value = target / 10``. The negative branch defaults to every reward at 0, the same
caption in both branches (MIRO's setting); an empty or user negative prompt is an option.

A model's sampling defaults may instead name ``guided_rewards``: the negative branch then copies the
requested targets and sets only those rewards to 0, so guidance amplifies them alone and the other
rewards are steered by conditioning only. On the shapes demo the all-zero negative pushed colourfulness
far beyond anything in the training data (and overrode the caption's colours); guiding alignment alone
kept every reward inside the data's range (docs/demo.md).

MIRO's own sampling options, each a key of the model's ``sampling`` defaults and an argument here:
``push`` (positive all high, negative all high except one reward low), ``negative_prompt`` (null: the
same caption in both branches; ``""``: the empty prompt, the released MIRO pipeline's default),
``guidance_interval`` / ``guidance_ramp`` (:class:`miro.flow.guidance.GuidanceSchedule`). Targets snap
to the levels the model was trained on (:func:`snap_targets`).

A request is checked and completed in one place, :func:`resolve_request`, and sampled by one function,
:func:`generate_request` (its velocity: :func:`conditioned_velocity`): the pipeline, ``miro-generate``'s
check before loading, the web app, the training sample grid and GRPO's rollouts all go through them, so
"the model's defaults" and "push one reward" mean the same everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from miro.flow.guidance import GuidanceSchedule, SelfConditionedCalls, guided_velocity_fn, snap_to_level
from miro.flow.sampling import VelocityFn, sample_euler
from miro.pretrained import CheckpointError, Pretrained, load_pretrained
from miro.utils.hardware import PRECISION_CHOICES, keep_threads_fitting, resolve_precision

TARGET_MAX = 10.0
# Used only for an export whose config has no "sampling" section (training always writes one).
FALLBACK_SAMPLING: dict[str, Any] = {
    "guidance": 1.5, "steps": 25, "shift": 1.0, "guided_rewards": None,
    "negative_prompt": None, "guidance_interval": None, "guidance_ramp": "constant",
}
PRECISIONS = PRECISION_CHOICES  # auto: bf16 where the device computes it natively, else fp32
EncodeText = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


class _ModelDefault:
    """The type of :data:`MODEL_DEFAULT`: "use the model's setting", distinct from None (a real value)."""

    def __repr__(self) -> str:
        return "MODEL_DEFAULT"


# negative_prompt=None means "the same caption"; this sentinel means "whatever the model's sampling says".
MODEL_DEFAULT: Any = _ModelDefault()


def sampling_settings(
    exported: Mapping[str, Any], guidance: float | None = None, steps: int | None = None,
    shift: float | None = None,
) -> dict[str, Any]:
    """guidance, steps, shift and guided_rewards of one sampling run: what the caller set, else what the
    export recorded, else :data:`FALLBACK_SAMPLING`. Generation, evaluation and GRPO all resolve their
    settings here, so "the model's default" means the same thing everywhere."""
    out = FALLBACK_SAMPLING | dict(exported)
    for key, value, kind in (("guidance", guidance, float), ("steps", steps, int), ("shift", shift, float)):
        out[key] = kind(out[key] if value is None else value)
    return out


class RewardSpecError(ValueError):
    """A malformed or invalid ``--rewards`` specification; the message says which part and why."""


_ENTRY = re.compile(r"\s*([A-Za-z_][\w-]*)\s*=\s*([^=\s]+)\s*")


def parse_reward_spec(spec: str | Mapping[str, float] | None, valid_names: Sequence[str]) -> dict[str, float]:
    """``"aesthetic=9, pick=8"`` (or a mapping) -> {canonical name: target in [0, 10]}.

    Names may be aliases of registered rewards; each must be one of the model's ``valid_names`` and
    appear once. Every error is a :class:`RewardSpecError` with a one-line message quoting the bad part.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return {}
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, str):
        items = []
        for part in spec.split(","):
            match = _ENTRY.fullmatch(part)
            if match is None:
                raise RewardSpecError(
                    f"malformed reward target {part.strip()!r} in {spec!r}: expected NAME=VALUE pairs "
                    "separated by commas, e.g. aesthetic=9,pick=8"
                )
            items.append((match.group(1), match.group(2)))
    else:
        raise RewardSpecError(f"reward targets must be a string or a mapping, got {type(spec).__name__}")
    out: dict[str, float] = {}
    given_as: dict[str, str] = {}
    for name, raw in items:
        canonical = canonical_reward_name(name, valid_names)
        if canonical in out:
            raise RewardSpecError(
                f"reward {canonical!r} is given twice (as {given_as[canonical]!r} and {name!r})"
            )
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise RewardSpecError(f"reward target for {name!r} is not a number: {raw!r}") from None
        if not 0.0 <= value <= TARGET_MAX:  # also rejects NaN
            raise RewardSpecError(
                f"reward target for {name!r} must be between 0 and {TARGET_MAX:g}, got {raw}"
            )
        out[canonical], given_as[canonical] = value, name
    return out


def trained_levels(bins: Any, reward_names: Sequence[str]) -> dict[str, int]:
    """{reward: number of levels it was trained with} from a model's fitted bins (empty without bins)."""
    if bins is None:
        return {}
    return {n: int(bins.n_levels(n)) for n in reward_names if n in bins.names}


def snap_targets(targets: Mapping[str, float], levels: Mapping[str, int]) -> dict[str, float]:
    """Targets 0..10 -> the nearest target the model was trained on, 10 k / (B - 1) for a reward with B
    levels (``aesthetic=9`` with 64 levels -> 10 * 57 / 63 = 9.048). Rewards without known levels keep
    their target."""
    out = {}
    for name, target in targets.items():
        if name in levels:
            value, _ = snap_to_level(target / TARGET_MAX, levels[name])
            out[name] = value * TARGET_MAX
        else:
            out[name] = float(target)
    return out


def level_record(targets: Mapping[str, float], levels: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """What a per-image record says about each reward: the requested target, and the trained level and
    conditioning value actually used (level and levels are null for a reward without known bins)."""
    out: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        if name in levels:
            value, level = snap_to_level(target / TARGET_MAX, levels[name])
            out[name] = {"target": float(target), "level": level, "levels": int(levels[name]),
                         "value": value}
        else:
            out[name] = {"target": float(target), "level": None, "levels": None,
                         "value": target / TARGET_MAX}
    return out


def canonical_reward_name(name: str, valid_names: Sequence[str]) -> str:
    """A model reward name from a name or registered alias; an error listing the valid ones otherwise."""
    from miro.rewards.base import UnknownRewardError, resolve_name

    key = name.strip().lower()
    if key in valid_names:
        return key
    try:
        canonical = resolve_name(key)
    except UnknownRewardError:
        canonical = None
    if canonical in valid_names:
        return canonical
    valid = ", ".join(valid_names) or "none (a model without reward conditioning)"
    raise RewardSpecError(f"unknown reward {name!r} for this model; valid rewards: {valid}")


def negative_targets(
    reward_names: Sequence[str],
    positive: Mapping[str, float],
    negative_spec: Mapping[str, float] | str | None,
    guided_rewards: Sequence[str] | None = None,
) -> dict[str, float]:
    """Targets 0..10 of the negative branch, every reward named.

    An explicit ``negative_spec`` wins (unnamed rewards 0). Without one: every reward at 0 (MIRO), or,
    with ``guided_rewards``, the positive targets (unnamed 10) with only the guided rewards at 0.
    """
    if negative_spec is not None:
        explicit = parse_reward_spec(negative_spec, reward_names)
        return {n: explicit.get(n, 0.0) for n in reward_names}
    if guided_rewards is None:
        return dict.fromkeys(reward_names, 0.0)
    guided = {canonical_reward_name(g, reward_names) for g in guided_rewards}
    return {n: 0.0 if n in guided else positive.get(n, TARGET_MAX) for n in reward_names}


def target_values(
    reward_names: Sequence[str], targets: Mapping[str, float], default: float = TARGET_MAX
) -> torch.Tensor:
    """{name: target 0..10} -> conditioning values [R] in [0, 1]; unnamed rewards get ``default``."""
    return torch.tensor([targets.get(n, default) / TARGET_MAX for n in reward_names], dtype=torch.float32)


def branch_targets(
    reward_names: Sequence[str],
    targets: Mapping[str, float] | str | None,
    negative: Mapping[str, float] | str | None,
    guided_rewards: Sequence[str] | None,
    push: str | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Targets 0..10 of both branches, every reward named: unnamed positive targets are 10; the negative
    branch follows :func:`negative_targets`. ``push=NAME`` is the paper's "push one reward": the
    negative branch copies the positive targets (all 10 unless set) with only NAME at 0."""
    requested = parse_reward_spec(targets, reward_names)
    if push is not None:
        if negative is not None:
            raise RewardSpecError(
                "give either push or negative rewards, not both: push builds the negative branch"
            )
        guided_rewards = [canonical_reward_name(push, reward_names)]
    negatives = negative_targets(reward_names, requested, negative, guided_rewards)
    return {n: requested.get(n, TARGET_MAX) for n in reward_names}, negatives


def resolve_request(
    reward_names: Sequence[str],
    exported: Mapping[str, Any],
    levels: Mapping[str, int],
    rewards: Mapping[str, float] | str | None = None,
    negative_rewards: Mapping[str, float] | str | None = None,
    push: str | None = None,
    negative_prompt: str | None | _ModelDefault = MODEL_DEFAULT,
    guidance: float | None = None,
    steps: int | None = None,
    guidance_interval: Sequence[float] | None | _ModelDefault = MODEL_DEFAULT,
    guidance_ramp: str | None = None,
    snap: bool = True,
    shift: float | None = None,
) -> dict[str, Any]:
    """Everything one sampling request conditions on, as a JSON-ready record, for a model with
    ``reward_names``, sampling defaults ``exported`` and trained ``levels`` ({} when unknown: targets are
    then used as given): both branches' targets (each with the trained level actually used), the negative
    caption (null = the same caption), guidance, its interval and ramp, steps, shift.

    The one place a request is checked and completed: :meth:`MiroPipeline.resolve` (generation, the
    app, evaluation), GRPO's rollouts, the training sample grid and ``miro-generate``'s check before the
    model loads all call it. Errors are :class:`RewardSpecError` / ValueError with a one-line message."""
    names = list(reward_names)
    if not names and (rewards or negative_rewards or push):
        raise RewardSpecError("this model was trained without reward conditioning; do not pass rewards")
    out = sampling_settings(exported, guidance, steps, shift)
    positive, negative = branch_targets(names, rewards, negative_rewards, out["guided_rewards"], push)
    levels = levels if snap else {}
    if negative_prompt is MODEL_DEFAULT:
        negative_prompt = out.get("negative_prompt")
    if guidance_interval is not MODEL_DEFAULT:
        out["guidance_interval"] = list(guidance_interval) if guidance_interval is not None else None
    if guidance_ramp is not None:
        out["guidance_ramp"] = guidance_ramp
    GuidanceSchedule.from_settings(out["guidance"], out["guidance_interval"], out["guidance_ramp"])
    return out | {
        "rewards": level_record(positive, levels),
        "negative_rewards": level_record(negative, levels),
        "push": canonical_reward_name(push, names) if push is not None else None,
        "negative_prompt": negative_prompt,
        "snap": bool(snap),
    }


def check_exported_request(
    checkpoint: str | Path,
    config: Mapping[str, Any],
    rewards: Mapping[str, float] | str | None = None,
    negative_rewards: Mapping[str, float] | str | None = None,
    **options: Any,
) -> None:
    """A command's request checked against an export's config.json before its weights load (minutes at
    scale), by the same :func:`resolve_request` that sampling calls, so the early check and the sampler
    cannot disagree. A bad request is a RewardSpecError; bad sampling defaults in config.json are the
    model directory's fault (CheckpointError naming it)."""
    names, sampling = [str(n) for n in config["reward_names"]], config.get("sampling") or {}
    try:
        resolve_request(names, sampling, {}, rewards, negative_rewards, **options)
    except RewardSpecError:
        raise
    except (TypeError, ValueError) as err:  # the command line was checked by the caller: the defaults
        raise CheckpointError(f"{checkpoint}: config.json 'sampling': {err}") from None


def request_values(
    reward_names: Sequence[str], used: Mapping[str, Any]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Conditioning values [R] in [0, 1] of the positive and negative branch of a
    :func:`resolve_request` record (snapped where it snapped); None for a model without rewards."""
    if not reward_names:
        return None, None
    return tuple(  # type: ignore[return-value]
        torch.tensor([used[branch][n]["value"] for n in reward_names], dtype=torch.float32)
        for branch in ("rewards", "negative_rewards")
    )


def conditioned_velocity(
    model: nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor | None,
    neg_rewards: torch.Tensor | None,
    neg_tokens: torch.Tensor | None,
    neg_mask: torch.Tensor | None,
    guidance: float,
    guidance_interval: Sequence[float] | None = None,
    guidance_ramp: str | None = None,
    calls: SelfConditionedCalls | None = None,
) -> VelocityFn:
    """The guided velocity of one batch: rewards [B, R] (every one given) against ``neg_rewards`` and
    the negative caption (None: the same caption), with guidance ``guidance`` on the schedule the
    interval and ramp describe. Without rewards and without a negative caption there is nothing to
    guide against: the conditional prediction alone. Generation and GRPO's policy both build their
    velocity here, so a rollout is conditioned exactly as an image the pipeline makes. ``calls``: see
    :func:`~miro.flow.guidance.guided_velocity_fn`."""
    reward_mask = None if rewards is None else torch.ones_like(rewards, dtype=torch.bool)
    use_guidance = guidance != 0 and (rewards is not None or neg_tokens is not None)
    scale = float(guidance) if use_guidance else 0.0
    return guided_velocity_fn(
        model, tokens, mask, rewards, reward_mask, scale=scale,
        neg_rewards=neg_rewards, neg_text_tokens=neg_tokens, neg_text_mask=neg_mask,
        schedule=GuidanceSchedule.from_settings(scale, guidance_interval, guidance_ramp), calls=calls,
    )


@torch.no_grad()
def generate_images(
    model: nn.Module,
    encode_text: EncodeText,
    prompts: Sequence[str],
    image_size: int,
    positive: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
    guidance: float = 1.5,
    steps: int = 25,
    shift: float = 1.0,
    seed: int | Sequence[int] = 0,
    negative_prompts: Sequence[str] | None = None,
    vae: nn.Module | None = None,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    guidance_interval: Sequence[float] | None = None,
    guidance_ramp: str | None = None,
) -> torch.Tensor:
    """Sample one image per prompt -> uint8 [B, 3, H, W].

    ``positive``/``negative``: reward values [R] or [B, R] in [0, 1] (None for a model without
    rewards). ``seed``: one int (image i uses seed + i) or one seed per prompt, so every image can be
    reproduced on its own. ``precision="bf16"`` runs the network under bfloat16 autocast (the sampler
    state stays float32): 2.5x faster on a CPU with native bf16, ~10x slower on one without, at the cost
    of images that differ from float32 ones by rounding; ``"auto"`` picks bf16 only where it is native.
    ``guidance_interval`` / ``guidance_ramp``: see
    :class:`~miro.flow.guidance.GuidanceSchedule` (None: plain guidance over the whole trajectory).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    precision = resolve_precision(precision, device).name
    prompts = list(prompts)
    b = len(prompts)
    seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
    if len(seeds) != b:
        raise ValueError(f"{len(seeds)} seeds for {b} prompts")
    channels = getattr(model, "in_channels", 3)
    size = getattr(model, "image_size", image_size)
    noise = torch.stack([
        torch.randn(channels, size, size, generator=torch.Generator().manual_seed(int(s))) for s in seeds
    ]).to(device)
    tokens, mask = encode_text(prompts)
    neg_tokens = neg_mask = None
    if negative_prompts is not None:
        neg_tokens, neg_mask = encode_text(list(negative_prompts))
    rewards = neg_rewards = None
    if positive is not None:
        rewards = _per_image(positive, b, device)
        neg_rewards = _per_image(negative if negative is not None else torch.zeros_like(positive), b, device)
    velocity = conditioned_velocity(model, tokens, mask, rewards, neg_rewards, neg_tokens, neg_mask,
                                    guidance, guidance_interval, guidance_ramp)
    if precision == "bf16":
        velocity = autocast_velocity(velocity, device.type, torch.bfloat16)
    x = sample_euler(velocity, noise, steps=steps, shift=shift)
    if vae is not None:
        x = vae.decode(x)
    return to_uint8(x)


def generate_request(
    model: nn.Module,
    encode_text: EncodeText,
    prompts: Sequence[str],
    image_size: int,
    reward_names: Sequence[str],
    used: Mapping[str, Any],
    seed: int | Sequence[int] = 0,
    vae: nn.Module | None = None,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> torch.Tensor:
    """Images (uint8 [B, 3, H, W]) of ``prompts`` sampled as the :func:`resolve_request` record ``used``
    says: its conditioning values, negative caption, guidance, interval, ramp, steps and shift. What
    :class:`MiroPipeline` runs; the training sample grid runs it too, so its images are those the
    export will make."""
    prompts = list(prompts)
    positive, negative = request_values(reward_names, used)
    neg_prompt = used["negative_prompt"]
    return generate_images(
        model, encode_text, prompts, image_size, positive, negative,
        guidance=used["guidance"], steps=used["steps"], shift=used["shift"], seed=seed,
        negative_prompts=[neg_prompt] * len(prompts) if neg_prompt is not None else None,
        vae=vae, device=device, precision=precision,
        guidance_interval=used["guidance_interval"], guidance_ramp=used["guidance_ramp"],
    )


def autocast_velocity(velocity: VelocityFn, device_type: str, dtype: torch.dtype) -> VelocityFn:
    """``velocity`` run under autocast; the sampler state and the returned velocity stay float32."""
    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return velocity(x, t).float()

    return run


def _per_image(values: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Reward values [R] (shared) or [B, R] -> float [B, R] on ``device``."""
    values = values.to(device).float()
    return values.expand(batch, -1) if values.ndim == 1 else values


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> uint8 on CPU."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def image_grid(images: torch.Tensor, ncol: int, pad: int = 2, upscale: int = 1) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> one uint8 [3, H', W'] grid (white padding), optionally upscaled (nearest)."""
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    n, c, h, w = images.shape
    nrow = (n + ncol - 1) // ncol
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]


class MiroPipeline:
    """``MiroPipeline.from_pretrained(path)(prompts, rewards={"aesthetic": 9})`` -> list of PIL images."""

    def __init__(
        self, pretrained: Pretrained, device: str | torch.device = "cpu", precision: str = "auto"
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.pretrained = pretrained.to(device)
        self.device = torch.device(device)
        # What runs (bf16 or fp32), and why: "auto" becomes one of the two here, so every image's JSON
        # and every evaluation records the precision actually used.
        self.precision_choice = resolve_precision(precision, self.device)
        self.precision = self.precision_choice.name

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "auto",
        revision: str | None = None,
    ) -> MiroPipeline:
        """A model directory, or a Hugging Face Hub repo id (``owner/name``, ``revision`` or
        ``owner/name@revision``), as :func:`miro.pretrained.load_pretrained` resolves it."""
        return cls(load_pretrained(path, device=device, revision=revision), device, precision)

    @property
    def reward_names(self) -> list[str]:
        return self.pretrained.reward_names

    def sampling(self, guidance: float | None = None, steps: int | None = None) -> dict[str, Any]:
        """The sampling settings of a call that sets ``guidance``/``steps`` (None: the model's)."""
        return sampling_settings(self.pretrained.sampling, guidance, steps)

    @property
    def levels(self) -> dict[str, int]:
        """{reward: trained levels} from the model's bins; targets snap to these."""
        return trained_levels(self.pretrained.bins, self.reward_names)

    def resolve(
        self,
        rewards: Mapping[str, float] | str | None = None,
        negative_rewards: Mapping[str, float] | str | None = None,
        push: str | None = None,
        negative_prompt: str | None | _ModelDefault = MODEL_DEFAULT,
        guidance: float | None = None,
        steps: int | None = None,
        guidance_interval: Sequence[float] | None | _ModelDefault = MODEL_DEFAULT,
        guidance_ramp: str | None = None,
        snap: bool = True,
    ) -> dict[str, Any]:
        """Everything one call samples with, as a JSON-ready record (:func:`resolve_request` for this
        model: its rewards, sampling defaults and trained levels). Errors are :class:`RewardSpecError` /
        ValueError."""
        return resolve_request(
            self.reward_names, self.pretrained.sampling, self.levels, rewards, negative_rewards, push,
            negative_prompt, guidance, steps, guidance_interval, guidance_ramp, snap,
        )

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.pretrained.text_encoder(captions)

    def __call__(
        self,
        prompts: str | Sequence[str],
        rewards: Mapping[str, float] | str | None = None,
        negative_rewards: Mapping[str, float] | str | None = None,
        guidance: float | None = None,
        steps: int | None = None,
        seed: int | Sequence[int] = 0,
        negative_prompt: str | None | _ModelDefault = MODEL_DEFAULT,
        output: str = "pil",
        push: str | None = None,
        guidance_interval: Sequence[float] | None | _ModelDefault = MODEL_DEFAULT,
        guidance_ramp: str | None = None,
        snap: bool = True,
    ) -> list[Image.Image] | torch.Tensor:
        """Generate one image per prompt. ``rewards``: targets 0..10 by name (unnamed: 10);
        ``negative_rewards``: the negative branch's targets (unnamed: 0; None: the model's default, see
        :func:`negative_targets`); ``push="aesthetic"``: positive all high, negative all high except that
        reward at 0 (exclusive with ``negative_rewards``); ``negative_prompt``: the negative branch's
        caption (None: the same caption, ``""``: empty; default: the model's); ``guidance_interval``
        (t_low, t_high) and ``guidance_ramp`` ("constant" / "linear"): where and how guidance applies
        (default: the model's); ``snap``: move targets to the nearest trained level (MIRO's models
        only saw those). :meth:`resolve` returns the same settings as a record.
        ``output="tensor"`` returns uint8 [B, 3, H, W]."""
        if output not in ("pil", "tensor"):
            raise ValueError(f"output must be 'pil' or 'tensor', got {output!r}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        keep_threads_fitting()  # threads=auto follows the machine's load between calls (a long evaluation)
        used = self.resolve(rewards, negative_rewards, push, negative_prompt, guidance, steps,
                            guidance_interval, guidance_ramp, snap)
        images = generate_request(
            self.pretrained.model, self.encode_text, prompts, self.pretrained.image_size,
            self.reward_names, used, seed=seed, vae=self.pretrained.vae, device=self.device,
            precision=self.precision,
        )
        return images if output == "tensor" else to_pil(images)
