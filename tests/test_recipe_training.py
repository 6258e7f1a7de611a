"""MIRO's training details on tiny stand-ins: the NaN/Inf guard and the LAMB optimiser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from miro.config import compose_config
from miro.lit.module import NonFiniteTrainingError
from miro.train import build

TINY = ["model=dit_tiny", "data.image_size=24", "data.batch_size=4", "callbacks=none", "logger=none",
        "trainer.log_every_n_steps=1"]


def _cfg(data_dir: Path, out_dir: Path, *extra: str):  # noqa: ANN202
    paths = [f"paths.data_dir={data_dir}", f"paths.output_dir={out_dir}"]
    return compose_config("train", [*paths, *TINY, *extra])


class _Weights(L.Callback):
    """The DiT's weights after every optimiser step."""

    def __init__(self) -> None:
        self.after: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        flat = torch.cat([p.detach().flatten() for p in pl_module.model.parameters()])
        ema = torch.cat([p.detach().flatten() for p in pl_module.ema_model.parameters()])
        self.after[trainer.global_step] = (flat.clone(), ema.clone())


def _poison(module, bad_steps: set[int], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Make the loss NaN (and so every gradient) at the given optimiser steps."""
    original = module.batch_loss

    def batch_loss(batch, generator):  # noqa: ANN001, ANN202
        loss = original(batch, generator)
        return loss * float("nan") if module.global_step in bad_steps else loss

    monkeypatch.setattr(module, "batch_loss", batch_loss)


def test_nonfinite_steps_are_skipped_and_training_goes_on(
    scored_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, datamodule, trainer = build(_cfg(scored_shapes, tmp_path, "trainer.max_steps=6"))
    weights = _Weights()
    trainer.callbacks.append(weights)
    _poison(module, {2, 3}, monkeypatch)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 6
    after = weights.after
    # steps 2 and 3 (the 3rd and 4th batch) change neither the weights nor the EMA; the others do
    for step in (3, 4):
        assert torch.equal(after[step][0], after[step - 1][0])
        assert torch.equal(after[step][1], after[step - 1][1])
    for step in (2, 5, 6):
        assert not torch.equal(after[step][0], after[step - 1][0])
    assert all(torch.isfinite(w).all() for w, _ in after.values())
    assert (module.nonfinite_total, module.nonfinite_in_a_row) == (2, 0)


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(
    scored_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, datamodule, trainer = build(
        _cfg(scored_shapes, tmp_path, "trainer.max_steps=20", "module.max_nonfinite_steps=3")
    )
    _poison(module, set(range(1, 20)), monkeypatch)
    with pytest.raises(NonFiniteTrainingError, match="not finite for 3 steps in a row"):
        trainer.fit(module, datamodule=datamodule)
    assert module.nonfinite_total == 3


def test_the_train_command_stops_with_one_line(scored_shapes: Path, tmp_path: Path) -> None:
    # lr = inf makes the first update non-finite, and every loss after it.
    args = [f"paths.data_dir={scored_shapes}", f"paths.output_dir={tmp_path / 'run'}", *TINY,
            "trainer.max_steps=10", "module.max_nonfinite_steps=2", "module.lr=inf", "module.warmup_steps=0",
            "trainer.enable_progress_bar=false"]
    proc = subprocess.run([sys.executable, "-m", "miro.train", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("miro.train: error:")]
    assert len(errors) == 1 and "not finite for 2 steps in a row" in errors[0]
    assert "Traceback" not in proc.stderr


def test_lamb_is_timms_and_its_first_step_matches_the_formula(scored_shapes: Path, tmp_path: Path) -> None:
    from timm.optim import Lamb

    module, _, _ = build(_cfg(scored_shapes, tmp_path, "module.optimizer=lamb", "module.lr=0.01",
                              "module.weight_decay=0.1"))
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, Lamb)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    # One step on one matrix, by hand: m/(sqrt(v)+eps) after bias correction is g/(|g|+eps); the update
    # adds wd * p, and is scaled by the trust ratio |p| / |update|.
    p = next(q for q in module.model.parameters() if q.ndim >= 2)
    before = p.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for q in module.model.parameters():
        q.grad = torch.randn(q.shape, generator=gen)
    grad = p.grad.clone()
    lr = optimizer.param_groups[0]["lr"]  # the warm-up schedule's first factor times module.lr
    assert lr == pytest.approx(0.01 / 200)
    optimizer.step()
    update = grad / (grad.abs() + 1e-6) + 0.1 * before
    trust = before.norm() / update.norm()
    torch.testing.assert_close(p.detach(), before - lr * trust * update, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="module.optimizer must be one of adamw, lamb"):  # Hydra wraps it
        build(_cfg(scored_shapes, tmp_path, "module.optimizer=sgd"))


def test_cc12m_composes_every_recipe_piece_as_miro_used_it() -> None:
    cfg = compose_config("train", ["+experiment=cc12m"])
    assert cfg.module.optimizer == "lamb" and cfg.module.self_cond_rate == 0.9
    assert cfg.model.self_conditioning and (cfg.model.refiner_depth, cfg.model.refiner_registers) == (2, 16)
    assert cfg.data.synthetic_caption_prob == 0.5
    assert list(cfg.data.filters) == [{"shards": "laion-*", "min_scores": {"aesthetic": 6.0}}]
    assert (cfg.sampling.guidance, cfg.sampling.steps, cfg.sampling.negative_prompt) == (7.0, 50, "")
    demo = compose_config("train", ["+experiment=shapes"])  # the embedded default keeps every piece off
    assert demo.module.optimizer == "adamw" and demo.module.self_cond_rate == 0.0
    assert demo.data.synthetic_caption_prob == 0.0 and demo.data.filters is None
