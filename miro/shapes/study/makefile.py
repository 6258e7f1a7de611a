"""The pipeline's stages as the Makefile defines them, called by the study: ``make <target> VAR=...``.

The Makefile's stage targets (``make data``, ``score-shards``, ``fit-bins``, ``train``, ``eval``,
``grpo-train``) are the one definition of each stage's command; the study only chooses their variables
(paths, sizes, seeds) and appends its own overrides through ``ARGS``, so the demo and the study cannot
drift apart. Each call passes ``SETUP=`` (the study already runs in a working environment, so make must
not build .venv) and ``PY=`` (this interpreter), and runs without the variables of an enclosing make
(``make report``), so that only what the study passes reaches the stage.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MAKEFILE = REPO / "Makefile"
STAGES = ("data", "score-shards", "fit-bins", "train", "eval", "grpo-train")
# What an enclosing make exports to its commands (its command-line variables among them).
ENCLOSING_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
LISTS = ("OBJECT_SIZE", "ARGS")  # variables whose words are separate arguments
_PLAIN = re.compile(r"[\w@%+=:,./-]*")  # shows without quotes


def _value(name: str, value: object) -> str:
    """A variable's value for make's command line: every word must reach the recipe's shell as it is
    (the recipes use the variables unquoted), and ``$`` is escaped from make."""
    text = str(value)
    if name not in LISTS and any(c.isspace() for c in text):
        raise ValueError(
            f"{name}={text!r}: the Makefile's recipes use {name} unquoted, so it must not contain spaces"
        )
    for word in text.split():
        if shlex.quote(word) != word:
            raise ValueError(
                f"{name}={text!r}: the Makefile's recipes use {name} unquoted, so it must not contain "
                "spaces inside a path or shell characters"
            )
    return text.replace("$", "$$")


def _show(token: str) -> str:
    """A ``NAME=value`` argument for a shell line, quoted only as much as it needs."""
    name, _, value = token.partition("=")
    if _PLAIN.fullmatch(value):
        return token
    if not re.search(r'["$`\\!]', value):
        return f'{name}="{value}"'
    return shlex.quote(token)


def stage(
    target: str, variables: Mapping[str, object], args: Sequence[object] = (), *, python: str
) -> tuple[tuple[str, ...], str]:
    """The command that runs Makefile stage ``target`` with ``variables`` and extra ``args`` (appended
    to the stage's command through ARGS), and the same as a reader would type it."""
    if target not in STAGES:
        raise ValueError(f"unknown stage {target!r}; the Makefile's stages: {', '.join(STAGES)}")
    assigned = [f"{name}={_value(name, value)}" for name, value in variables.items()]
    assigned.append("ARGS=" + shlex.join(str(a) for a in args).replace("$", "$$"))
    command = (
        "make",
        "--no-print-directory",
        "-f",
        str(MAKEFILE),
        target,
        "SETUP=",
        f"PY={python}",
        *assigned,
    )
    return command, " ".join(["make", target, *(_show(a) for a in assigned if a != "ARGS=")])


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without what an enclosing make exported."""
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in ENCLOSING_MAKE}


def check_makefile() -> None:
    """Running the study needs the repository's Makefile (a source checkout, not an installed wheel)."""
    if not MAKEFILE.is_file():
        raise ValueError(
            f"{MAKEFILE}: no Makefile; running the study calls the repository's Makefile stages, so run it "
            "from a source checkout (git clone), where `make report REPORT_RUN=1` works"
        )
