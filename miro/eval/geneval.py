"""GenEval (Ghosh et al. 2023) as a benchmark: its prompt file in, its image layout out, its results back.

GenEval's judge is an object detector (Mask2Former) with its own environment; it is not run here. This
module does the two ends around it, so a MIRO model is scored by the official detector unchanged:

* :class:`GenEvalBenchmark` reads ``evaluation_metadata.jsonl`` (one JSON object per line with ``tag``,
  ``include``, ``prompt``, ...; the tag is the category) and writes the headline images in the layout
  GenEval's ``evaluate_images.py`` reads::

      <out>/<prompt index:05d>/metadata.jsonl      the prompt's line of the metadata file
      <out>/<prompt index:05d>/samples/<n:04d>.png

  Each file is written under a temporary name and renamed, and an image already there is read back
  instead of generated again, so an interrupted run started again finishes the folder.
* :func:`summarise` turns GenEval's ``results.jsonl`` (one record per image with ``tag`` and
  ``correct``) into our per-category table: accuracy per tag with its binomial standard error, the
  overall score as GenEval reports it (the mean over tags) and the plain mean over images.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from miro.data.shards import write_bytes_atomic, write_json_and_markdown
from miro.eval.benchmark import Benchmark, BenchmarkError, BenchmarkItem

RUN_FILE = "miro_geneval_run.json"  # not a digit folder: GenEval's evaluate_images.py skips it


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(line number, line text, object) for every non-blank line; a bad line fails naming it."""
    file = Path(path)
    if not file.is_file():
        raise BenchmarkError(f"{what} {file} does not exist")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BenchmarkError(f"cannot read {what} {file}: {err}") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise BenchmarkError(f"{file}:{number}: not a JSON object ({err})") from None
        if not isinstance(obj, dict):
            raise BenchmarkError(f"{file}:{number}: expected a JSON object, got {type(obj).__name__}")
        out.append((number, line.strip(), obj))
    if not out:
        raise BenchmarkError(f"{what} {file} holds no lines")
    return out


class GenEvalBenchmark(Benchmark):
    """GenEval's prompts (``conf/benchmark/geneval.yaml``); judged by GenEval's detector, outside."""

    name = "geneval"
    writes_images = True

    def __init__(self, prompts: str, samples_per_prompt: int = 4) -> None:
        self.path = Path(prompts)
        self.samples_per_prompt = int(samples_per_prompt)
        self._items = []
        for number, line, obj in read_jsonl(self.path, "GenEval prompt file"):
            for key in ("tag", "prompt"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise BenchmarkError(f"{self.path}:{number}: no {key!r} (a GenEval metadata line has "
                                         "tag, include and prompt)")
            self._items.append(BenchmarkItem(obj["prompt"], obj["tag"], {"line": line}))

    def items(self) -> list[BenchmarkItem]:
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "prompts": str(self.path), "n_prompts": len(self._items)}

    # -- GenEval's folder layout -----------------------------------------------------------------------
    @staticmethod
    def sample_path(out_dir: Path, prompt_index: int, sample: int) -> Path:
        return Path(out_dir) / f"{prompt_index:05d}" / "samples" / f"{sample:04d}.png"

    def write_images(
        self, out_dir: Path, indices: Sequence[int], images: torch.Tensor, samples_per_prompt: int
    ) -> None:
        for index, image in zip(indices, images, strict=True):
            prompt_index, sample = divmod(index, samples_per_prompt)
            folder = Path(out_dir) / f"{prompt_index:05d}"
            meta = folder / "metadata.jsonl"
            if not meta.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(meta, (self._items[prompt_index].metadata["line"] + "\n").encode())
            path = self.sample_path(out_dir, prompt_index, sample)
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buffer, format="PNG")
            write_bytes_atomic(path, buffer.getvalue())

    def stored_image(self, out_dir: Path, index: int, samples_per_prompt: int) -> torch.Tensor | None:
        path = self.sample_path(out_dir, *divmod(index, samples_per_prompt))
        if not path.is_file():
            return None
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def check_run_record(out_dir: Path, record: dict[str, Any]) -> None:
    """Refuse to finish a folder that an earlier run filled with images made otherwise (another model,
    targets, seed or sampling); record the settings of this run otherwise."""
    path = Path(out_dir) / RUN_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if before != record:
            raise BenchmarkError(
                f"{out_dir} holds GenEval images of another run ({path}: {before}); this one is {record}. "
                "Use another --out, or delete the folder to start again"
            )
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(record, indent=2, sort_keys=True).encode())


# -- GenEval's results back into our table ----------------------------------------------------------------


def summarise(results: str | Path) -> dict[str, Any]:
    """Per-tag accuracy of GenEval's ``results.jsonl`` with binomial standard errors.

    ``overall`` is GenEval's overall score, the mean of the per-tag accuracies (standard error
    sqrt(sum se^2) / k); ``images`` is the plain fraction of correct images over all of them.
    """
    records = read_jsonl(results, "GenEval results file")
    by_tag: dict[str, list[bool]] = {}
    for number, _, obj in records:
        tag, correct = obj.get("tag"), obj.get("correct")
        if not isinstance(tag, str):
            raise BenchmarkError(f"{results}:{number}: no 'tag' (is this GenEval's results.jsonl?)")
        if not isinstance(correct, bool):
            raise BenchmarkError(f"{results}:{number}: 'correct' must be true or false, got {correct!r}")
        by_tag.setdefault(tag, []).append(correct)
    rows = []
    for tag, values in by_tag.items():  # GenEval's order: first appearance
        p = sum(values) / len(values)
        rows.append({"category": tag, "n": len(values), "correct": sum(values), "accuracy": p,
                     "accuracy_se": math.sqrt(p * (1 - p) / len(values))})
    k = len(rows)
    overall = {"category": "overall", "n": sum(r["n"] for r in rows),
               "correct": sum(r["correct"] for r in rows),
               "accuracy": sum(r["accuracy"] for r in rows) / k,
               "accuracy_se": math.sqrt(sum(r["accuracy_se"] ** 2 for r in rows)) / k}
    n, hits = overall["n"], overall["correct"]
    p = hits / n
    images = {"n": n, "correct": hits, "accuracy": p, "accuracy_se": math.sqrt(p * (1 - p) / n)}
    return {"results": str(results), "categories": rows, "overall": overall, "images": images}


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# GenEval", "",
        f"From {summary['results']}. Accuracy = share of images GenEval's detector judged correct, "
        "± one binomial standard error; overall = the mean over tags, as GenEval reports it.", "",
        "| category | images | correct | accuracy |", "|---|---|---|---|",
    ]
    for row in [*summary["categories"], summary["overall"]]:
        lines.append(f"| {row['category']} | {row['n']} | {row['correct']} | "
                     f"{row['accuracy']:.4f} ± {row['accuracy_se']:.4f} |")
    im = summary["images"]
    lines += ["", f"Mean over all {im['n']} images (not GenEval's score): "
              f"{im['accuracy']:.4f} ± {im['accuracy_se']:.4f}.", ""]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    return write_json_and_markdown(out_dir, "geneval_summary", summary, summary_markdown(summary))
