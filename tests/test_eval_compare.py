"""``miro-eval compare``: every reward's change before/after fine-tuning, optimised or not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from miro.cli import eval as eval_cli
from miro.eval.compare import CompareError, compare, load_results

SETTINGS = {"per_category": 16, "samples_per_prompt": 2, "seed": 0}


def results(model: str, alignment: float, sharpness: float, accuracy: float) -> dict:
    cond = "all targets 10"
    return {
        "model": model,
        "settings": dict(SETTINGS),
        "rewards_at": {
            cond: {
                "alignment": {"mean": alignment, "se": 0.03, "n": 192},
                "sharpness": {"mean": sharpness, "se": 0.04, "n": 192},
            }
        },
        "benchmark": {
            cond: [
                {
                    "category": "overall",
                    "n": 192,
                    "accuracy": accuracy,
                    "accuracy_se": 0.02,
                    "alignment": alignment,
                }
            ]
        },
    }


def write(tmp_path: Path, name: str, data: dict) -> Path:
    out = tmp_path / name
    out.mkdir()
    (out / "results.json").write_text(json.dumps(data))
    return out


def test_changes_and_z_scores_by_hand(tmp_path: Path) -> None:
    before = load_results(write(tmp_path, "before", results("base", 0.30, 2.0, 0.20)))
    after = load_results(write(tmp_path, "after", results("grpo", 0.40, 1.8, 0.26)))
    out = compare(before, after, ["alignment"])
    a, s = out["rewards"]["alignment"], out["rewards"]["sharpness"]
    assert a["optimised"] and not s["optimised"]
    assert a["delta"] == pytest.approx(0.10) and a["z"] == pytest.approx(0.10 / math.hypot(0.03, 0.03))
    assert s["delta"] == pytest.approx(-0.2) and s["z"] == pytest.approx(-0.2 / math.hypot(0.04, 0.04))
    assert out["benchmark"]["overall"]["delta"] == pytest.approx(0.06)


def test_cli_writes_a_table_with_the_unoptimised_rewards(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    b = write(tmp_path, "before", results("base", 0.30, 2.0, 0.20))
    a = write(tmp_path, "after", results("grpo", 0.40, 1.8, 0.26))
    assert (
        eval_cli.main(["compare", str(b), str(a), "--optimised", "alignment", "--out", str(tmp_path / "c")])
        == 0
    )
    table = (tmp_path / "c" / "comparison.md").read_text()
    assert "| alignment (optimised) | 0.300 ± 0.030 | 0.400 ± 0.030 | +0.100 | +2.4 |" in table
    assert "| sharpness | 2.000 ± 0.040 | 1.800 ± 0.040 | -0.200 | -3.5 |" in table
    assert str(tmp_path / "c" / "comparison.md") in capsys.readouterr().out


def test_mismatched_or_missing_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    b = write(tmp_path, "before", results("base", 0.3, 2.0, 0.2))
    other = results("grpo", 0.4, 1.8, 0.26)
    other["settings"]["seed"] = 1
    a = write(tmp_path, "after", other)
    with pytest.raises(CompareError, match="settings.seed = 1 differs"):
        compare(load_results(b), load_results(a), ["alignment"])
    with pytest.raises(CompareError, match=r"optimised reward\(s\) \['pick'\]"):
        compare(load_results(b), load_results(b), ["pick"])
    code = eval_cli.main(
        [
            "compare",
            str(b),
            str(tmp_path / "nowhere"),
            "--optimised",
            "alignment",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and err.count("\n") == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CompareError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")


def test_per_image_scores_give_a_paired_test(tmp_path: Path) -> None:
    before, after = results("base", 0.5, 2.0, 0.5), results("grpo", 0.625, 2.0, 0.625)
    before["per_image"] = {"all targets 10": {"alignment": [0.0, 1.0, 0.5, 1.0], "sharpness": [2.0] * 4}}
    after["per_image"] = {"all targets 10": {"alignment": [0.5, 1.0, 1.0, 1.0], "sharpness": [2.0] * 4}}
    # the judge's per-image metric (the shapes world's: every fact holds)
    before["per_image_metrics"] = {"all targets 10": {"accuracy": [0.0, 1.0, 0.0, 1.0]}}
    after["per_image_metrics"] = {"all targets 10": {"accuracy": [0.0, 1.0, 1.0, 1.0]}}
    out = compare(
        load_results(write(tmp_path, "b", before)), load_results(write(tmp_path, "a", after)), ["alignment"]
    )
    a = out["rewards"]["alignment"]
    # per-image changes 0.5, 0, 0.5, 0: mean 0.25, sd 0.2887, se 0.1443 -> z = 1.732
    assert (
        a["paired"]
        and a["delta_se"] == pytest.approx(0.1443, abs=1e-4)
        and a["z"] == pytest.approx(1.732, abs=1e-3)
    )
    assert out["rewards"]["sharpness"]["paired"] and out["rewards"]["sharpness"]["z"] == 0.0
    # every fact holds: 0,1,0,1 -> 0,1,1,1; changes 0, 0, 1, 0: mean 0.25, se 0.25 -> z = 1
    overall = out["benchmark"]["overall"]
    assert overall["paired"] and overall["z"] == pytest.approx(1.0)
