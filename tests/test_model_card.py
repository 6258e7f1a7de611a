"""The model card every export carries: the Hub's YAML header, the export's own rewards, bins, training
steps and sampling defaults, and the evaluation section miro-eval fills in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import OFFLINE_REWARDS
from tiny_models import SAMPLING, export_tiny_model

from miro.cli import export as export_cli
from miro.model_card import EVAL_END, EVAL_START, NOT_EVALUATED, update_card_evaluation


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, scored_shapes: Path) -> Path:
    root = tmp_path_factory.mktemp("card")
    return export_tiny_model(root / "myrun" / "export", scored_shapes / "bins.json")


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_every_export_has_a_card_with_the_hub_header(export: Path, scored_shapes: Path) -> None:
    card = (export / "README.md").read_text()
    header = _front_matter(card)
    assert header["library_name"] == "miro" and header["pipeline_tag"] == "text-to-image"
    assert header["license"] == "apache-2.0" and {"miro", "text-to-image"} <= set(header["tags"])
    assert "\n# myrun\n" in card  # named after the run, not "export"
    bins = json.loads((scored_shapes / "bins.json").read_text())
    for name in OFFLINE_REWARDS:
        row = next(line for line in card.splitlines() if line.startswith(f"| {name} |"))
        edges = bins["rewards"][name]["edges"]
        assert row.split(" | ")[1] == str(len(edges) + 1)
        assert ", ".join(f"{e:.4g}" for e in edges) in row
    assert f"{bins['n_records']} scored samples, binned into {bins['n_bins']} levels" in card
    for key, value in SAMPLING.items():
        assert f"- {key}: {value}" in card
    assert "--rewards alignment=10,sharpness=10,colorfulness=10,compressibility=10" in card
    assert f"{EVAL_START}\n{NOT_EVALUATED}\n{EVAL_END}" in card


def test_training_steps_are_on_the_card(tmp_path: Path) -> None:
    from tiny_models import TEXT_CONFIG, tiny_model, tiny_text_encoder

    from miro.pretrained import save_pretrained

    text = tiny_text_encoder()
    extra = {"training": {"global_step": 1234}, "source": "runs/base/export"}
    save_pretrained(tmp_path, tiny_model(), text, TEXT_CONFIG | {"vocab": list(text.words)}, OFFLINE_REWARDS,
                    None, 24, SAMPLING, extra=extra)
    card = (tmp_path / "README.md").read_text()
    assert "- optimiser steps: 1234" in card and "fine-tuned (GRPO) from: `runs/base/export`" in card


def test_evaluation_section_is_replaced_not_appended(export: Path, tmp_path: Path) -> None:
    model = tmp_path / "export"
    model.mkdir()
    for path in export.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    update_card_evaluation(model, "first results")
    update_card_evaluation(model, "second results")
    card = (model / "README.md").read_text()
    assert card.count(EVAL_START) == 1 and "first results" not in card
    assert f"{EVAL_START}\nsecond results\n{EVAL_END}" in card
    assert card.split(EVAL_START)[0] == (export / "README.md").read_text().split(EVAL_START)[0]


def test_miro_export_card_rewrites_a_missing_card(export: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "old"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model / name).write_bytes((export / name).read_bytes())
    assert export_cli.main(["card", str(model)]) == 0
    assert _front_matter((model / "README.md").read_text())["library_name"] == "miro"
    (model / "config.json").write_text("{broken")
    assert export_cli.main(["card", str(model)]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err


def test_miro_eval_fills_in_the_evaluated_exports_card(export: Path, tmp_path: Path) -> None:
    from miro.cli import eval as eval_cli

    model = tmp_path / "run" / "export"
    model.mkdir(parents=True)
    for path in export.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    tiny = ["--benchmark", "shapes", "--per-category", "1", "--samples-per-prompt", "1",
            "--sweep-levels", "0,10", "--sweep-images", "2", "--best-of", "0", "--steps", "1",
            "--rewards", "alignment"]
    assert eval_cli.main(["--checkpoint", str(model), "--out", str(tmp_path / "eval"), *tiny]) == 0
    card = (model / "README.md").read_text()
    section = card.split(EVAL_START)[1].split(EVAL_END)[0]
    assert NOT_EVALUATED not in card and "### Mean rewards on the benchmark images" in section
    assert "| all targets 10 |" in section and "| alignment 0, others 10 |" in section
    assert section.strip() in (tmp_path / "eval" / "model_card_evaluation.md").read_text()
