"""GRPO training end to end on a tiny exported model: exact first ratio, a reward that rises, LoRA with
its adapters-off reference, resume, the Hydra experiments, and miro-generate on the result."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import OFFLINE_REWARDS
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_models import export_tiny_model, tiny_model

from miro.checks import InputError
from miro.cli import generate as generate_cli
from miro.config import compose_config
from miro.data.bins import RewardBins
from miro.data.prompt_file import PromptFileError
from miro.pipeline import MiroPipeline, to_uint8
from miro.pretrained import load_pretrained
from miro.rewards.base import RewardModel, register_reward
from miro.rl.__main__ import build, check_config
from miro.rl.chunks import chunk_sampling_weights, relative_l1
from miro.rl.module import GRPOModule, updates_per_iteration
from miro.rl.prompts import PromptBatches, PromptDataModule, training_prompts
from miro.rl.rollout import PolicyCondition, policy_step, rollout
from miro.shapes.benchmark import training_prompts as shapes_pool

PROMPTS = ["a red circle", "two blue squares"]


@register_reward
class Brightness(RewardModel):
    """Mean pixel value in [0, 1]: a reward any policy can raise, so a failure to raise it is a bug."""

    name = "test_brightness"
    version = "1"

    def score_batch(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return images.float().mean((1, 2, 3)) / 255.0


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("rl_export"), None, benchmark="shapes")


def make_module(export: Path, **overrides: object) -> GRPOModule:
    options: dict[str, object] = dict(
        rewards={"test_brightness": 1.0},
        monitor_rewards=["colorfulness"],
        steps=4,
        group_size=8,
        rollout_batch_size=16,
        train_batch_size=16,
        lr=1e-2,
        chunking={"mode": "dynamic", "num_chunks": 2},
    )
    return GRPOModule(str(export), **(options | overrides))


def fit(module: GRPOModule, steps: int, root: Path | None = None, ckpt: str | None = None) -> L.Trainer:
    data = PromptDataModule(2, pool=shapes_pool(per_category=4), exclude_eval=False)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=root is not None,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return trainer


def mean_reward(module: GRPOModule) -> float:
    """The policy's mean reward on fixed prompts and noise."""
    batch = module.collect(PROMPTS * 2, iteration=123)
    return float(batch["reward"].mean())


