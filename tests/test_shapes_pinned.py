"""The shapes benchmark's numbers, pinned: computed with the evaluator as it was before the benchmark
became a plug-in (commit 7f42765, fp32, one thread), so the move of the shapes world out of the core and the
Benchmark interface are checked to change no number.

Two runs: the tiny random model (its images draw nothing, so accuracy is 0 and the pinned values are the
rewards), and a stand-in generator that draws the scene each prompt describes except on chosen seeds
(so the all-facts-hold accuracy, its standard errors, the sweep's accuracy and the paired contrast are
non-trivial).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from test_eval import render, wrong_spec
from tiny_models import export_tiny_model

from miro.eval.runner import EvalResults, EvalSettings, Evaluator, control_check
from miro.pipeline import MiroPipeline
from miro.scoring import build_rewards, reward_specs
from miro.shapes.benchmark import ShapesBenchmark
from miro.shapes.captions import parse_spec

CATEGORIES = ["single_object", "two_object", "counting", "colors", "color_attr", "position", "overall"]
TOP, LOW = "all targets 10", "alignment 0, others 10"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> MiroPipeline:
    model = export_tiny_model(tmp_path_factory.mktemp("m"), scored_shapes / "bins.json")
    return MiroPipeline.from_pretrained(model, "cpu", "fp32")  # not auto: bf16 on some CPUs, not others


def evaluate(pipe: MiroPipeline, per_category: int, settings: EvalSettings) -> EvalResults:
    rewards = build_rewards(reward_specs(["alignment", "sharpness"]))
    return Evaluator(pipe, rewards, settings, ShapesBenchmark(per_category, seed=0)).run("tiny")


def rows(res: EvalResults, condition: str, key: str) -> list[tuple[str, int, float]]:
    return [(r["category"], r["n"], r[key]) for r in res.benchmark[condition]]


def table(n: int, values: list[float]) -> list[tuple[str, int, float]]:
    """Rows of six categories with n images each, then the overall row."""
    return list(zip(CATEGORIES, [n] * 6 + [6 * n], values, strict=True))


def test_tiny_model_numbers_are_unchanged(pipe: MiroPipeline) -> None:
    settings = EvalSettings(samples_per_prompt=2, sweep_levels=(0.0, 10.0), sweep_images=4,
                            best_of_prompts=2, best_of_max=2, steps=2)
    res = evaluate(pipe, 2, settings)
    assert res.images_generated == 56
    assert list(res.benchmark) == [TOP, LOW]
    assert rows(res, TOP, "alignment") == table(4, [0.0, 0.125, 0, 0, 0, 0, 0.125 / 6])
    assert rows(res, LOW, "alignment") == table(4, [0.0, 0.375, 0, 0, 0, 0, 0.0625])
    assert all(r["accuracy"] == 0.0 and r["accuracy_se"] == 0.0 for r in res.benchmark[TOP])
    top = res.rewards_at[TOP]
    assert top["alignment"] == pytest.approx(
        {"mean": 0.02083333395421505, "se": 0.02083333409149515, "n": 24})
    assert top["sharpness"] == pytest.approx(
        {"mean": 0.06609870493412018, "se": 0.006651720364552923, "n": 24}, rel=1e-5)
    assert res.rewards_at[LOW]["sharpness"]["mean"] == pytest.approx(0.059677496552467346, rel=1e-5)
    sharp = res.contrasts["sharpness"]["reward"]
    assert sharp["difference"] == pytest.approx(-0.012352614663541317, rel=1e-4)
    assert sharp["z"] == pytest.approx(-2.8580886205526737, rel=1e-3)
    assert res.contrasts["alignment"]["reward"]["difference"] == pytest.approx(-0.0416666679084301)
    assert res.best_of_n["tiny"]["alignment"] == [0.0, 0.0]
    assert res.best_of_n["tiny"]["sharpness"] == pytest.approx(
        [0.04758466919884086, 0.06588313728570938], rel=1e-5)
    check = control_check(res)
    assert check["alignment_accuracy"] == pytest.approx(
        {"low_target": 0.0, "high_target": 0.0, "difference": 0.0, "se": 0.0, "z": 0.0, "n": 24,
         "significant": False})
    assert not check["sharpness"]["rises"] and not check["sharpness"]["within_data_range"]


def drawing(
    self: Evaluator, pipe: MiroPipeline, prompts: Sequence[str], seeds: Sequence[int],
    targets: Mapping[str, float],
) -> torch.Tensor:
    """The scene each prompt describes, with its first shape wrong on seeds 0 mod 4 and, at alignment
    target 0, also on seeds 1 mod 4: a model whose accuracy is 3/4 at the top target and 1/2 at the bottom."""
    level = round(dict(targets).get("alignment", 0.0))
    wrong = [s % 4 == 0 or (level == 0 and s % 4 == 1) for s in seeds]
    specs = [parse_spec(p) for p in prompts]
    specs = [wrong_spec(spec, "shape") if w else spec for spec, w in zip(specs, wrong, strict=True)]
    self.images_generated += len(specs)
    return render(specs)


def test_accuracy_numbers_are_unchanged(pipe: MiroPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Evaluator, "generate", drawing)
    settings = EvalSettings(samples_per_prompt=2, sweep_levels=(0.0, 5.0, 10.0),
                            sweep_images=4, best_of_prompts=2, best_of_max=3, steps=2)
    res = evaluate(pipe, 3, settings)
    assert res.images_generated == 122
    half, se6 = 0.5, 0.2041241452319315
    assert rows(res, TOP, "accuracy") == table(6, [half, 1, half, 1, half, 1, 0.75])
    assert [r["accuracy_se"] for r in res.benchmark[TOP]] == pytest.approx([se6, 0, se6, 0, se6, 0,
                                                                            0.05892556509887897])
    assert [r["alignment"] for r in res.benchmark[TOP]] == pytest.approx([0.5, 1, 0.5, 1, 0.75, 1,
                                                                          0.7916666666666666])
    assert rows(res, LOW, "accuracy") == table(6, [0, 1, 0, 1, 0, 1, 0.5])
    assert [r["alignment"] for r in res.benchmark[LOW]] == pytest.approx(
        [0, 1, 0, 1, 0.5, 1, 0.5833333333333334])
    assert res.rewards_at[TOP]["alignment"] == pytest.approx({"mean": 0.7916666865348816,
                                                              "se": 0.06416434546311696, "n": 36})
    sweep = res.sweeps["alignment"]
    assert [p["target"] for p in sweep] == [0.0, 5.0, 10.0]
    assert [p["accuracy"] for p in sweep] == [0.5, 0.75, 0.75]
    assert [p["accuracy_se"] for p in sweep] == pytest.approx([0.08333333333333333, 0.07216878364870322,
                                                               0.07216878364870322])
    assert [p["mean"] for p in sweep] == pytest.approx(
        [0.5833333134651184, 0.7916666865348816, 0.7916666865348816])
    assert res.contrasts["alignment"]["accuracy"] == pytest.approx(
        {"difference": 0.25, "se": 0.07319250702857971, "z": 3.415650182639347, "n": 36})
    assert res.contrasts["alignment"]["reward"] == pytest.approx(
        {"difference": 0.2083333283662796, "se": 0.06416434546311696, "z": 3.2468706235931926, "n": 36})
    assert res.best_of_n["tiny"]["alignment"] == [0.75, 1.0, 1.0]
    check = control_check(res)
    assert check["alignment_accuracy"] == pytest.approx(
        {"low_target": 0.5, "high_target": 0.75, "difference": 0.25, "se": 0.07319250702857971,
         "z": 3.415650182639347, "n": 36, "significant": True})
