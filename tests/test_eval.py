"""The evaluator: the GenEval-style benchmark and its judge, the statistics, and ``miro-eval`` end to end."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import export_tiny_model

from miro.cli.eval import main
from miro.eval.runner import (
    EvalResults,
    EvalSettings,
    Evaluator,
    control_check,
    expected_best_of,
    paired_difference,
)
from miro.pipeline import MODEL_DEFAULT, MiroPipeline
from miro.shapes.alignment import AlignmentReward
from miro.shapes.benchmark import (
    CATEGORIES,
    BenchmarkPrompt,
    ShapesBenchmark,
    benchmark_prompts,
    score_benchmark,
)
from miro.shapes.captions import COLOURS, SHAPES, CaptionSpec, parse_spec, render_caption
from miro.shapes.scenes import Scene, ShapeObject, render_scene

# -- rendering the scene a prompt describes, or a scene that gets one thing wrong ------------------------

CELLS = [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)]
PLACES = {"left of": [(0.27, 0.5), (0.73, 0.5)], "right of": [(0.73, 0.5), (0.27, 0.5)],
          "above": [(0.5, 0.27), (0.5, 0.73)], "below": [(0.5, 0.73), (0.5, 0.27)]}
UNCOLOURED = ("red", "blue")  # colours for phrases that name none


def scene_for(spec: CaptionSpec) -> Scene:
    """Every object the spec names, on a 2 x 2 grid (or placed as its relation says)."""
    kinds = [(p.shape, p.colour or UNCOLOURED[i]) for i, p in enumerate(spec.phrases) for _ in range(p.count)]
    centres = PLACES[spec.relation] if spec.relation else CELLS
    objects = (ShapeObject(s, c, xy, 0.3) for (s, c), xy in zip(kinds, centres, strict=False))
    return Scene("charcoal", tuple(objects))


def _unused(options: tuple[str, ...], used: set[str | None]) -> str:
    return next(o for o in options if o not in used)


def wrong_spec(spec: CaptionSpec, mistake: str) -> CaptionSpec:
    """What gets drawn instead of ``spec`` when a generator makes ``mistake``."""
    ps = list(spec.phrases)
    if mistake == "shape":
        ps[0] = replace(ps[0], shape=_unused(SHAPES, {p.shape for p in ps}))
    elif mistake == "colour":
        ps[0] = replace(ps[0], colour=_unused(COLOURS, {p.colour for p in ps}))
    elif mistake == "swapped colours":  # attribute binding: right colours on the wrong objects
        ps = [replace(ps[0], colour=ps[1].colour), replace(ps[1], colour=ps[0].colour)]
    elif mistake == "count":
        ps[0] = replace(ps[0], count=ps[0].count + 1 if ps[0].count < 4 else ps[0].count - 1)
    elif mistake == "relation":
        ps = ps[::-1]
    elif mistake == "missing object":
        ps = ps[:1]
    else:
        raise ValueError(mistake)
    return replace(spec, phrases=tuple(ps))


def render(specs: list[CaptionSpec], size: int = 32) -> torch.Tensor:
    arrays = [np.array(render_scene(scene_for(s), size)) for s in specs]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def judge() -> AlignmentReward:
    return AlignmentReward()


# -- the benchmark ---------------------------------------------------------------------------------------


def test_benchmark_covers_the_six_geneval_categories_evenly_and_reproducibly() -> None:
    items = benchmark_prompts(per_category=5, seed=0)
    assert CATEGORIES == ("single_object", "two_object", "counting", "colors", "color_attr", "position")
    assert len(items) == 30 and [p.category for p in items[:6]] == list(CATEGORIES)  # interleaved
    assert all(sum(p.category == c for p in items) == 5 for c in CATEGORIES)
    assert items == benchmark_prompts(per_category=5, seed=0)
    assert [p.prompt for p in items] != [p.prompt for p in benchmark_prompts(per_category=5, seed=1)]
    for item in items:
        assert render_caption(item.spec) == item.prompt and parse_spec(item.prompt) == item.spec
        phrases, relation = item.spec.phrases, item.spec.relation
        expected_shape = {
            "single_object": len(phrases) == 1 and phrases[0].colour is None,
            "two_object": len(phrases) == 2 and phrases[0].shape != phrases[1].shape,
            "counting": len(phrases) == 1 and phrases[0].exact and 2 <= phrases[0].count <= 4,
            "colors": len(phrases) == 1 and phrases[0].colour is not None,
            "color_attr": len(phrases) == 2 and phrases[0].colour != phrases[1].colour and relation is None,
            "position": len(phrases) == 2 and relation is not None,
        }[item.category]
        assert expected_shape, item
    # single_object has three distinct prompts: repeated in order to fill its quota
    singles = [p.prompt for p in items if p.category == "single_object"]
    assert len(set(singles)) == 3 and singles[3:] == singles[:2]


def test_correct_renders_are_scored_correct(judge: AlignmentReward) -> None:
    items = benchmark_prompts(per_category=6, seed=0)
    scores = judge.score(render([p.spec for p in items]), [p.prompt for p in items])
    rows, overall = score_benchmark(items, scores)
    assert [r.category for r in rows] == list(CATEGORIES)
    assert all(r.accuracy == 1.0 and r.alignment == 1.0 and r.n == 6 for r in rows)
    assert overall.accuracy == 1.0 and overall.n == 36


@pytest.mark.parametrize(
    ("category", "mistake"),
    [
        ("single_object", "shape"),
        ("two_object", "shape"),
        ("two_object", "missing object"),
        ("counting", "count"),
        ("counting", "colour"),
        ("colors", "colour"),
        ("colors", "shape"),
        ("color_attr", "swapped colours"),
        ("color_attr", "colour"),
        ("position", "relation"),
        ("position", "colour"),
    ],
)
def test_wrong_renders_are_scored_wrong(judge: AlignmentReward, category: str, mistake: str) -> None:
    items = [p for p in benchmark_prompts(per_category=6, seed=0) if p.category == category]
    scores = judge.score(render([wrong_spec(p.spec, mistake) for p in items]), [p.prompt for p in items])
    assert (scores < 1.0).all(), [p.prompt for p, s in zip(items, scores, strict=True) if s >= 1.0]
    rows, _ = score_benchmark(items, scores)
    assert rows[0].accuracy == 0.0
    if len(items[0].spec.phrases) == 2 and mistake != "swapped colours":
        assert (scores > 0.0).all()  # partial credit: the facts about the other object still hold


def test_score_benchmark_by_hand() -> None:
    spec = parse_spec("a red circle")
    items = [BenchmarkPrompt("colors", "a red circle", spec)] * 4
    items += [BenchmarkPrompt("counting", "two red circles", spec)] * 2
    rows, overall = score_benchmark(items, torch.tensor([1.0, 1.0, 0.5, math.nan, 0.0, 1.0]))
    counting, colors = rows  # in the benchmark's category order
    assert (colors.category, colors.n, colors.accuracy) == ("colors", 4, 0.5)
    assert colors.accuracy_se == pytest.approx(math.sqrt(0.25 / 4))
    assert colors.alignment == pytest.approx(2.5 / 4)  # NaN (uncheckable prompt) counts as 0
    assert (counting.accuracy, counting.alignment) == (0.5, 0.5)
    assert overall.accuracy == 0.5 and overall.n == 6
    assert overall.accuracy_se == pytest.approx(math.sqrt(0.25 / 4 + 0.25 / 2) / 2)
    with pytest.raises(ValueError, match="6 prompts but alignment scores of shape"):
        score_benchmark(items, torch.ones(5))


# -- statistics ------------------------------------------------------------------------------------------


def test_paired_difference_by_hand() -> None:
    high, low = torch.tensor([1.0, 1.0, 0.0, 1.0, math.nan]), torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    d = paired_difference(high, low)
    # differences [1, 0, 0, 1] (the NaN pair dropped): mean 0.5, sample sd sqrt(1/3), se sqrt(1/3) / 2
    se = math.sqrt(1 / 3) / 2
    assert d["n"] == 4 and d["difference"] == 0.5
    assert d["se"] == pytest.approx(se) and d["z"] == pytest.approx(0.5 / se)
    same_shift = paired_difference(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0]))
    assert same_shift["se"] == 0.0 and same_shift["z"] == math.inf
    assert paired_difference(torch.ones(3), torch.ones(3))["z"] == 0.0


def test_expected_best_of_matches_enumerating_every_subset() -> None:
    values = torch.tensor([[0.3, 0.9, 0.1, 0.5, 0.7], [2.0, 1.0, 4.0, 3.0, 0.0]])
    curve = expected_best_of(values)
    for n in range(1, 6):
        per_row = [np.mean([max(c) for c in itertools.combinations(row.tolist(), n)]) for row in values]
        brute = float(np.mean(per_row))
        assert curve[n - 1] == pytest.approx(brute)
    assert curve[0] == pytest.approx(float(values.mean())) and curve[-1] == pytest.approx(2.45)
    assert expected_best_of(values, max_n=2) == curve[:2]


def _results(means: list[float], z: float, data_range: tuple[float, float] = (0.0, 1.0)) -> EvalResults:
    points = [{"target": t, "mean": m, "se": 0.05, "n": 50, "accuracy": m, "accuracy_se": 0.05}
              for t, m in zip([0.0, 5.0, 10.0], means, strict=True)]
    contrast = {"difference": means[-1] - means[0], "se": (means[-1] - means[0]) / z, "z": z, "n": 50}
    return EvalResults("m", {}, sweeps={"alignment": points},
                       contrasts={"alignment": {"reward": contrast, "accuracy": contrast}},
                       data_range={"alignment": data_range})


def test_rising_needs_more_than_two_standard_errors() -> None:
    noise = control_check(_results([0.30, 0.33, 0.36], z=1.5))
    assert noise["alignment"]["slope_per_target_unit"] == pytest.approx(0.006)  # positive, but ...
    assert not noise["alignment"]["rises"] and not noise["alignment_accuracy"]["significant"]
    signal = control_check(_results([0.30, 0.36, 0.42], z=2.5))
    assert signal["alignment"]["rises"] and signal["alignment_accuracy"]["significant"]
    accuracy = signal["alignment_accuracy"]
    assert (accuracy["low_target"], accuracy["high_target"]) == (0.30, 0.42)
    assert signal["alignment"]["within_data_range"]
    outside = control_check(_results([0.30, 0.36, 0.42], z=2.5, data_range=(0.0, 0.4)))
    assert not outside["alignment"]["within_data_range"]


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="at least two distinct targets"):
        EvalSettings(sweep_levels=(5.0, 5.0))
    with pytest.raises(ValueError, match=r"in \[0, 10\]"):
        EvalSettings(sweep_levels=(0.0, 12.0))
    with pytest.raises(ValueError, match="per_category must be at least 1"):
        ShapesBenchmark(per_category=0)


# -- the evaluator on a tiny model -----------------------------------------------------------------------

TINY = ["--per-category", "2", "--samples-per-prompt", "1", "--sweep-levels", "0,10", "--sweep-images", "4",
        "--best-of", "2", "--best-of-prompts", "2", "--steps", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> Path:
    # recorded as +experiment=shapes records it: miro-eval's default benchmark for this model
    return export_tiny_model(tmp_path_factory.mktemp("model"), scored_shapes / "bins.json",
                             benchmark="shapes")


def test_evaluator_reuses_images_and_pairs_its_comparisons(checkpoint: Path) -> None:
    pipe = MiroPipeline.from_pretrained(checkpoint)
    rewards = {"alignment": AlignmentReward()}
    settings = EvalSettings(samples_per_prompt=2, sweep_levels=(0.0, 5.0, 10.0),
                            sweep_images=4, best_of_prompts=2, best_of_max=3, steps=2)
    evaluator = Evaluator(pipe, rewards, settings, ShapesBenchmark(per_category=2))
    # 24 items at all targets 10 (= the alignment sweep's top), 2 more alignment levels, best-of 2 x 3
    assert evaluator.total_images() == 24 + 2 * 24 + 6
    res = evaluator.run("tiny")
    assert res.images_generated == evaluator.total_images()
    top = res.sweeps["alignment"][-1]
    assert top["mean"] == pytest.approx(res.rewards_at["all targets 10"]["alignment"]["mean"], nan_ok=True)
    assert list(res.benchmark) == ["all targets 10", "alignment 0, others 10"]
    assert res.contrasts["alignment"]["accuracy"]["n"] == 24
    from miro.utils.hardware import resolve_precision

    assert {k: res.sampling[k] for k in ("guidance", "steps", "precision")} == {
        "guidance": 1.5, "steps": 2, "precision": resolve_precision("auto", "cpu").name
    }
    assert res.sampling["threads"] == torch.get_num_threads() and res.sampling["cpu_kind"]
    assert len(res.best_of_n["tiny"]["alignment"]) == 3


def test_miro_eval_writes_json_markdown_and_plots(checkpoint: Path, tmp_path: Path, capsys) -> None:
    baseline = export_tiny_model(tmp_path / "baseline", None, reward_names=[], seed=1)
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(checkpoint), "--baseline", str(baseline), "--out", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out
    for name in ("report.md", "results.json", "reward_control.png", "best_of_n.png"):
        assert str(out / name) in stdout
    for plot in ("reward_control.png", "best_of_n.png"):
        assert Image.open(out / plot).format == "PNG"

    def no_constants(name: str) -> None:
        raise AssertionError(f"results.json is not strict JSON: {name}")

    results = json.loads((out / "results.json").read_text(), parse_constant=no_constants)
    assert set(results["sweeps"]) == {"alignment", "sharpness", "colorfulness", "compressibility"}
    assert [p["target"] for p in results["sweeps"]["sharpness"]] == [0.0, 10.0]
    assert set(results["best_of_n"]) == {checkpoint.name, "baseline"}
    assert results["data_range"]["alignment"] == [0.0, 1.0]
    assert {"alignment_accuracy", "alignment", "sharpness"} <= set(results["checks"])
    from miro.utils.hardware import resolve_precision

    # miro-eval's default precision is auto: bf16 only on a CPU that computes it natively
    expected = resolve_precision("auto", "cpu").name
    assert {k: results["sampling"][k] for k in ("guidance", "steps", "precision")} == {
        "guidance": 1.5, "steps": 2, "precision": expected
    }
    report = (out / "report.md").read_text()
    for heading in ("## Benchmark accuracy", "## Mean rewards", "## Reward control", "## Alignment control",
                    "## Best-of-N", "![reward control](reward_control.png)"):
        assert heading in report
    assert "| position | 2 |" in report


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sweep-levels", "0,x"], "--sweep-levels must be numbers"),
        (["--sweep-levels", "5"], "at least two distinct targets"),
        (["--rewards", "nope"], "unknown reward 'nope'"),
        (["--per-category", "0"], "per_category must be at least 1"),
    ],
)
def test_miro_eval_bad_input_is_one_line(checkpoint: Path, tmp_path: Path, capsys, args: list[str],
                                         expected: str) -> None:
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("miro-eval: ") and expected in err
    assert not (tmp_path / "eval").exists()


def test_miro_eval_missing_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such model directory" in err


# -- the negative branch (the guidance study) ------------------------------------------------------------

ONE = ShapesBenchmark(per_category=1)  # six prompts


def test_negative_branch_options_reach_the_model_not_the_baseline(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = export_tiny_model(tmp_path / "baseline", None, reward_names=[], seed=1)
    calls: list[tuple[bool, str | None, str | None]] = []
    original = MiroPipeline.__call__

    def spy(self, prompts, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append((bool(self.reward_names), kwargs.get("negative_prompt"), kwargs.get("negative_rewards")))
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(MiroPipeline, "__call__", spy)
    out = tmp_path / "eval"
    args = ["--checkpoint", str(checkpoint), "--baseline", str(baseline), "--out", str(out), *TINY,
            "--negative-prompt", "", "--negative-rewards", "alignment=0"]
    assert main(args) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["negative_prompt"] == "" and settings["negative_rewards"] == "alignment=0"
    own, base = [c for c in calls if c[0]], [c for c in calls if not c[0]]
    assert own and all(c[1:] == ("", "alignment=0") for c in own)
    # the baseline keeps its own sampling (its model's negative caption, its negative rewards)
    assert base and all(c[1:] == (MODEL_DEFAULT, None) for c in base)


def test_push_reaches_the_model_and_is_checked_early(checkpoint: Path) -> None:
    pipe = MiroPipeline.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="push or negative_rewards"):
        Evaluator(pipe, {}, EvalSettings(push="sharpness", negative_rewards="alignment=0"), ONE)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        Evaluator(pipe, {}, EvalSettings(push="nope"), ONE)
    settings = EvalSettings(samples_per_prompt=1, steps=2, guidance=3.0, push="sharp")
    pushed = Evaluator(pipe, {}, settings, ONE)
    others = ",".join(f"{n}=10" for n in pipe.reward_names if n != "sharpness")
    spelled = Evaluator(pipe, {}, EvalSettings(samples_per_prompt=1, steps=2, guidance=3.0,
                                               negative_rewards=others), ONE)
    assert torch.equal(pushed.images(pushed.top(), 2), spelled.images(spelled.top(), 2))


def test_an_empty_negative_prompt_changes_the_images(checkpoint: Path) -> None:
    pipe = MiroPipeline.from_pretrained(checkpoint)

    def images(**negative: str) -> torch.Tensor:
        settings = EvalSettings(samples_per_prompt=1, steps=2, guidance=3.0, **negative)
        evaluator = Evaluator(pipe, {}, settings, ONE)
        return evaluator.images(evaluator.top(), 3)

    default = images()
    assert torch.equal(default, images())
    assert not torch.equal(default, images(negative_prompt=""))
    # The tiny model's own negative branch is every reward at 0: "" names the same, sharpness=10 does not.
    assert torch.equal(default, images(negative_rewards=""))
    assert not torch.equal(default, images(negative_rewards="sharpness=10"))


def test_bad_negative_rewards_are_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "e")]
    assert main(["--checkpoint", str(checkpoint), *out, "--negative-rewards", "nope=1"]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err
    baseline = export_tiny_model(tmp_path / "baseline", None, reward_names=[], seed=1)
    assert main(["--checkpoint", str(baseline), *out, "--negative-rewards", ""]) == 2
    err = capsys.readouterr().err  # this export records no benchmark
    assert err.count("\n") == 1 and "records no benchmark" in err and "--benchmark shapes" in err
    assert main(["--checkpoint", str(baseline), *out, "--negative-rewards", "", "--benchmark", "shapes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a model with reward conditioning" in err
    assert not (tmp_path / "e").exists()


def test_a_bad_sampling_request_fails_before_the_model_loads(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """miro-eval checks targets, push and the negative branch with the resolver sampling uses
    (miro.pipeline.resolve_request), on config.json alone: one line, no model loaded, nothing written."""

    def no_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(MiroPipeline, "from_pretrained", no_load)
    out = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "e")]
    cases = {
        ("--push", "nope"): "unknown reward 'nope'",
        ("--push", "sharpness", "--negative-rewards", ""): "give either push or negative rewards, not both",
        ("--targets", "sharpness=11"): "sharpness",
        ("--targets", "nope=3"): "unknown reward 'nope'",
    }
    for flags, message in cases.items():
        assert main([*out, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (flags, err)
    assert not (tmp_path / "e").exists()
