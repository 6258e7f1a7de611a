"""Command-line entry points (``miro-data``, ``miro-generate``, ...): parse, call the library, print."""

from __future__ import annotations

import argparse

from miro.utils.hardware import parse_threads

THREADS_HELP = (
    "torch CPU threads: a number, or auto (default: one per core that other processes are not using at "
    "start-up, or OMP_NUM_THREADS; two threads on a busy 2-core box stall)"
)
PRECISION_HELP = (
    "network precision while sampling: auto (default: bf16 where the device computes it natively, i.e. "
    "CUDA with bf16 or a CPU with AVX512-BF16/AMX; fp32 elsewhere, where bf16 is emulated and ~10x slower), "
    "fp32 or bf16"
)


def threads_arg(value: str) -> int | str:
    """argparse type of ``--threads``: ``auto`` or a positive integer, or argparse's own one-line usage
    error."""
    try:
        return parse_threads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {value!r}") from None
