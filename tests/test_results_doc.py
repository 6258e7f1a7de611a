"""docs/results.md is what `make report` writes from the committed runs (docs/results/runs-cpu.tar.gz):
the numbers a reader sees were rendered by today's report code from the measured per-image data, not
edited by hand. After a change of the report code or new runs: `make report ARGS=--pack`, commit both."""

from __future__ import annotations

from pathlib import Path

import pytest

from miro.shapes.study.archive import unpack
from miro.shapes.study.plan import Study, compose_study_config
from miro.shapes.study.report import write_results_report

REPO = Path(__file__).resolve().parent.parent


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Generated ")]


def test_the_committed_report_is_rendered_from_the_committed_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_study_config("cpu")
    archive = REPO / cfg.archive
    assert archive.is_file(), f"{cfg.archive} is missing: make report ARGS=--pack writes it"
    monkeypatch.chdir(tmp_path)  # the runs unpack to runs/evidence/cpu here, as in a fresh clone
    study = Study(cfg)
    assert unpack(archive, study.layout.root) > 0
    written = write_results_report(study, tmp_path / "results.md")["markdown"]
    committed = (REPO / cfg.out).read_text(encoding="utf-8")
    assert _body(written.read_text(encoding="utf-8")) == _body(committed)
