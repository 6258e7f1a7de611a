"""A benchmark from any prompt file, judged by rewards: what a user of a real text-to-image model runs.

The file is one prompt per line (blank lines and ``#`` comments skipped; every prompt in category
``all``), or a CSV (``.csv``) / TSV (``.tsv``) with a header row, as DrawBench and PartiPrompts are
distributed: the prompt and category columns are named by ``prompt_column`` / ``category_column``
(defaults ``Prompt`` and ``Category``; DrawBench's ``Prompts`` is accepted for the default). The
evaluation then reports every measured reward's mean with its standard error, overall and per category.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from miro.data.prompt_file import PromptFileError, read_prompt_file
from miro.eval.benchmark import Benchmark, BenchmarkError, BenchmarkItem

DEFAULT_PROMPT_COLUMN = "Prompt"
ONE_CATEGORY = "all"


def read_table(path: Path, prompt_column: str, category_column: str | None) -> list[BenchmarkItem]:
    """Rows of a CSV/TSV prompt table as items; an unknown column or an empty table fails naming it."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise BenchmarkError(f"cannot read prompt table {path}: {err}") from None
    if prompt_column not in columns and prompt_column == DEFAULT_PROMPT_COLUMN and "Prompts" in columns:
        prompt_column = "Prompts"  # DrawBench's header
    for what, column in (("prompt", prompt_column), ("category", category_column)):
        if column is not None and column not in columns:
            raise BenchmarkError(f"{path}: no {what} column {column!r}; its columns are: "
                                 f"{', '.join(repr(c) for c in columns) or 'none'}")
    items = []
    for row in rows:
        prompt = (row.get(prompt_column) or "").strip()
        if prompt:
            category = (row.get(category_column) or "").strip() if category_column else ""
            items.append(BenchmarkItem(prompt, category or ONE_CATEGORY))
    if not items:
        raise BenchmarkError(f"{path}: no prompts in column {prompt_column!r}")
    return items


class RewardsBenchmark(Benchmark):
    """Prompts from a file, judged by the measured rewards alone (``conf/benchmark/rewards.yaml``)."""

    name = "rewards"

    def __init__(self, prompts: str, prompt_column: str = DEFAULT_PROMPT_COLUMN,
                 category_column: str | None = "Category") -> None:
        self.path = Path(prompts)
        self.prompt_column, self.category_column = prompt_column, category_column
        if not self.path.is_file():
            raise BenchmarkError(f"prompt file {self.path} does not exist")
        if self.path.suffix.lower() in (".csv", ".tsv"):
            self._items = read_table(self.path, prompt_column, category_column)
        else:
            try:
                self._items = [BenchmarkItem(p, ONE_CATEGORY) for p in read_prompt_file(self.path)]
            except PromptFileError as err:
                raise BenchmarkError(str(err)) from None

    def items(self) -> list[BenchmarkItem]:
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "prompts": str(self.path), "n_prompts": len(self._items),
                "prompt_column": self.prompt_column, "category_column": self.category_column}
