"""Early checks of the values a command is given, each failing with one line that names the value.

Every command checks what it can before it loads a model, builds rewards, creates an output directory
or starts rollouts: a typo should cost a second, not a model load, and never leave half an output
behind. The CLIs (``miro-generate``, ``miro-eval``) and the Hydra entry points (``python -m miro.train``,
``python -m miro.rl``) share these, so the same mistake reads the same everywhere.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from miro.utils.hardware import parse_threads


class InputError(ValueError):
    """A bad command-line value or config field; the message names it (``--device``, ``data.batch_size``)."""


DEVICE_TYPES = ("cpu", "cuda", "mps")
GPU_ACCELERATORS = ("gpu", "cuda")


def check_device(value: str, field: str = "--device") -> str:
    """``value`` when it names a device this torch build can use now."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise InputError(f"{field} {value!r} is not a device; use one of cpu, cuda, cuda:N, mps") from None
    if device.type not in DEVICE_TYPES:
        raise InputError(f"{field} {value!r} is not supported; use one of cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        _check_cuda(field, value, device.index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{field} {value!r}: this torch build or machine has no MPS (Apple GPU) support")
    return value


def _check_cuda(field: str, value: str, index: int | None) -> None:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise InputError(
            f"{field} {value!r}: this torch build ({torch.__version__}) has no CUDA support; install a CUDA "
            "build of torch (README: Install) or use cpu"
        )
    if not torch.cuda.is_available():
        raise InputError(f"{field} {value!r}: no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)")
    if index is not None and index >= torch.cuda.device_count():
        raise InputError(f"{field} {value!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")


def check_accelerator(trainer: Mapping[str, Any], field: str = "trainer.accelerator") -> None:
    """A GPU trainer (``trainer=gpu``) refused before anything is built when no GPU can be used."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator in GPU_ACCELERATORS:
        _check_cuda(field, accelerator, None)
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{field} 'mps': this torch build or machine has no MPS (Apple GPU) support")


def check_int(value: Any, field: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """An integer >= ``minimum`` (``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        null = " (or null)" if allow_none else ""
        raise InputError(f"{field} must be an integer >= {minimum}{null}, got {value!r}")
    return value


def check_threads(value: Any, field: str = "threads") -> None:
    """``threads``: auto / null (miro.utils.hardware picks) or a positive integer."""
    try:
        parse_threads(value)
    except ValueError:
        raise InputError(f"{field} must be a positive integer or auto, got {value!r}") from None


def check_guidance(value: float | None, field: str = "--guidance") -> float | None:
    """A guidance scale: finite and >= 0 (0: the negative branch only; 1: no guidance)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise InputError(f"{field} must be a finite number >= 0, got {value}")
    return value


def check_out_dir(path: Path, field: str = "--out") -> Path:
    """An output directory that is a directory or can become one (not an existing file)."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "exists and is not a directory" if parent == path else f"is inside a file ({parent})"
                raise InputError(f"{field} {path} {what}")
            break
    return path


def check_resume_checkpoint(path: Any, field: str = "ckpt_path") -> None:
    """A training checkpoint that loads as data only (``weights_only``: never unpickles code)."""
    if path is None:
        return
    ckpt = Path(str(path))
    if not ckpt.is_file():
        what = "is a directory (give <dir>/last.ckpt)" if ckpt.is_dir() else "does not exist"
        raise InputError(f"{field} {ckpt} {what}")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # torch's weights_only refusal: the file names a callable
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" ({named.group(1)})" if named else ""
        raise InputError(
            f"{field} {ckpt}: refused, it holds pickled objects{what} that would run code when loaded; "
            "checkpoints load as tensors and plain data only (weights_only=True)"
        ) from None
    except Exception as err:  # torch raises several types for a damaged file
        reason = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(err).split())).split(". ")[0][:160]
        reason = reason or type(err).__name__
        raise InputError(f"{field} {ckpt}: not a loadable checkpoint ({reason})") from None
    keys = state if isinstance(state, dict) else {}
    missing = [key for key in ("state_dict", "global_step") if key not in keys]
    if missing:
        raise InputError(f"{field} {ckpt}: not a Lightning training checkpoint (no {', '.join(missing)})")