def test_first_update_has_ratio_exactly_one(export: Path) -> None:
    module = make_module(export)
    batch = module.collect(PROMPTS, iteration=0)
    assert batch["states"].shape == (5, 16, 3, 24, 24) and batch["log_probs"].shape == (4, 16)
    index = torch.arange(16)
    new, kl = module.step_log_probs(batch, index, range(4))
    assert new.requires_grad
    assert torch.equal(new.detach(), batch["log_probs"].T)  # bit-identical: ratio exactly 1
    assert torch.equal(kl, torch.zeros(16))
    # Advantages are normalised within each prompt's group of 8.
    groups = batch["advantages"].reshape(2, 8)
    torch.testing.assert_close(groups.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    assert set(batch["scores"]) == {"test_brightness", "colorfulness"}


def test_kl_term_is_flow_grpos_expression_by_default(export: Path) -> None:
    module = make_module(export, beta=0.1, noise_level=0.7)
    assert module.hp["kl"] == "flow_grpo"
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = module.collect(PROMPTS, iteration=0)
    index = torch.arange(16)
    _, kl = module.step_log_probs(batch, index, [1])
    ts = batch["timesteps"]
    args = dict(condition=batch["condition"], x=batch["states"][1], t=ts[1], t_next=ts[2], noise_level=0.7)
    with torch.no_grad():
        mean, ref_mean = policy_step(module.policy, **args).mean, policy_step(module.reference, **args).mean
    std_t = 0.7 * (ts[1] / (1 - ts[1])) ** 0.5  # Flow-GRPO's std_dev_t, without the step size
    expected = ((mean - ref_mean) ** 2).mean((1, 2, 3)) / (2 * std_t**2)
    assert float(expected.mean()) > 0
    torch.testing.assert_close(kl, expected)
    module.hp["kl"] = "transition"  # the exact transition KL: divided by |dt| as well
    _, kl_transition = module.step_log_probs(batch, index, [1])
    torch.testing.assert_close(kl_transition, expected / (ts[1] - ts[2]))


def test_weighted_sampling_uses_each_iterations_rollouts_and_favours_high_noise(export: Path) -> None:
    options = dict(chunking={"mode": "fixed", "sizes": [2, 2]}, chunk_sampling={"count": 1, "weighted": True})
    trained = make_module(export, **options)
    fit(trained, steps=1)
    # The curve the update drew from is the L1rel (over the state before each step) of iteration 0's
    # rollouts, which a fresh module reproduces from the same prompts and seed.
    prompts = next(iter(PromptBatches(training_prompts(pool=shapes_pool(per_category=4)), 2, seed=0)))
    rollouts = make_module(export, **options).collect(prompts, iteration=0)
    torch.testing.assert_close(torch.tensor(trained.rollout_l1rel), relative_l1(rollouts["states"]))
    weights = chunk_sampling_weights(torch.tensor(trained.rollout_l1rel), [2, 2])
    assert weights[0] > weights[1]  # the noisy rollouts change most at the noise end
    gen = torch.Generator().manual_seed(0)
    draws = [trained.chunks_for_update(gen, trained.rollout_l1rel)[0] for _ in range(2000)]
    assert abs(draws.count(0) / 2000 - float(weights[0])) < 0.03
    skipping = make_module(export, chunking={"mode": "equal", "size": 1}, skip_last_step=True,
                           chunk_sampling={"count": 2, "weighted": True})  # fmt: skip
    # the last step is never trained, however large its L1rel
    assert all(3 not in skipping.chunks_for_update(gen, [0.4, 0.3, 0.2, 10.0]) for _ in range(200))


def test_prompts_are_split_by_rank_in_whole_groups(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module(export, train_batch_size=16)
    monkeypatch.setattr(module, "world", lambda: (1, 2))
    assert module.local_prompts(["a", "b", "c", "d"]) == (["c", "d"], 2)
    with pytest.raises(ValueError, match=r"prompts_per_iteration \(3\) must be a multiple of the 2"):
        module.local_prompts(["a", "b", "c"])
    module.hp["train_batch_size"] = 15
    with pytest.raises(ValueError, match=r"train_batch_size \(15\) is the global minibatch"):
        module.local_prompts(["a", "b"])


def test_grpo_raises_a_simple_reward(export: Path) -> None:
    module = make_module(export)
    before = mean_reward(module)
    fit(module, steps=12)
    after = mean_reward(module)
    assert after > before + 0.1, (before, after)
    assert module.chunk_sizes and sum(module.chunk_sizes) == 4 and len(module.chunk_sizes) == 2
    assert int(module.iterations_done) == 12


def test_lora_trains_adapters_only_and_exports_merged_weights(export: Path, tmp_path: Path) -> None:
    module = make_module(
        export, lora={"rank": 4, "alpha": 4, "target_modules": ["q", "kv", "proj"]}, beta=0.1
    )
    trainable = [n for n, p in module.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = module.collect(PROMPTS, iteration=0)
    _, kl = module.step_log_probs(batch, torch.arange(16), range(2))
    assert torch.equal(kl, torch.zeros(16))  # the reference is the same network with adapters off
    fit(module, steps=3)
    _, kl = module.step_log_probs(batch, torch.arange(16), range(2))
    assert float(kl.mean()) > 0
    out = module.export(tmp_path / "lora_export")
    loaded = load_pretrained(out)
    base = load_pretrained(export)
    assert loaded.model.state_dict().keys() == base.model.state_dict().keys()
    changed = [
        k for k, v in loaded.model.state_dict().items() if not torch.equal(v, base.model.state_dict()[k])
    ]
    assert changed and all(k.endswith("weight") for k in changed)


def test_resume_continues_like_an_uninterrupted_run(export: Path, tmp_path: Path) -> None:
    straight = make_module(export, chunk_sampling={"count": 1, "weighted": True})
    fit(straight, steps=4)
    first = make_module(export, chunk_sampling={"count": 1, "weighted": True})
    trainer = fit(first, steps=2, root=tmp_path)
    ckpt = tmp_path / "resume.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = make_module(export, chunk_sampling={"count": 1, "weighted": True})
    fit(resumed, steps=4, ckpt=str(ckpt))
    assert resumed.chunk_sizes == straight.chunk_sizes and int(resumed.iterations_done) == 4
    for (name, a), (_, b) in zip(
        straight.policy.named_parameters(), resumed.policy.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_bad_settings_are_named(export: Path) -> None:
    with pytest.raises(ValueError, match="chunking.mode"):
        make_module(export, chunking={"mode": "random"})
    with pytest.raises(ValueError, match="sum to 3, but the sampler makes 4"):
        make_module(export, chunking={"mode": "fixed", "sizes": [1, 2]})
    with pytest.raises(ValueError, match="at least one reward"):
        make_module(export, rewards="")
    with pytest.raises(ValueError, match="not a number"):
        make_module(export, rewards="test_brightness=high")
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        make_module(export, targets="nope=3")
    with pytest.raises(ValueError, match="noise_level must be a finite number >= 0"):
        make_module(export, noise_level=-0.5)
    with pytest.raises(ValueError, match="kl must be one of flow_grpo, transition"):
        make_module(export, kl="exact")
    with pytest.raises(ValueError, match="clip ranges must be >= 0"):
        make_module(export, clip_high=-1.0)
    with pytest.raises(ValueError, match="skip_last_step needs at least 2 steps"):
        make_module(export, steps=1, skip_last_step=True, chunking={"mode": "equal", "size": 1})


def test_a_prompt_the_reward_cannot_judge_is_named(export: Path) -> None:
    module = make_module(export, rewards="alignment", group_size=2)
    with pytest.raises(ValueError, match="reward 'alignment' cannot score prompt 'a photo of a cat'"):
        module.collect(["a photo of a cat"])


def test_prompt_pool_excludes_evaluation_prompts_and_batches_depend_only_on_the_step(tmp_path: Path) -> None:
    from miro.rl.__main__ import held_out_prompts
    from miro.shapes.benchmark import ShapesBenchmark

    # The held-out prompts are read from the benchmark the experiment names, the one miro-eval uses.
    cfg = compose_config("rl", ["+experiment=rl_shapes_step", "data.pool.per_category=16"])
    held_out = held_out_prompts(cfg)
    assert held_out == ShapesBenchmark(per_category=16, seed=0, max_count=2).prompts()  # the conf's max_count
    source = list(instantiate(cfg.data.pool))
    assert set(source) & set(held_out)  # the grammar's pool does contain evaluation prompts ...
    pool = training_prompts(pool=source, held_out=held_out)
    assert pool and not set(pool) & set(held_out)  # ... and none is left to train on
    kept = compose_config("rl", ["+experiment=rl_shapes_step", "data.exclude_eval=false"])
    assert held_out_prompts(kept) == []
    with pytest.raises(InputError, match="data.exclude_eval needs the benchmark"):
        held_out_prompts(compose_config("rl", ["+experiment=rl_shapes_step", "~benchmark"]))
    batches = iter(PromptBatches(pool, 4, seed=0))
    first, second = next(batches), next(batches)
    assert next(iter(PromptBatches(pool, 4, seed=0, start=1))) == second != first
    file = tmp_path / "prompts.txt"
    file.write_text("# comment\na cat\n\na dog\n")
    assert training_prompts(str(file)) == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="set data.prompts_file"):
        training_prompts()
    with pytest.raises(PromptFileError, match="missing.txt does not exist"):
        training_prompts(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("experiment", ["rl_shapes_chunk", "rl_shapes_step"])
def test_experiments_run_export_and_generate(
    experiment: str, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / experiment
    cfg = compose_config(
        "rl",
        [
            f"+experiment={experiment}",
            f"pretrained={export}",
            f"paths.output_dir={out}",
            "iterations=2",
            "checkpoint_every=1",
            "logger=none",
            "data.prompts_per_iteration=2",
            "module.group_size=4",
            "module.rollout_batch_size=8",
            "module.train_batch_size=4",
            "module.steps=4",
            "module.rewards=test_brightness",
            "module.chunking.num_chunks=2",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ],
    )
    module, data, trainer = build(cfg)
    assert trainer.limit_train_batches == 2 and updates_per_iteration(2, 4, 4, 1) == 2
    trainer.fit(module, datamodule=data)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    exported = module.export(out / "export")
    config = load_pretrained(exported).config
    assert config["grpo"]["iterations"] == 2
    assert config["benchmark"] == "shapes"  # miro-eval evaluates the fine-tuned model as the starting one
    code = generate_cli.main(
        [
            "--checkpoint",
            str(exported),
            "--prompt",
            "a red circle",
            "--n",
            "2",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "images"),
        ]
    )
    assert code == 0 and len(list((tmp_path / "images").glob("*.json"))) == 2
    expected_chunks = [1, 1, 1, 1] if experiment == "rl_shapes_step" else module.chunk_sizes
    assert module.chunk_sizes == expected_chunks and len(expected_chunks) in (2, 4)


def test_large_model_experiment_composes() -> None:
    cfg = compose_config(
        "rl", ["+experiment=rl_cc12m", "pretrained=/models/cc12m", "prompt_file=/data/p.txt"]
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["module"]["lora"]["rank"] == 32 and resolved["data"]["prompts_file"] == "/data/p.txt"
    assert resolved["module"]["chunking"]["mode"] == "dynamic"


def small_rl_config(export: Path, out: Path, *extra: str):
    return compose_config(
        "rl",
        [
            "+experiment=rl_shapes_step",
            f"pretrained={export}",
            f"paths.output_dir={out}",
            "logger=none",
            "data.prompts_per_iteration=2",
            "module.group_size=4",
            "module.rollout_batch_size=8",
            "module.train_batch_size=8",
            "module.steps=3",
            "module.rewards=test_brightness",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *extra,
        ],
    )


def test_command_line_run_resumes_from_its_last_checkpoint(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    module, data, trainer = build(small_rl_config(export, out, "iterations=1", "checkpoint_every=1"))
    trainer.fit(module, datamodule=data)
    assert int(module.iterations_done) == 1
    cfg = small_rl_config(export, out, "iterations=3", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    module, data, trainer = build(cfg)
    trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
    assert int(module.iterations_done) == 3 and trainer.global_step == 3


def test_reward_targets_condition_the_rollouts_and_ema_is_exported(export: Path, tmp_path: Path) -> None:
    module = make_module(export, targets="sharpness=3", ema_decay=0.5)
    names = module.reward_names
    assert module.positive[names.index("sharpness")] == pytest.approx(0.3)
    assert module.positive[names.index("alignment")] == 1.0  # unnamed targets stay at the top
    batch = module.collect(PROMPTS, iteration=0)
    assert torch.allclose(batch["condition"].rewards, module.positive.expand(16, -1))
    fit(module, steps=2)
    policy, ema = module.policy.state_dict(), module.ema.state_dict()
    assert any(not torch.equal(policy[k], ema[k]) for k in policy)
    exported = load_pretrained(module.export(tmp_path / "ema_export")).model.state_dict()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)


@pytest.fixture(scope="module")
def cc12m_like_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with 16 trained levels per reward and MIRO's sampling options set: the empty prompt
    as the negative caption, and guidance on part of the trajectory, ramped."""
    root = tmp_path_factory.mktemp("rl_cc12m_like")
    RewardBins.fit({n: np.arange(160.0) for n in OFFLINE_REWARDS}, n_bins=16).save(root / "bins.json")
    export = export_tiny_model(root / "export", root / "bins.json")
    config = json.loads((export / "config.json").read_text())
    config["sampling"] |= {"negative_prompt": "", "guidance_interval": [0.2, 0.9], "guidance_ramp": "linear"}
    (export / "config.json").write_text(json.dumps(config))
    return export


def test_rollouts_condition_exactly_as_the_pipeline(cc12m_like_export: Path) -> None:
    module = make_module(cc12m_like_export, targets="alignment=9")
    pipe = MiroPipeline.from_pretrained(cc12m_like_export, precision="fp32")
    used = pipe.resolve("alignment=9", steps=4)
    # One record: 9 snapped to level 14 of 16 (0.9 * 15 = 13.5 rounds up), the model's empty negative
    # prompt, its guidance interval and ramp.
    assert module.request == used
    assert {k: v for k, v in used["rewards"]["alignment"].items() if k != "value"} == {
        "target": 9.0, "level": 14, "levels": 16
    }
    assert module.positive[0] == pytest.approx(14 / 15) and module.positive[1] == 1.0
    assert (used["negative_prompt"], used["guidance_interval"], used["guidance_ramp"]) == ("", [0.2, 0.9],
                                                                                          "linear")
    condition = module._condition(PROMPTS)
    empty, empty_mask = pipe.encode_text(["", ""])
    assert torch.equal(condition.neg_tokens, empty) and torch.equal(condition.neg_mask, empty_mask)
    # Without the SDE's noise a rollout is the Euler sampler: from the pipeline's noise, its images.
    noise = torch.stack([torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    states, *_ = rollout(module.policy, condition, noise, module._timesteps(), noise_level=0.0)
    want = pipe(PROMPTS, rewards="alignment=9", steps=4, seed=0, output="tensor")
    torch.testing.assert_close(to_uint8(states[-1]).int(), want.int(), atol=1, rtol=0)
    # ... which the conditioning GRPO used before (0.9 unsnapped, the same caption, plain guidance) is not.
    raw = module.positive.clone()
    raw[0] = 0.9
    old = PolicyCondition(condition.tokens, condition.mask, raw.expand(2, -1), condition.neg_rewards, 1.5)
    before, *_ = rollout(module.policy, old, noise, module._timesteps(), noise_level=0.0)
    assert (to_uint8(before[-1]).int() - want.int()).abs().float().mean() > 0.5
    # And with the SDE's noise, the first update still re-scores the rollouts bit for bit.
    batch = module.collect(PROMPTS, iteration=0)
    new, _ = module.step_log_probs(batch, torch.arange(16), range(4))
    assert torch.equal(new.detach(), batch["log_probs"].T)


def test_push_conditions_the_negative_branch_as_miro_generate(export: Path) -> None:
    pushed = make_module(export, push="colorfulness", targets="sharpness=4")
    names = pushed.reward_names
    want = {"alignment": 1.0, "sharpness": 0.4, "colorfulness": 0.0, "compressibility": 1.0}
    assert pushed.negative.tolist() == pytest.approx([want[n] for n in names])  # targets, pushed one at 0
    assert pushed.request["push"] == "colorfulness"


def test_a_self_conditioned_network_is_rescored_with_its_recorded_tokens(export: Path) -> None:
    pretrained = load_pretrained(export)
    pretrained.model = tiny_model(self_conditioning=True)
    # two rollout batches of 8, so the recorded tokens are joined across batches
    module = GRPOModule(pretrained, rewards="test_brightness", steps=4, group_size=8, rollout_batch_size=8,
                        train_batch_size=16)
    batch = module.collect(PROMPTS, iteration=0)
    recorded = batch["self_conditioning"]
    assert [sorted(r) for r in recorded] == [[]] + [["neg", "pos"]] * 3  # none before the first step
    assert recorded[1]["pos"].shape[0] == 16
    new, _ = module.step_log_probs(batch, torch.arange(16), range(4))
    assert torch.equal(new.detach(), batch["log_probs"].T)  # the first ratio is exactly 1
    # Without them a re-scored step would be another policy's.
    forgetful = batch | {"self_conditioning": [{} for _ in recorded]}
    other, _ = module.step_log_probs(forgetful, torch.arange(16), range(4))
    assert not torch.equal(other.detach(), batch["log_probs"].T)
    # A noiseless rollout is the pipeline's image of the self-conditioned model.
    condition = module._condition(PROMPTS)
    noise = torch.stack([torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    states, *_ = rollout(module.policy, condition, noise, module._timesteps(), noise_level=0.0)
    want = MiroPipeline(pretrained, precision="fp32")(PROMPTS, steps=4, seed=0, output="tensor")
    torch.testing.assert_close(to_uint8(states[-1]).int(), want.int(), atol=1, rtol=0)


def test_check_config_resolves_the_request_as_the_module_does(export: Path, tmp_path: Path) -> None:
    base = [f"pretrained={export}", f"paths.output_dir={tmp_path}", "module.rewards=test_brightness",
            "data.exclude_eval=false"]
    check_config(compose_config("rl", [*base, "+module.targets={sharpness: 3}", "module.push=color"]))
    with pytest.raises(InputError, match="unknown reward 'nope' for this model"):
        check_config(compose_config("rl", [*base, "+module.targets={nope: 3}"]))
    with pytest.raises(InputError, match="must be between 0 and 10"):
        check_config(compose_config("rl", [*base, "module.negative_targets='alignment=12'"]))
