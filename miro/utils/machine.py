"""The machine a figure was measured on, stored next to it: a speed or a study result without the
machine (and how busy it was) means nothing. Used by the benchmarks and the evidence study."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from miro.utils.hardware import cpu_info, cpu_native_bf16


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    return cpu_info().model


def machine() -> dict[str, Any]:
    """Host, CPU and its kind (AVX2 / AVX512 / AVX512-BF16 / AMX: whether bf16 is native), cores, torch
    threads, the 1-minute load (a shared box measures slower), versions, GPU."""
    cpu = cpu_info()
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpu_kind": cpu.kind,
        "cpu_capability": cpu.capability,
        "cpu_native_bf16": cpu_native_bf16(cpu),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
