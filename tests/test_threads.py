"""The `threads` setting of the training entries and the --threads flag of the CLIs pin torch's pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_train import _overrides

from miro.cli import generate as generate_cli
from miro.config import compose_config, set_threads
from miro.train import build


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set_threads(2).threads == 2
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("miro.utils.hardware.busy_cores", lambda window_s=0.25: 64.0)  # a busy machine
    choice = set_threads(None)  # None and "auto": one per free core, at least one
    assert choice.threads == torch.get_num_threads() == 1 and "busy" in choice.reason
    with pytest.raises(ValueError, match="threads must be a positive integer or auto"):
        set_threads(0)


def test_training_config_sets_threads(scored_shapes: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = compose_config("train", ["+experiment=shapes", *_overrides(scored_shapes, tmp_path), "threads=2"])
    build(cfg)
    assert torch.get_num_threads() == 2
    assert compose_config("rl", []).threads == "auto"


def test_generate_cli_takes_threads(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    # A missing checkpoint fails after the flag took effect: exit code 2, one line.
    assert generate_cli.main(["--checkpoint", str(tmp_path / "none"), "--prompt", "x", "--threads", "2",
                              "--out", str(tmp_path / "o")]) == 2
    assert torch.get_num_threads() == 2


def test_a_bad_thread_count_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        generate_cli.main(["--checkpoint", "x", "--prompt", "x", "--threads", "0", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--threads: must be a positive integer or auto" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0, -1, "0", "two", 1.5, True, "", [2]])
def test_every_entry_point_rejects_the_same_threads_values(value: object) -> None:
    """One parser behind argparse, the config check and the chooser: they accept and reject alike."""
    import argparse

    from miro.checks import InputError, check_threads
    from miro.cli import threads_arg
    from miro.utils.hardware import choose_threads

    with pytest.raises(ValueError, match="positive integer or auto"):
        choose_threads(value, cores=2, busy=0.0, omp_env=None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="threads must be a positive integer or auto"):
        check_threads(value)
    if isinstance(value, str):
        with pytest.raises(argparse.ArgumentTypeError):
            threads_arg(value)


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), (None, "auto"), ("null", "auto"), (3, 3), ("2", 2)]
)
def test_threads_parser_accepts_auto_and_positive_integers(value: object, expected: object) -> None:
    from miro.utils.hardware import parse_threads

    assert parse_threads(value) == expected  # type: ignore[arg-type]
