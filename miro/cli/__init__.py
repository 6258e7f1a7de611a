"""Command-line entry points (``miro-data``, ``miro-generate``, ...): parse, call the library, print."""

from __future__ import annotations

import argparse


def threads_arg(value: str) -> int:
    """argparse type of ``--threads``: a positive integer, or argparse's own one-line usage error."""
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return threads
