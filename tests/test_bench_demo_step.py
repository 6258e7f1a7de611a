"""bench/bench_demo_step.py, the demo model's bare training step per setting (docs/machines.md's figures),
runs end to end at a tiny size, records what it ran under, and emulates an AVX2 CPU when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["hidden_size=32", "depth=1", "num_heads=2", "unet_channels=[8,16]"]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "bench/bench_demo_step.py", "--batch", "2", "--steps", "2", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


def test_records_the_setting_and_the_machine(tmp_path: Path) -> None:
    out = tmp_path / "steps.jsonl"
    proc = run(tmp_path, "--cpu", "avx2", "--adamw", "fused", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    [line] = out.read_text().splitlines()
    row = json.loads(line)
    # --cpu avx2 restarted the process with torch's kernels capped at AVX2
    assert row["emulated"] is True and row["cpu_capability"] == "AVX2" and row["cpu_kind"] == "AVX2"
    assert (row["precision"], row["threads"], row["adamw"], row["batch"]) == ("fp32", 1, "fused", 2)
    assert row["overrides"] == TINY
    assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
    assert row["median_cpu_s"] > 0 and row["load_1m_before"] >= 0
    # the tiny model, not the demo's 2.1M parameters
    assert row["params_m"] < 0.5


def test_bad_override_is_one_line(tmp_path: Path) -> None:
    proc = run(tmp_path, "depth")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "bench_demo_step.py: error: model override 'depth' is not key=value"
    )
