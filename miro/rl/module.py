"""The LightningModule for (chunk-level) GRPO fine-tuning of an exported MIRO model.

One ``training_step`` is one GRPO iteration: draw G samples for each prompt with the SDE policy, score
them, turn rewards into group-relative advantages, then run ``inner_epochs`` passes of minibatch updates
over the recorded trajectories. The optimisation is manual because an iteration makes several optimiser
updates, each over several chunks whose graphs are built and freed one at a time (peak memory is one
chunk's steps, not the whole trajectory's).

The policy's weights start from an export (``<run>/export`` of ``miro.train``). LoRA adapters (peft) or
all weights are trained; the text encoder, VAE and reward models stay frozen. With ``beta > 0`` a KL
penalty to the starting weights is added (``kl``: Flow-GRPO's form by default, see :func:`policy_kl`):
for LoRA the reference is the same network with its adapters switched off, so no second copy is kept;
for a full fine-tune a frozen copy is made (and only then).

Several processes (Lightning DDP, e.g. ``trainer=ddp``): every rank receives the iteration's global
prompt list and rolls out its own contiguous slice, so each prompt's group stays on one rank. Rewards
are gathered and advantages computed over the whole global batch, exactly as one process would (with
``global_std`` the std too), then each rank keeps its part. ``train_batch_size`` is the global
minibatch: each rank trains on its 1/world share, and DDP averages the gradients of every backward
pass. Noise is drawn per prompt from (seed, iteration, global prompt index) and chunk choices from
(seed, iteration), so a run with the same global batch processes the same prompts with the same noise
on any number of processes, and a resumed run continues like an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch import nn

from miro.data.datamodule import step_seed
from miro.data.shards import write_bytes_atomic
from miro.flow.sampling import sample_euler, time_schedule
from miro.lit.ema import ema_decay_at, update_ema
from miro.pipeline import (
    PRECISIONS,
    image_grid,
    request_values,
    resolve_request,
    to_uint8,
    trained_levels,
)
from miro.pretrained import Pretrained, load_pretrained, save_pretrained
from miro.rewards.base import RewardModel
from miro.rl.chunks import (
    check_chunks,
    chunk_bounds,
    chunk_means,
    chunk_sampling_weights,
    dynamic_chunks,
    equal_chunks,
    relative_l1,
    sample_chunks,
)
from miro.rl.grpo import (
    KL_FORMS,
    chunk_policy_loss,
    clip_bounds,
    group_advantages,
    policy_kl,
    transition_noise_scale,
)
from miro.rl.rollout import PolicyCondition, policy_step, rollout
from miro.scoring import build_rewards, reward_specs

log = logging.getLogger(__name__)

CHUNKING_MODES = ("fixed", "equal", "dynamic")
UPDATE_STREAM = -1  # the "prompt index" of the generator for minibatch orders and chunk choices


def rollout_seed(seed: int, iteration: int, prompt_index: int) -> int:
    """The seed of one prompt's group in one iteration: its noise does not depend on the process that
    rolls it out or on the batching."""
    return step_seed(seed, prompt_index, iteration)


def trained_bounds(sizes: Sequence[int], skip_last_step: bool) -> list[tuple[int, int]]:
    """[(start, end)) of the steps each chunk trains on; with ``skip_last_step`` the final (lowest-noise)
    transition is left out (GCPO), so a last chunk of one step trains on nothing (start == end)."""
    bounds = chunk_bounds(sizes)
    if skip_last_step:
        a, b = bounds[-1]
        bounds[-1] = (a, b - 1)
    return bounds


def updates_per_iteration(
    prompts_per_iteration: int, group_size: int, train_batch_size: int, inner_epochs: int
) -> int:
    """Optimiser updates one GRPO iteration makes (the trainer's steps count updates)."""
    samples = prompts_per_iteration * group_size
    return inner_epochs * -(-samples // train_batch_size)


def parse_reward_weights(rewards: Mapping[str, float] | str) -> dict[str, float]:
    """The optimised reward: ``"alignment"``, ``"hps=1,pick=0.5"`` or a mapping -> {name: weight}."""
    if isinstance(rewards, str):
        weights = {}
        for part in filter(None, (p.strip() for p in rewards.split(","))):
            name, _, weight = part.partition("=")
            try:
                weights[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise ValueError(f"reward weight for {name.strip()!r} is not a number: {weight!r}") from None
    else:
        weights = {str(k): float(v) for k, v in rewards.items()}
    if not weights:
        raise ValueError("GRPO needs at least one reward to optimise (module.rewards: NAME or NAME=W,NAME=W)")
    return weights


class GRPOModule(L.LightningModule):
    def __init__(
        self,
        pretrained: str | Pretrained,
        rewards: Mapping[str, float] | str,
        monitor_rewards: Sequence[str] = (),
        targets: Mapping[str, float] | str | None = None,
        negative_targets: Mapping[str, float] | str | None = None,
        push: str | None = None,
        guidance: float | None = None,
        steps: int = 10,
        shift: float | None = None,
        noise_level: float = 0.7,
        group_size: int = 8,
        rollout_batch_size: int = 32,
        train_batch_size: int = 32,
        inner_epochs: int = 1,
        chunking: Mapping[str, Any] | None = None,
        chunk_sampling: Mapping[str, Any] | None = None,
        clip_range: float = 1e-4,
        clip_low: float | None = None,
        clip_high: float | None = None,
        skip_last_step: bool = False,
        advantage_clamp: float = 5.0,
        global_std: bool = False,
        beta: float = 0.0,
        kl: str = "flow_grpo",
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        lora: Mapping[str, Any] | None = None,
        ema_decay: float | None = None,
        precision: str = "fp32",
        reward_device: str | None = None,
        seed: int = 0,
        grid_every: int = 0,
        grid_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.pretrained = load_pretrained(pretrained) if isinstance(pretrained, (str, Path)) else pretrained
        self.pretrained.text_encoder.requires_grad_(False).eval()
        if self.pretrained.vae is not None:
            self.pretrained.vae.requires_grad_(False).eval()
        self.reward_names = list(self.pretrained.reward_names)
        self.reward_weights = parse_reward_weights(rewards)
        self.monitor_names = [n for n in monitor_rewards if n not in self.reward_weights]
        # The rollouts' request, completed as MiroPipeline completes it (the model's negative caption,
        # guidance interval and ramp; targets snapped to the trained levels), so GRPO trains the images
        # miro-generate makes for the same targets. Recorded in the export.
        self.request = resolve_request(
            self.reward_names, self.pretrained.sampling,
            trained_levels(self.pretrained.bins, self.reward_names), targets, negative_targets, push,
            guidance=guidance, steps=int(steps), shift=shift,
        )
        self.positive, self.negative = request_values(self.reward_names, self.request)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        for name, value in (
            ("group_size", group_size),
            ("rollout_batch_size", rollout_batch_size),
            ("train_batch_size", train_batch_size),
            ("inner_epochs", inner_epochs),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not (math.isfinite(noise_level) and noise_level >= 0):
            raise ValueError(f"noise_level must be a finite number >= 0 (0: the ODE), got {noise_level}")
        if kl not in KL_FORMS:
            raise ValueError(f"kl must be one of {', '.join(KL_FORMS)}, got {kl!r}")
        clip_bounds(clip_range, clip_low, clip_high)  # raises on negative ranges
        if skip_last_step and int(steps) < 2:
            raise ValueError("skip_last_step needs at least 2 steps (it leaves the last one untrained)")
        self.hp = dict(
            guidance=self.request["guidance"],
            steps=int(steps),
            shift=self.request["shift"],
            noise_level=noise_level,
            group_size=group_size,
            rollout_batch_size=rollout_batch_size,
            train_batch_size=train_batch_size,
            inner_epochs=inner_epochs,
            clip_range=clip_range,
            clip_low=clip_low,
            clip_high=clip_high,
            skip_last_step=bool(skip_last_step),
            advantage_clamp=advantage_clamp,
            global_std=global_std,
            beta=beta,
            kl=kl,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            ema_decay=ema_decay,
            precision=precision,
            reward_device=reward_device,
            seed=seed,
            grid_every=grid_every,
            grid_dir=grid_dir,
        )
        self.chunking = dict(chunking or {"mode": "equal", "size": 1})
        if self.chunking.get("mode") not in CHUNKING_MODES:
            raise ValueError(
                f"chunking.mode must be one of {CHUNKING_MODES}, got {self.chunking.get('mode')!r}"
            )
        self.chunk_sampling = dict(chunk_sampling or {})
        self.chunk_sizes: list[int] = []
        self.l1rel: list[float] = []  # the ODE trajectory's, at the start: what dynamic chunks are cut from
        self.rollout_l1rel: list[float] = []  # the latest iteration's rollouts': what weighted sampling uses
        if self.chunking["mode"] != "dynamic":
            self.chunk_sizes = self._static_chunks()

        self.lora = dict(lora) if lora else None
        self.policy = self._make_policy(self.pretrained.model)
        self.reference = None
        if beta > 0 and self.lora is None:
            self.reference = copy.deepcopy(self.pretrained.model).requires_grad_(False).eval()
        self.ema = copy.deepcopy(self.policy).requires_grad_(False).eval() if ema_decay else None
        self.register_buffer("iterations_done", torch.zeros((), dtype=torch.long))
        self._rewards: dict[str, RewardModel] | None = None

    # ----------------------------------------------------------------------------------------------
    def _static_chunks(self) -> list[int]:
        transitions = self.hp["steps"]
        if self.chunking["mode"] == "fixed":
            return check_chunks(self.chunking["sizes"], transitions)
        return equal_chunks(transitions, int(self.chunking.get("size", 1)))

    def _make_policy(self, model: nn.Module) -> nn.Module:
        model.eval()  # no dropout: rollout and update must see the same function
        if self.lora is None:
            return model.requires_grad_(True)
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=int(self.lora.get("rank", 32)),
            lora_alpha=float(self.lora.get("alpha", 32)),
            target_modules=list(self.lora.get("target_modules", ["q", "kv", "proj"])),
            lora_dropout=0.0,
        )
        return get_peft_model(model, config)

    def on_fit_start(self) -> None:
        # The frozen text encoder and VAE are deliberately not submodules (no copy of them in every
        # checkpoint), so Lightning does not move them: do it here.
        self.pretrained.text_encoder.to(self.device)
        if self.pretrained.vae is not None:
            self.pretrained.vae.to(self.device)

    def reward_models(self) -> dict[str, RewardModel]:
        if self._rewards is None:
            names = list(self.reward_weights) + self.monitor_names
            # By default on the policy's device (scoring every rollout on the CPU would stall a GPU run);
            # reward_device puts large reward models on a device of their own.
            device = self.hp["reward_device"] or str(self.device)
            self._rewards = build_rewards(reward_specs(names), device=device)
        return self._rewards

    # -- processes ---------------------------------------------------------------------------------
    def world(self) -> tuple[int, int]:
        """(rank, number of processes); (0, 1) outside a trainer."""
        trainer = self._trainer
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` [n, ...] concatenated in rank order (equal n on every rank)."""
        if self.world()[1] == 1:
            return values
        gathered = self.all_gather(values.to(self.device))
        return gathered.flatten(0, 1).to(values.device)

    def local_prompts(self, prompts: Sequence[str]) -> tuple[list[str], int]:
        """This rank's contiguous slice of the iteration's global prompt list and the global index of
        its first prompt: whole groups stay on one rank."""
        rank, world = self.world()
        if len(prompts) % world:
            raise ValueError(
                f"data.prompts_per_iteration ({len(prompts)}) must be a multiple of the {world} processes"
            )
        if self.hp["train_batch_size"] % world:
            raise ValueError(
                f"module.train_batch_size ({self.hp['train_batch_size']}) is the global minibatch and must "
                f"be a multiple of the {world} processes"
            )
        per_rank = len(prompts) // world
        return list(prompts[rank * per_rank : (rank + 1) * per_rank]), rank * per_rank

    def _condition(self, prompts: list[str]) -> PolicyCondition:
        n = len(prompts)
        neg_prompt = self.request["negative_prompt"]
        neg_tokens = neg_mask = None
        with torch.no_grad():
            tokens, mask = self.pretrained.text_encoder(prompts)
            if neg_prompt is not None:  # as the pipeline encodes it: one copy per image
                neg_tokens, neg_mask = self.pretrained.text_encoder([neg_prompt] * n)
                neg_tokens, neg_mask = neg_tokens.to(self.device), neg_mask.to(self.device)
        pos = self.positive.to(self.device).expand(n, -1) if self.positive is not None else None
        neg = self.negative.to(self.device).expand(n, -1) if self.negative is not None else None
        return PolicyCondition(
            tokens.to(self.device), mask.to(self.device), pos, neg, self.hp["guidance"], neg_tokens, neg_mask,
            self.request["guidance_interval"], self.request["guidance_ramp"],
        )

    def _timesteps(self) -> list[float]:
        return time_schedule(self.hp["steps"], self.hp["shift"]).tolist()

    # ----------------------------------------------------------------------------------------------
    def rollout_noise(self, iteration: int, prompt_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt's group: initial noise [G, C, H, W] and the SDE's draws [T, G, C, H, W], from its
        own generator (CPU, so the numbers are the same on any device and any number of processes)."""
        gen = torch.Generator().manual_seed(rollout_seed(self.hp["seed"], iteration, prompt_index))
        model = self.pretrained.model
        # The network's own side (latents for a VAE model), as generation samples it.
        size = getattr(model, "image_size", self.pretrained.image_size)
        channels = getattr(model, "in_channels", 3)
        g = self.hp["group_size"]
        noise = torch.randn(g, channels, size, size, generator=gen)
        steps = torch.randn(self.hp["steps"], g, channels, size, size, generator=gen)
        return noise, steps

    def collect(self, prompts: list[str], iteration: int = 0, first_index: int = 0) -> dict[str, Any]:
        """Rollouts for this rank's ``prompts`` (each repeated group_size times, groups contiguous;
        ``first_index`` is the global index of the first), their images, rewards and advantages
        (computed over the rewards of every rank)."""
        g = self.hp["group_size"]
        expanded = [p for p in prompts for _ in range(g)]
        condition = self._condition(expanded)
        draws = [self.rollout_noise(iteration, first_index + j) for j in range(len(prompts))]
        noise = torch.cat([d[0] for d in draws]).to(self.device)
        step_noise = torch.cat([d[1] for d in draws], 1).to(self.device)
        timesteps = self._timesteps()
        states, log_probs, previous = [], [], []
        bs = self.hp["rollout_batch_size"]
        for start in range(0, len(expanded), bs):
            part = slice(start, start + bs)
            s, lp, prev = rollout(
                self.policy,
                condition.take(part),
                noise[part],
                timesteps,
                self.hp["noise_level"],
                precision=self.hp["precision"],
                step_noise=step_noise[:, part],
            )
            states.append(s)
            log_probs.append(lp)
            previous.append(prev)
        states_t, log_probs_t = torch.cat(states, 1), torch.cat(log_probs, 1)
        # A self-conditioned network's input from the step before, per step and branch (every part ran the
        # same schedule, so the same branches): the update re-scores each step with it.
        self_conditioning = [
            {branch: torch.cat([part[i][branch] for part in previous]) for branch in previous[0][i]}
            for i in range(len(timesteps) - 1)
        ]
        final = states_t[-1]
        with torch.no_grad():
            pixels = self.pretrained.vae.decode(final) if self.pretrained.vae is not None else final
        images = to_uint8(pixels)
        scores = {name: rm.score(images, expanded) for name, rm in self.reward_models().items()}
        total = sum(w * scores[n].float() for n, w in self.reward_weights.items())
        for name in self.reward_weights:
            bad = scores[name].isnan().nonzero().flatten().tolist()
            if bad:
                raise ValueError(
                    f"reward {name!r} cannot score prompt {expanded[bad[0]]!r} (NaN); GRPO needs a score "
                    "for every rollout: use prompts this reward understands"
                )
        # Over the global batch (every rank's groups), so any split gives one process's advantages.
        global_total = self.gather(total)
        rank_start = self.world()[0] * total.numel()
        advantages = group_advantages(
            global_total, g, global_std=self.hp["global_std"], clamp=self.hp["advantage_clamp"]
        )[rank_start : rank_start + total.numel()].to(self.device)
        return dict(
            prompts=expanded,
            condition=condition,
            states=states_t,
            log_probs=log_probs_t,
            self_conditioning=self_conditioning,
            timesteps=timesteps,
            images=images,
            scores=scores,
            reward=total,
            global_reward=global_total,
            advantages=advantages,
        )

    def step_log_probs(
        self, batch: dict[str, Any], index: slice | torch.Tensor, steps: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New log-probs [n, len(steps)] (with gradients) and the KL to the reference [n] (0 when
        beta = 0) of stored transitions ``steps`` for samples ``index``."""
        condition = batch["condition"].take(index)
        ts = batch["timesteps"]
        log_probs, kls = [], []
        for i in steps:
            transition = partial(
                policy_step, condition=condition, x=batch["states"][i][index], t=ts[i], t_next=ts[i + 1],
                noise_level=self.hp["noise_level"], x_next=batch["states"][i + 1][index],
                precision=self.hp["precision"],
                previous={b: v[index] for b, v in batch["self_conditioning"][i].items()},
            )  # fmt: skip
            step = transition(self.policy)
            log_probs.append(step.log_prob)
            if self.hp["beta"] > 0:
                with torch.no_grad(), self._reference() as reference:
                    ref = transition(reference)
                dt = ts[i + 1] - ts[i]
                scale = transition_noise_scale(step.std, dt)
                kls.append(policy_kl(step.mean, ref.mean, scale, dt, self.hp["kl"]))
        kl = torch.stack(kls, 1).mean(1) if kls else torch.zeros(log_probs[0].shape[0], device=self.device)
        return torch.stack(log_probs, 1), kl

    @contextmanager
    def _reference(self) -> Iterator[nn.Module]:
        """The starting policy: the frozen copy, or (LoRA) the policy with its adapters switched off."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def chunks_for_update(
        self, generator: torch.Generator, l1rel: Sequence[float] | torch.Tensor | None = None
    ) -> list[int]:
        """Indices of the chunks one update trains on: all, or ``chunk_sampling.count`` drawn uniformly
        or (``weighted``) in proportion to the chunk's mean ``l1rel``, the current rollouts' L1rel per
        step (GCPO: high-noise chunks are drawn most). A chunk left empty by ``skip_last_step`` is
        never drawn."""
        bounds = trained_bounds(self.chunk_sizes, self.hp["skip_last_step"])
        candidates = [j for j, (a, b) in enumerate(bounds) if b > a]
        count = self.chunk_sampling.get("count")
        if not count or count >= len(candidates):
            return candidates
        if self.chunk_sampling.get("weighted"):
            if l1rel is None:
                raise ValueError("weighted chunk sampling needs the rollouts' L1rel curve")
            curve = torch.as_tensor(l1rel, dtype=torch.float32)
            sizes = [bounds[j][1] - bounds[j][0] for j in candidates]
            steps = torch.cat([curve[bounds[j][0] : bounds[j][1]] for j in candidates])
            weights = chunk_sampling_weights(steps, sizes)
        else:
            weights = torch.ones(len(candidates))
        return [candidates[i] for i in sample_chunks(weights, int(count), generator)]

    # ----------------------------------------------------------------------------------------------
    def training_step(self, prompts: list[str], batch_idx: int) -> None:
        iteration = int(self.iterations_done)
        # Shared by every rank: the same minibatch order (of local samples) and chunk choices.
        gen = torch.Generator().manual_seed(step_seed(self.hp["seed"], UPDATE_STREAM, iteration))
        self.policy.eval()
        local, first = self.local_prompts(list(prompts))
        batch = self.collect(local, iteration, first)
        if not self.l1rel:
            self._measure_chunks(batch["condition"], batch["states"][0])
        # L1rel of this iteration's noisy rollouts (mean over every rank's samples): free, and it follows
        # the policy as it changes. Weighted chunk sampling draws from it.
        self.rollout_l1rel = self.gather(relative_l1(batch["states"]).unsqueeze(0)).mean(0).tolist()
        self._log_rewards(batch)
        optimizer = self.optimizers()
        n = len(batch["prompts"])
        mb = self.hp["train_batch_size"] // self.world()[1]
        bounds = trained_bounds(self.chunk_sizes, self.hp["skip_last_step"])
        stats: dict[str, list[float]] = {
            "loss": [],
            "ratio": [],
            "clip_fraction": [],
            "kl": [],
            "approx_kl": [],
        }
        for _ in range(self.hp["inner_epochs"]):
            order = torch.randperm(n, generator=gen) if self.hp["inner_epochs"] > 1 else torch.arange(n)
            for start in range(0, n, mb):
                index = order[start : start + mb].to(self.device)
                chosen = self.chunks_for_update(gen, self.rollout_l1rel)
                for j in chosen:
                    a, b = bounds[j]
                    new_lp, kl = self.step_log_probs(batch, index, range(a, b))
                    out = chunk_policy_loss(
                        new_lp,
                        batch["log_probs"][a:b, index].T,
                        batch["advantages"][index],
                        [b - a],
                        self.hp["clip_range"],
                        clip_low=self.hp["clip_low"],
                        clip_high=self.hp["clip_high"],
                    )
                    loss = (out.loss + self.hp["beta"] * kl.mean()) / len(chosen)
                    self.manual_backward(loss)
                    stats["loss"].append(float(loss.detach()) * len(chosen))
                    stats["ratio"].append(float(out.ratio_mean))
                    stats["clip_fraction"].append(float(out.clip_fraction))
                    stats["approx_kl"].append(float(out.approx_kl))
                    stats["kl"].append(float(kl.mean().detach()))
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in self.policy.parameters() if p.requires_grad], self.hp["grad_clip"]
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    update_ema(self.ema, self.policy, ema_decay_at(self.global_step, self.hp["ema_decay"]))
                self.log("rl/grad_norm", grad_norm, on_step=True)
        for key, values in stats.items():
            self.log(f"rl/{key}", sum(values) / len(values), on_step=True, prog_bar=key == "ratio")
        for j, mean in enumerate(chunk_means(torch.tensor(self.rollout_l1rel), self.chunk_sizes).tolist()):
            self.log(f"rl/l1rel_chunk{j}", mean, on_step=True)
        self.iterations_done += 1
        if self.hp["grid_every"] and iteration % self.hp["grid_every"] == 0:
            self._save_grid(batch["images"], iteration)

    @torch.no_grad()
    def _measure_chunks(self, condition: PolicyCondition, noise: torch.Tensor) -> None:
        """L1rel of the deterministic sampler from the first rollouts' noise (every sample of every
        rank), and the dynamic chunks read off it; measured once, so the objective's chunks stay fixed.

        The ODE trajectory, not the SDE rollouts: along a rollout the injected noise dominates every
        step's change and hides the drift's dynamics that the chunk boundaries should follow.
        (Weighted chunk sampling, in contrast, uses the rollouts' own L1rel, every iteration.)
        """
        bs = self.hp["rollout_batch_size"]
        curves, counts = [], []
        for start in range(0, noise.shape[0], bs):
            part = slice(start, start + bs)
            velocity = condition.take(part).velocity(self.policy)
            _, path = sample_euler(
                velocity, noise[part], self.hp["steps"], self.hp["shift"], return_trajectory=True
            )
            curves.append(relative_l1(path) * noise[part].shape[0])
            counts.append(noise[part].shape[0])
        local = torch.stack(curves).sum(0) / sum(counts)
        self.l1rel = self.gather(local.unsqueeze(0)).mean(0).tolist()
        if self.chunking["mode"] == "dynamic":
            self.chunk_sizes = dynamic_chunks(self.l1rel, int(self.chunking.get("num_chunks", 4)))
        log.info("L1rel per step %s -> chunks %s", [round(v, 4) for v in self.l1rel], self.chunk_sizes)

    def _log_rewards(self, batch: dict[str, Any]) -> None:
        n = len(batch["prompts"])
        total = batch["global_reward"]  # every rank's: the logs describe the whole iteration
        self.log("rl/reward", total.mean(), on_step=True, prog_bar=True, batch_size=total.numel())
        self.log("rl/reward_std", total.std(), on_step=True, batch_size=total.numel())
        for name, values in batch["scores"].items():
            finite = values[~values.isnan()]
            if finite.numel():
                self.log(f"reward/{name}", finite.mean(), on_step=True, batch_size=n)

    def _save_grid(self, images: torch.Tensor, iteration: int) -> None:
        g = self.hp["group_size"]
        grid = image_grid(images[: 8 * g], ncol=g, upscale=4 if images.shape[-1] <= 64 else 1)
        for logger in self.loggers:
            if hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("rl/rollouts", grid, iteration)
        if self.hp["grid_dir"] and self.trainer.is_global_zero:
            png = io.BytesIO()
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(png, format="PNG")
            write_bytes_atomic(Path(self.hp["grid_dir"]) / f"iter{iteration:05d}.png", png.getvalue())

    # ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return torch.optim.AdamW(
            params, lr=self.hp["lr"], betas=self.hp["betas"], weight_decay=self.hp["weight_decay"]
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["grpo"] = {
            "chunk_sizes": self.chunk_sizes,
            "l1rel": self.l1rel,
            "rollout_l1rel": self.rollout_l1rel,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("grpo", {})
        self.chunk_sizes = list(saved.get("chunk_sizes", self.chunk_sizes))
        self.l1rel = list(saved.get("l1rel", self.l1rel))
        self.rollout_l1rel = list(saved.get("rollout_l1rel", self.rollout_l1rel))

    def export(self, out_dir: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """The fine-tuned model in the training export format (LoRA merged), loadable by miro-generate."""
        source = self.ema if self.ema is not None else self.policy
        network = copy.deepcopy(source).cpu()
        if self.lora is not None:
            network = network.merge_and_unload()
        pre = self.pretrained
        return save_pretrained(
            out_dir,
            network,
            pre.text_encoder,
            pre.config["text_encoder"],
            pre.reward_names,
            pre.bins,
            pre.image_size,
            pre.sampling,
            vae_config=pre.config.get("vae"),
            extra={
                "grpo": {
                    "iterations": int(self.iterations_done),
                    "chunk_sizes": self.chunk_sizes,
                    "l1rel": self.l1rel,
                    "rollout_l1rel": self.rollout_l1rel,
                    "rewards": self.reward_weights,
                    "request": self.request,  # what the rollouts were conditioned on
                    **(extra or {}),
                },
                # the starting model's benchmark stays miro-eval's default for the fine-tuned one
                **({"benchmark": pre.config["benchmark"]} if pre.config.get("benchmark") else {}),
            },
        )
