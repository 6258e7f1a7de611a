"""The benchmarks a real text-to-image model is evaluated on: GenEval's layout and its summary, and any
prompt file judged by rewards, run through ``miro-eval`` on a cc12m-style export (latents, a VAE, the
seven MIRO reward names) made of tiny random stand-ins."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import SAMPLING, TINY_VAE, tiny_text_encoder

from miro.cli import eval as eval_cli
from miro.cli.rewards import MIRO_SEVEN
from miro.eval.benchmark import BenchmarkError, Metric, build_benchmark, category_rows
from miro.eval.geneval import RUN_FILE, summarise
from miro.eval.prompt_benchmark import RewardsBenchmark
from miro.models.dit import MiroDiT
from miro.pretrained import read_config, save_pretrained
from miro.rewards.base import RewardModel, register_reward


@register_reward
class PromptWords(RewardModel):
    """The number of words of the caption: a score known without looking at the image, so the rewards
    benchmark's means and standard errors can be computed by hand from the prompt file."""

    name = "test_prompt_words"
    version = "test"

    def score_batch(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        return torch.tensor([float(len(c.split())) for c in captions])


@pytest.fixture(scope="module")
def cc12m_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What +experiment=cc12m exports, in miniature: a latent DiT (4 x 8 x 8) with the seven MIRO reward
    tokens, a VAE decoding to 16 px (random: built from its config), and the benchmark it records."""
    torch.manual_seed(0)
    model = MiroDiT.from_size("tiny", image_size=8, in_channels=4, patch_size=2, text_dim=16,
                              reward_names=list(MIRO_SEVEN)).eval()
    text = tiny_text_encoder()
    text_config = {"_target_": "miro.models.text.WordTextEncoder", "dim": 16, "depth": 1, "num_heads": 2,
                   "vocab": list(text.words)}
    vae = {"_target_": "miro.models.vae.LatentVAE", "model_name_or_path": None, "config": TINY_VAE}
    out = tmp_path_factory.mktemp("cc12m") / "export"
    return save_pretrained(out, model, text, text_config, list(MIRO_SEVEN), None, 16, SAMPLING,
                           vae_config=vae, extra={"benchmark": "geneval"})


QUICK = ["--steps", "2", "--best-of", "0", "--sweep-images", "1", "--sweep-levels", "0,10"]
GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}],
     "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"},
]


def write_geneval_prompts(path: Path) -> list[str]:
    lines = [json.dumps(obj) for obj in GENEVAL_LINES]
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_geneval_writes_the_layout_its_evaluator_reads(cc12m_export: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "evaluation_metadata.jsonl"
    lines = write_geneval_prompts(prompts)
    out = tmp_path / "geneval"
    # No --benchmark: the export records geneval (as +experiment=cc12m does).
    args = ["--prompts", str(prompts), "--checkpoint", str(cc12m_export), "--out", str(out),
            "--n-per-prompt", "2"]
    assert eval_cli.main([*args, *QUICK]) == 0
    stdout = capsys.readouterr().out
    assert "benchmark geneval: 3 prompts x 2 images; rewards measured: none" in stdout and str(out) in stdout
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["00000", "00001", "00002"]
    for index, line in enumerate(lines):
        folder = out / f"{index:05d}"
        assert sorted(p.name for p in folder.iterdir()) == ["metadata.jsonl", "samples"]
        # the prompt's line of the metadata file, as GenEval's own generation script writes it
        assert (folder / "metadata.jsonl").read_text() == line + "\n"
        assert json.loads((folder / "metadata.jsonl").read_text()) == GENEVAL_LINES[index]
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        for sample in (folder / "samples").iterdir():
            with Image.open(sample) as img:
                assert img.format == "PNG" and img.mode == "RGB" and img.size == (16, 16)
    results = json.loads((out / "results.json").read_text())
    assert results["images_generated"] == 6 and results["image_dir"] == str(out)
    assert results["judge"]["benchmark"] == {"name": "geneval", "prompts": str(prompts), "n_prompts": 3}
    assert results["benchmark"] == {"all targets 10": []}  # judged outside, by GenEval's detector
    assert not list(out.rglob("*.tmp*"))

    # Interrupted: one image lost. A rerun generates only that one and leaves the others as they were.
    kept = {p: p.read_bytes() for p in out.rglob("*.png")}
    lost = out / "00001" / "samples" / "0001.png"
    lost.unlink()
    assert eval_cli.main([*args, *QUICK]) == 0
    assert json.loads((out / "results.json").read_text())["images_generated"] == 1
    assert lost.is_file() and all(p.read_bytes() == data for p, data in kept.items() if p != lost)
    # ... but never finishes a folder made with other settings
    capsys.readouterr()
    assert eval_cli.main([*args, *QUICK, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds GenEval images of another run" in err and RUN_FILE in err


def test_geneval_summary_by_hand(tmp_path: Path, capsys) -> None:
    """GenEval's results.jsonl (as its evaluate_images.py writes it: one record per image) -> our table."""
    records = [("single_object", True), ("single_object", False), ("single_object", True),
               ("counting", False), ("counting", False), ("colors", True)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(
        json.dumps({"filename": f"x/{i:05d}/samples/0000.png", "tag": tag, "prompt": "p", "correct": ok,
                    "reason": "", "metadata": "{}", "details": "{}"}) + "\n"
        for i, (tag, ok) in enumerate(records)))
    summary = summarise(results)
    rows = {r["category"]: r for r in summary["categories"]}
    assert [r["category"] for r in summary["categories"]] == ["single_object", "counting", "colors"]
    assert rows["single_object"]["accuracy"] == pytest.approx(2 / 3)
    assert rows["single_object"]["accuracy_se"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert (rows["counting"]["accuracy"], rows["counting"]["accuracy_se"]) == (0.0, 0.0)
    assert rows["colors"]["accuracy"] == 1.0 and rows["colors"]["n"] == 1
    overall = summary["overall"]  # GenEval's score: the mean over tags
    assert overall["accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert overall["accuracy_se"] == pytest.approx(math.sqrt(2 / 27) / 3)
    assert summary["images"] == pytest.approx({"n": 6, "correct": 3, "accuracy": 0.5,
                                               "accuracy_se": math.sqrt(0.25 / 6)})
    assert eval_cli.main(["geneval-summary", str(results), "--out", str(tmp_path / "s")]) == 0
    table = (tmp_path / "s" / "geneval_summary.md").read_text()
    assert "| single_object | 3 | 2 | 0.6667 ± 0.2722 |" in table
    assert "| overall | 6 | 3 | 0.5556 ± 0.0907 |" in table
    assert json.loads((tmp_path / "s" / "geneval_summary.json").read_text())["overall"]["correct"] == 3
    assert str(tmp_path / "s" / "geneval_summary.md") in capsys.readouterr().out


# -- the rewards benchmark ----------------------------------------------------------------------------------

CSV = ('Prompt,Category\n"a red fox, in snow",animals\na cat,animals\n'
       "an old oil painting of a lighthouse,art\n")
TSV = "Prompt\tCategory\tChallenge\na red fox in snow\tanimals\tbasic\na cat\tanimals\tbasic\n" \
      "an old oil painting of a lighthouse\tart\tstyle\n"


@pytest.mark.parametrize(("name", "text", "columns"), [
    ("drawbench.csv", CSV.replace("Prompt,", "Prompts,"), []),  # DrawBench's header: Prompts
    ("parti.tsv", TSV, []),
    ("own.csv", CSV.replace("Prompt,Category", "text,kind"),
     ["--prompt-column", "text", "--category-column", "kind"]),
])
def test_rewards_benchmark_means_and_standard_errors_by_hand(
    cc12m_export: Path, tmp_path: Path, name: str, text: str, columns: list[str]
) -> None:
    prompts = tmp_path / name
    prompts.write_text(text)
    out = tmp_path / "eval"
    args = ["--benchmark", "rewards", "--prompts", str(prompts), "--rewards", "test_prompt_words",
            "--checkpoint", str(cc12m_export), "--out", str(out), "--samples-per-prompt", "2", *columns,
            *QUICK]
    assert eval_cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    # Two images per prompt; the score is the caption's word count: animals 5, 5, 2, 2; art 7, 7.
    words, animals = [5, 2, 7], torch.tensor([5.0, 5, 2, 2])
    by_category = results["rewards_by_category"]["all targets 10"]
    assert list(by_category) == ["animals", "art"]
    assert by_category["animals"]["test_prompt_words"] == pytest.approx(
        {"mean": 3.5, "se": float(animals.std()) / 2, "n": 4})
    assert by_category["art"]["test_prompt_words"] == {"mean": 7.0, "se": 0.0, "n": 2}
    everything = torch.tensor([float(w) for w in words for _ in range(2)])
    assert results["rewards_at"]["all targets 10"]["test_prompt_words"] == pytest.approx(
        {"mean": 28 / 6, "se": float(everything.std()) / math.sqrt(6), "n": 6})
    report = (out / "report.md").read_text()
    assert "## Mean rewards per category (all targets 10)" in report
    assert "| art | 2 | 7.000 ± 0.000 |" in report


def test_rewards_benchmark_reads_a_plain_prompt_file_and_reward_sets(
    cc12m_export: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na cat\n\nthree small dogs\n")
    bench = build_benchmark("rewards", {"prompts": str(prompts)})
    assert [(i.prompt, i.category) for i in bench.items()] == [("a cat", "all"), ("three small dogs", "all")]
    out = tmp_path / "eval"
    # A reward set from conf/rewards/ (offline: the four CPU rewards) plus a registered name.
    args = ["--benchmark", "rewards", "--prompts", str(prompts), "--rewards", "offline,test_prompt_words",
            "--checkpoint", str(cc12m_export), "--out", str(out), "--samples-per-prompt", "1", *QUICK]
    assert eval_cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    measured = results["rewards_at"]["all targets 10"]
    assert list(measured) == [
        "alignment", "sharpness", "colorfulness", "compressibility", "test_prompt_words"]
    assert measured["test_prompt_words"]["mean"] == 2.5
    assert measured["alignment"]["n"] == 0  # the shapes detector cannot read these prompts: NaN, left out
    # the model's rewards are the seven MIRO ones: none of the offline ones is a conditioning reward,
    # so nothing is swept
    assert results["sweeps"] == {}


def test_bad_prompt_files_are_named(tmp_path: Path) -> None:
    table = tmp_path / "p.csv"
    table.write_text("Prompt,Category\na cat,animals\n")
    with pytest.raises(BenchmarkError, match=r"no category column 'Kind'; its columns are: 'Prompt', "):
        RewardsBenchmark(str(table), category_column="Kind")
    with pytest.raises(BenchmarkError, match="the rewards benchmark takes no setting 'per_category'"):
        build_benchmark("rewards", {"prompts": str(table), "per_category": 3})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GENEVAL_LINES[0]) + "\n{oops\n")
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl:2: not a JSON object"):
        build_benchmark("geneval", {"prompts": str(bad)})
    bad.write_text(json.dumps({"tag": "colors", "include": []}) + "\n")
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl:1: no 'prompt'"):
        build_benchmark("geneval", {"prompts": str(bad)})
    with pytest.raises(BenchmarkError, match="unknown benchmark '../etc'"):
        build_benchmark("../etc")


def test_category_rows_by_hand() -> None:
    """Binary metrics get the binomial standard error and count NaN as wrong; others the sample one;
    the overall row is the mean over categories."""
    from miro.eval.benchmark import BenchmarkItem

    items = [BenchmarkItem("p", c) for c in ["b", "a", "a", "b", "a", "b"]]
    values = {"ok": torch.tensor([1.0, 1, 0, math.nan, 1, 0]),
              "score": torch.tensor([2.0, 1, 3, math.nan, 5, 4])}
    rows = category_rows(items, [Metric("ok", binary=True), Metric("score")], values, order=["a"])
    a, b, overall = rows
    assert (a["category"], a["n"], b["category"], b["n"]) == ("a", 3, "b", 3)
    assert a["ok"] == pytest.approx(2 / 3) and a["ok_se"] == pytest.approx(math.sqrt(2 / 9 / 3))
    assert b["ok"] == pytest.approx(1 / 3)  # the NaN counts as wrong
    assert a["score"] == pytest.approx(3.0) and a["score_se"] == pytest.approx(2 / math.sqrt(3))
    # b's scores 2 and 4 (the NaN left out): sd sqrt(2), se sqrt(2) / sqrt(2)
    assert b["score"] == pytest.approx(3.0) and b["score_se"] == pytest.approx(1.0)
    assert overall["ok"] == pytest.approx(0.5) and overall["n"] == 6
    assert overall["ok_se"] == pytest.approx(math.sqrt(a["ok_se"] ** 2 + b["ok_se"] ** 2) / 2)


def test_the_export_records_the_benchmark_by_name_only(cc12m_export: Path, tmp_path: Path, capsys) -> None:
    """A model directory names a benchmark; only conf/benchmark/ files qualify, so it cannot name code."""
    assert read_config(cc12m_export)["benchmark"] == "geneval"
    config = json.loads((cc12m_export / "config.json").read_text())
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "model.safetensors").write_bytes((cc12m_export / "model.safetensors").read_bytes())
    config["benchmark"] = "os.system"
    (tampered / "config.json").write_text(json.dumps(config))
    assert eval_cli.main(["--checkpoint", str(tampered), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown benchmark 'os.system'" in err
    assert not (tmp_path / "e").exists()


def test_sweeps_best_of_n_and_compare_on_a_rewards_benchmark(tmp_path: Path) -> None:
    """The reward-control sweep, best-of-N against a baseline and miro-eval compare are not the shapes
    world's: here on a plain prompt file judged by one offline reward the model is conditioned on."""
    from tiny_models import export_tiny_model

    model = export_tiny_model(tmp_path / "model", None)  # conditioned on the four offline rewards
    baseline = export_tiny_model(tmp_path / "baseline", None, reward_names=[], seed=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog on a sofa\n")
    common = ["--benchmark", "rewards", "--prompts", str(prompts), "--rewards", "sharp",
              "--samples-per-prompt", "2", "--steps", "2", "--sweep-levels", "0,10", "--sweep-images", "3",
              "--best-of", "2", "--best-of-prompts", "2"]
    for name, extra in (("a", ["--baseline", str(baseline)]), ("b", ["--seed", "0"])):
        args = ["--checkpoint", str(model), "--out", str(tmp_path / name), *common, *extra]
        assert eval_cli.main(args) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(results["sweeps"]) == ["sharpness"] and results["contrasts"]["sharpness"].keys() == {"reward"}
    assert [p["n"] for p in results["sweeps"]["sharpness"]] == [3, 3]
    assert set(results["best_of_n"]) == {"model", "baseline"}
    assert len(results["best_of_n"]["model"]["sharpness"]) == 2
    assert "sharpness" in results["checks"] and results["benchmark"] == {"all targets 10": []}
    assert eval_cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--optimised", "sharpness",
                          "--out", str(tmp_path / "c")]) == 0
    table = (tmp_path / "c" / "comparison.md").read_text()
    assert "| sharpness (optimised) |" in table and "+0.000 |" in table  # the same model, seed and prompts
    assert "## Benchmark" not in table  # no judge: the rewards are the table
