"""A Hugging Face Hub cache laid out as ``huggingface_hub`` writes it, built from local exports, so that
loading by repo id is tested offline (``HF_HUB_OFFLINE=1``) without the real service."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def add_snapshot(cache: Path, repo_id: str, export: Path, commit: str, ref: str | None = "main") -> Path:
    """``<cache>/models--owner--name/snapshots/<commit>/`` holding the export's files, and
    ``refs/<ref>`` naming that commit (as the library leaves them after a download)."""
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in export.iterdir():
        shutil.copy(path, snapshot / path.name)
    if ref is not None:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def offline_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Point the Hub library at an empty cache under ``root`` in offline mode, through the environment
    (for subprocesses) and the library's already-imported constants (for this process)."""
    from huggingface_hub import constants

    cache = root / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    for key, value in {"HF_HOME": str(root), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
