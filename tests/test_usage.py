"""Bad requests to the Hydra commands end with one line naming the problem and exit code 2."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import lightning  # noqa: F401  (imported before capture: its log handlers keep a stream that stays open)
import pytest
from hydra.errors import InstantiationException

from miro.pretrained import CheckpointError
from miro.usage import USAGE_EXIT_CODE, usage_error, usage_errors


def test_the_cause_behind_hydra_instantiation_is_reported_in_one_line(capsys: pytest.CaptureFixture) -> None:
    cause = CheckpointError("/models/x: no such model directory")
    wrapped = InstantiationException("Error in call to target 'miro.rl.module.GRPOModule':\n...")
    wrapped.__cause__ = cause
    assert usage_error(wrapped) is cause
    with pytest.raises(SystemExit) as exit_info, usage_errors():
        raise wrapped
    assert exit_info.value.code == USAGE_EXIT_CODE
    assert capsys.readouterr().err == "error: /models/x: no such model directory\n"


def test_a_bug_keeps_its_traceback() -> None:
    assert usage_error(ZeroDivisionError()) is None
    with pytest.raises(ZeroDivisionError), usage_errors():
        raise ZeroDivisionError


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (
            "miro.train", ["+experiment=shapes", "paths.data_dir={tmp}/nothing"],
            "bins file not found: {tmp}/nothing/bins.json (run fit-bins first)",
        ),
        (
            "miro.rl.__main__", ["+experiment=rl_shapes_step", "pretrained={tmp}/nothing"],
            "{tmp}/nothing: no such model directory (training exports one to <run dir>/export)",
        ),
    ],
)
def test_commands_name_a_missing_input_in_one_line(
    command: str, args: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    main = importlib.import_module(command).main
    argv = [a.format(tmp=tmp_path) for a in args] + [f"paths.output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", [command, *argv])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:  # Hydra's log handlers hold this test's captured stderr, which closes with the test
        logging.getLogger().handlers.clear()
    assert exit_info.value.code == USAGE_EXIT_CODE
    err = capsys.readouterr().err
    prog = command.removesuffix(".__main__")  # miro.train, miro.rl: the prefix argparse would use
    assert err.strip().splitlines()[-1] == f"{prog}: error: " + expected.format(tmp=tmp_path)
    assert not (tmp_path / "run").exists()  # a run that never started leaves no directory
    assert "Traceback" not in err
