"""The CPU-torch / CUDA-torchvision trap: after `make setup`, everything that imports torchvision works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

IMPORTS = (
    "import torchvision, lightning, open_clip, timm; from transformers import CLIPModel; import miro.train"
)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=180
    )


def test_the_libraries_that_import_torchvision_all_import() -> None:
    proc = _run(IMPORTS)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_shim_is_what_makes_them_import_when_torchvision_ops_cannot_load() -> None:
    bare = _run("import torchvision", MIRO_DISABLE_TORCHVISION_SHIM="1")
    if bare.returncode == 0:  # a matching torch/torchvision pair (e.g. a CUDA machine): nothing to fix
        pytest.skip("torchvision imports without the shim here")
    assert "torchvision::nms does not exist" in bare.stderr
    fixed = _run(IMPORTS)  # the same interpreter with the shim that `make setup` installed
    assert fixed.returncode == 0, fixed.stderr[-2000:]


def test_install_is_idempotent() -> None:
    """`make setup` may run `--install` again at any time: it succeeds and leaves the same state."""
    code = "import sys; from miro.utils.torchvision_shim import main; sys.exit(main(['--install']))"
    first, second = _run(code), _run(code)
    assert first.returncode == 0 and second.returncode == 0, first.stdout + second.stdout
    assert first.stdout == second.stdout
