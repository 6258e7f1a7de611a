"""Prompt files: one prompt per line, shared by ``miro-generate --prompts-file`` and GRPO's prompt pool,
so both read the same file the same way."""

from __future__ import annotations

from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file that is missing, unreadable or empty; the message names the file."""


def read_prompt_file(path: str | Path) -> list[str]:
    """The non-blank lines of ``path`` that are not ``#`` comments, stripped.

    Fails naming the file when it is missing, unreadable or holds no prompt: an empty pool would
    otherwise surface later as an index error far from its cause.
    """
    file = Path(path)
    if not file.is_file():
        raise PromptFileError(f"prompt file {file} does not exist")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PromptFileError(f"cannot read prompt file {file}: {err}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise PromptFileError(f"prompt file {file} holds no prompts")
    return prompts
