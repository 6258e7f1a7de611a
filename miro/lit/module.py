"""The LightningModule that trains a reward-conditioned flow-matching DiT.

It owns the training loop's decisions (loss, optimiser, schedule, EMA) and nothing else: the network is
``miro.models``, the flow math is ``miro.flow``, the data is ``miro.data``. Randomness in a step (timesteps
and noise) comes from a generator seeded by (seed, rank, global step), so a resumed run continues
exactly like an uninterrupted one.

Batches come raw (``image`` and ``caption``: the frozen VAE and text encoder run inside the step) or
cached by ``data_prep.cache_latents`` (``latent``, optionally ``latent_std``, and ``text_tokens`` /
``text_mask``: neither runs). Both give the network the same inputs.

A step whose loss or gradients are not finite is skipped (no weight, optimiser-state or EMA update);
``max_nonfinite_steps`` consecutive ones stop the run with one line (:class:`NonFiniteTrainingError`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from miro.data.datamodule import step_seed
from miro.flow.path import flow_loss, interpolate, sample_timesteps
from miro.lit.ema import ema_decay_at, update_ema
from miro.utils.text_batch import pad_to_length

log = logging.getLogger(__name__)
OPTIMIZERS = ("adamw", "lamb")


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after too many consecutive steps with a non-finite loss or gradient."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MiroModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        text_encoder: nn.Module,
        reward_names: Sequence[str] = (),
        vae: nn.Module | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        warmup_steps: int = 500,
        total_steps: int = 100_000,
        min_lr_ratio: float = 0.0,
        t_mean: float = 0.0,
        t_std: float = 1.0,
        t_shift: float = 1.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        caption_dropout: float = 0.0,
        compile: bool = False,
        seed: int = 0,
        optimizer: str = "adamw",
        max_nonfinite_steps: int | None = 5,
        self_cond_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= self_cond_rate <= 1.0:
            raise ValueError(f"module.self_cond_rate must be in [0, 1], got {self_cond_rate}")
        if self_cond_rate > 0 and not getattr(model, "self_conditioning", False):
            raise ValueError(
                "module.self_cond_rate > 0 needs a network built with self-conditioning "
                "(model.self_conditioning=true)"
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"module.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if max_nonfinite_steps is not None and max_nonfinite_steps < 1:
            raise ValueError(f"module.max_nonfinite_steps must be >= 1 or null, got {max_nonfinite_steps}")
        self.model = model
        self.text_encoder = text_encoder
        self.vae = vae
        self.reward_names = list(reward_names)
        self.hp = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=min_lr_ratio,
            t_mean=t_mean,
            t_std=t_std,
            t_shift=t_shift,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            caption_dropout=caption_dropout,
            seed=seed,
            optimizer=optimizer,
            max_nonfinite_steps=max_nonfinite_steps,
            self_cond_rate=self_cond_rate,
        )
        self._loss: torch.Tensor | None = None  # this step's loss, for the finiteness check
        self._skipped_step = False  # whether the optimiser step now running was skipped
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.text_trainable = bool(getattr(text_encoder, "trainable", False))
        if not self.text_trainable:
            self.text_encoder.requires_grad_(False).eval()
        self.ema_text_encoder = (
            copy.deepcopy(text_encoder).requires_grad_(False).eval() if self.text_trainable else None
        )
        if vae is not None:
            self.vae.requires_grad_(False).eval()
        # Not registered as a submodule: the compiled wrapper must not add a second copy of the weights
        # to the state dict.
        object.__setattr__(self, "_forward", torch.compile(self.model) if compile else self.model)
        # A compiled network sees caption tokens padded to the encoder's fixed length: batches whose longest
        # caption differs would otherwise recompile for dynamic shapes, and on torch 2.13's CPU inductor the
        # dynamic backward failed a stride assertion (bench/results/demo_avx2.md). Padding is masked out of
        # cross-attention and the pooled caption, so the loss is the same (tested).
        self.static_text_length = int(getattr(text_encoder, "max_length", 0) or 0) if compile else 0

    # ----------------------------------------------------------------------------------------------
    def encode_text(self, captions: list[str], ema: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.ema_text_encoder if (ema and self.ema_text_encoder is not None) else self.text_encoder
        if self.text_trainable and not ema:
            return encoder(captions)
        with torch.no_grad():
            return encoder(captions)

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return images
        with torch.no_grad():
            return self.vae.encode(images)

    def cached_text(
        self, tokens: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached caption features, with the rows in ``drop`` replaced by the empty caption's features."""
        if self.text_trainable:
            raise ValueError(
                "the batch holds cached text features, but the text encoder is trainable: cached features "
                "cannot train it; use raw shards (data.cached=false) or a frozen encoder"
            )
        if tokens.shape[-1] != self.text_encoder.dim:
            raise ValueError(
                f"cached text features have dim {tokens.shape[-1]} but the text encoder "
                f"({type(self.text_encoder).__name__}) has dim {self.text_encoder.dim}: the shards were "
                "cached with another encoder"
            )
        if drop is None or not bool(drop.any()):
            return tokens, mask
        empty, empty_mask = self.encode_text([""])
        length = max(tokens.shape[1], empty.shape[1])
        tokens, mask = pad_to_length(tokens, mask, length)
        empty, empty_mask = pad_to_length(empty.to(tokens.dtype), empty_mask, length)
        rows = drop.to(tokens.device)
        tokens = torch.where(rows[:, None, None], empty, tokens)
        mask = torch.where(rows[:, None], empty_mask, mask)
        return tokens, mask

    def batch_loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        x0 = batch["latent"] if "latent" in batch else self.to_latents(batch["image"])
        n = x0.shape[0]
        captions = list(batch["caption"])
        drop = None
        if self.hp["caption_dropout"] > 0:
            # An empty caption now and then teaches the unconditional velocity that text guidance
            # (negative prompt "") contrasts against; the reward tokens are kept.
            drop = torch.rand(n, generator=generator, device=generator.device) < self.hp["caption_dropout"]
            captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        if "text_tokens" in batch:
            tokens, mask = self.cached_text(batch["text_tokens"], batch["text_mask"], drop)
        else:
            tokens, mask = self.encode_text(captions)
        if tokens.shape[1] < self.static_text_length:
            tokens, mask = pad_to_length(tokens, mask, self.static_text_length)
        t = sample_timesteps(
            n, self.hp["t_mean"], self.hp["t_std"], self.hp["t_shift"], generator=generator, device=x0.device
        )
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if "latent_std" in batch:
            # Cached posterior mean and std: a fresh posterior sample every step, as encoding would give.
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x0 = x0 + batch["latent_std"] * eps
        x_t = interpolate(x0, noise, t)
        rewards = batch["rewards"] if self.reward_names else None
        reward_mask = batch["reward_mask"] if self.reward_names else None
        previous = self.self_condition(x_t, t, tokens, mask, rewards, reward_mask, generator)
        if previous is None:
            v = self._forward(x_t, t, tokens, mask, rewards, reward_mask)
        else:
            v = self._forward(x_t, t, tokens, mask, rewards, reward_mask, previous_tokens=previous)
        return flow_loss(v, x0, noise)

    def self_condition(
        self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
        rewards: torch.Tensor | None, reward_mask: torch.Tensor | None, generator: torch.Generator,
    ) -> torch.Tensor | None:
        """The previous tokens of a self-conditioned step, as the official loss builds them: a first pass
        over the whole batch at the same x_t and t, its output tokens detached (no gradient flows through
        it), kept for a ``self_cond_rate`` share of the samples and zero for the rest. None when off."""
        rate = self.hp["self_cond_rate"]
        if rate <= 0:
            return None
        with torch.no_grad():
            _, first = self._forward(x_t, t, tokens, mask, rewards, reward_mask, return_tokens=True)
        keep = torch.rand(x_t.shape[0], generator=generator, device=generator.device) < rate
        return first.detach() * keep.to(first.device, first.dtype)[:, None, None]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(
            step_seed(self.hp["seed"], self.global_rank, self.global_step)
        )
        loss = self.batch_loss(batch, gen)
        self._loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        self.log("train/skipped_nonfinite", float(self.nonfinite_total), batch_size=len(batch["caption"]))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip this step if its loss or any gradient is not finite: every gradient is set to None, which
        every torch optimiser (and LAMB) treats as "leave this parameter alone", so weights, moments and
        the EMA stay as they were. The decision is shared by all ranks; it costs one host sync per step."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        if self._loss is not None:
            finite &= torch.isfinite(self._loss).all().to(finite.device)
        if grads:
            total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: one foreach kernel
            if total_norm is not None:
                norm = total_norm(grads)
            else:
                norm = torch.stack([g.detach().float().norm() for g in grads]).norm()
            finite &= torch.isfinite(norm).to(finite.device)
        ok = bool(finite)
        if self._trainer is not None:
            ok = self.trainer.strategy.reduce_boolean_decision(ok, all=True)
        self._skipped_step = not ok
        if ok:
            self.nonfinite_in_a_row = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        step, limit = self.global_step, self.hp["max_nonfinite_steps"]
        log.warning("step %d skipped: loss or gradients not finite (%d in a row, %d in all)",
                    step, self.nonfinite_in_a_row, self.nonfinite_total)
        if limit is not None and self.nonfinite_in_a_row >= limit:
            raise NonFiniteTrainingError(
                f"training stopped at step {step}: the loss or gradients were not finite for {limit} steps "
                "in a row (module.max_nonfinite_steps); lower module.lr, check the data, or resume from an "
                "earlier checkpoint"
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA moves right after the weights do, inside the optimisation step: a checkpoint written
        # by a callback at the end of this batch then already holds this step's EMA (callbacks run
        # before the module's own on_train_batch_end, which would leave a resumed EMA one update behind).
        step = self.global_step  # updates done before this one
        self._skipped_step = False
        super().optimizer_step(*args, **kwargs)
        if self._skipped_step:
            return
        decay = ema_decay_at(step, self.hp["ema_decay"], self.hp["ema_warmup"])
        update_ema(self.ema_model, self.model, decay)
        if self.ema_text_encoder is not None:
            update_ema(self.ema_text_encoder, self.text_encoder, decay)

    def _frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the pretrained parts that never train (a frozen text encoder, the VAE)."""
        frozen_text = () if self.text_trainable else ("text_encoder.",)
        return (*frozen_text, *(("vae.",) if self.vae is not None else ()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Frozen pretrained weights are rebuilt from their configs: copying them into every checkpoint
        # would make a demo checkpoint 134 MB (MiniLM) and a cc12m one ~10 GB (FLAN-T5-XL).
        prefixes = self._frozen_prefixes()
        if prefixes:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefixes)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Put the frozen parts back (from this module, built from the same config) so loading stays strict.
        state = checkpoint["state_dict"]
        prefixes = self._frozen_prefixes()
        for key, value in self.state_dict().items():
            if key.startswith(prefixes) and key not in state:
                state[key] = value

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.text_trainable:
            params += [p for p in self.text_encoder.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": self.hp["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.hp["optimizer"] == "lamb":
            # MIRO's optimiser. timm's LAMB (a maintained implementation); its own gradient-norm clip is
            # off because the trainer's gradient_clip_val already clips.
            from timm.optim import Lamb

            optimizer: torch.optim.Optimizer = Lamb(
                groups, lr=self.hp["lr"], betas=self.hp["betas"], max_grad_norm=None
            )
        else:
            optimizer = torch.optim.AdamW(
                groups, lr=self.hp["lr"], betas=self.hp["betas"],
                fused=torch.cuda.is_available() and self.device.type == "cuda",
            )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(
                step, self.hp["warmup_steps"], self.hp["total_steps"], self.hp["min_lr_ratio"]
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
