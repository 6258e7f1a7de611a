"""ExportPretrained's periodic exports: one loadable export per N steps, holding that step's EMA weights;
and SampleGrid, whose images are those the export makes with its sampling defaults."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from miro.config import compose_config
from miro.lit.callbacks import ExportPretrained, SampleGrid
from miro.pipeline import MiroPipeline, image_grid
from miro.pretrained import load_pretrained
from miro.train import build


class _EmaAt(L.Callback):
    """Copies the EMA weights at the end of every optimiser step (after the EMA update)."""

    def __init__(self) -> None:
        self.ema: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.ema[trainer.global_step] = {k: v.clone() for k, v in pl_module.ema_model.state_dict().items()}


def _train(scored_shapes: Path, out: Path, *extra: str, grid: bool = False) -> tuple[_EmaAt, L.Trainer]:
    cfg = compose_config(
        "train",
        [
            "+experiment=shapes",
            f"paths.data_dir={scored_shapes}",
            f"paths.output_dir={out}",
            "model=dit_tiny",
            "data.image_size=24",
            "data.batch_size=4",
            "trainer.max_steps=5",
            "module.warmup_steps=1",
            *([] if grid else ["~callbacks.sample_grid"]),
            "~callbacks.checkpoint",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *extra,
        ],
    )
    module, datamodule, trainer = build(cfg)
    record = _EmaAt()
    trainer.callbacks.append(record)
    trainer.fit(module, datamodule=datamodule)
    return record, trainer


def _weights(export: Path) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("model."): v
        for k, v in load_file(str(export / "model.safetensors")).items()
        if k.startswith("model.")
    }


def test_periodic_exports_hold_the_ema_weights_of_their_step(scored_shapes: Path, tmp_path: Path) -> None:
    record, trainer = _train(scored_shapes, tmp_path, "++callbacks.export.every_n_steps=2")
    assert trainer.global_step == 5
    exports = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert exports == ["step0000002", "step0000004"]  # 5 is not a multiple of 2: only the final export
    for step in (2, 4):
        folder = tmp_path / "exports" / f"step{step:07d}"
        config = json.loads((folder / "config.json").read_text())
        assert config["training"]["global_step"] == step
        assert config["benchmark"] == "shapes"  # +experiment=shapes's: miro-eval's default for the model
        weights = _weights(folder)
        assert weights.keys() == record.ema[step].keys()
        assert all(torch.equal(weights[k], v) for k, v in record.ema[step].items())
        assert load_pretrained(folder).reward_names == [
            "alignment",
            "sharpness",
            "colorfulness",
            "compressibility",
        ]
    early, late = (
        _weights(tmp_path / "exports" / "step0000002"),
        _weights(tmp_path / "exports" / "step0000004"),
    )
    assert any(not torch.equal(early[k], late[k]) for k in early)
    final = _weights(tmp_path / "export")
    assert all(torch.equal(final[k], v) for k, v in record.ema[5].items())


def test_exports_once_per_step_under_gradient_accumulation(
    scored_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import miro.lit.callbacks as callbacks

    written: list[str] = []
    save = callbacks.save_pretrained

    def spy(out_dir, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        written.append(Path(out_dir).name)
        return save(out_dir, *args, **kwargs)

    monkeypatch.setattr(callbacks, "save_pretrained", spy)
    # Two batches per optimiser step: step 2 ends at batches 4 and 5 (1-based), but is exported once.
    _, trainer = _train(
        scored_shapes,
        tmp_path,
        "++callbacks.export.every_n_steps=2",
        "+trainer.accumulate_grad_batches=2",
        "trainer.max_steps=4",
    )
    assert trainer.global_step == 4
    assert written == ["step0000002", "step0000004", "export"]


def test_no_periodic_exports_by_default(scored_shapes: Path, tmp_path: Path) -> None:
    _train(scored_shapes, tmp_path, "trainer.max_steps=2")
    assert not (tmp_path / "exports").exists() and (tmp_path / "export" / "config.json").is_file()


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="every_n_steps must be >= 0"):
        ExportPretrained("out", {}, every_n_steps=-1)


def test_sample_grid_samples_as_the_exported_model(scored_shapes: Path, tmp_path: Path) -> None:
    # MIRO's sampling options (cc12m's negative caption, a ramped guidance interval) in the run's defaults.
    options = ['sampling.negative_prompt=""', "sampling.guidance_interval=[0.2,0.9]",
               "sampling.guidance_ramp=linear", "sampling.guidance=3.0", "sampling.steps=3",
               "callbacks.sample_grid.every_n_steps=0"]
    _, trainer = _train(scored_shapes, tmp_path, *options, "trainer.max_steps=2", grid=True)
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, SampleGrid))
    pipe = MiroPipeline.from_pretrained(tmp_path / "export")
    assert pipe.pretrained.sampling["negative_prompt"] == "" and pipe.pretrained.bins is not None
    rows = [pipe(callback.prompts, rewards=dict.fromkeys(pipe.reward_names, target), seed=callback.seed,
                 output="tensor") for target in (10, 0)]
    want = image_grid(torch.cat(rows), ncol=len(callback.prompts), upscale=callback.upscale)
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_0000002.png"))
    assert np.array_equal(grid, want.permute(1, 2, 0).numpy())
    # The options change the images: the grid's old settings (same caption, plain guidance) differ.
    old = pipe(callback.prompts, negative_prompt=None, guidance_interval=None, guidance_ramp="constant",
               seed=callback.seed, output="tensor")
    assert not torch.equal(old, rows[0])


def test_sample_grid_refuses_bad_sampling_before_training() -> None:
    module = SimpleNamespace(reward_names=["alignment", "sharpness"])
    grid = SampleGrid(["a red circle"], sampling={"guidance_interval": [0.9, 0.2]})
    with pytest.raises(ValueError, match="guidance interval must satisfy"):
        grid.setup(None, module, "fit")
    grid = SampleGrid(["a red circle"], sampling={"guided_rewards": ["aesthetic"]})
    with pytest.raises(ValueError, match="unknown reward 'aesthetic'"):
        grid.setup(None, module, "fit")
    SampleGrid(["a red circle"], sampling={"guided_rewards": ["alignment"]}).setup(None, module, "fit")
