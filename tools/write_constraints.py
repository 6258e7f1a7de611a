"""Write constraints.txt: the exact versions `make setup` installs, so an install still works next year.

    make lock        (runs: python tools/write_constraints.py)

pip resolves the package with every extra (dev, minilm, vae, app, apptest) next to the CPU torch build,
without installing anything (``pip install --dry-run --report``), and every resolved package except this
one and the torch build itself is pinned. torch and torchvision stay out: TORCH_SPEC chooses the build
(CPU here, CUDA on a GPU machine) and the package's own bound (``torch>=2.6``) checks it. The package's
pyproject keeps honest lower bounds; only `make setup` uses the pins (``pip install -c constraints.txt``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTRAS = "dev,minilm,vae,app,apptest"
TORCH = ["torch==2.13.0", "torchvision==0.28.0"]
# chosen by TORCH_SPEC, not pinned here (a CUDA build brings its own nvidia-* and triton wheels)
UNPINNED = ("torch", "torchvision")
UNPINNED_PREFIXES = ("nvidia-", "triton")


def resolved(report: dict) -> list[tuple[str, str]]:
    """(name, version) of every package pip would install, less this one and the torch build."""
    out = []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        key = name.lower().replace("_", "-")
        if key == "miro" or key in UNPINNED or key.startswith(UNPINNED_PREFIXES):
            continue
        out.append((name, version))
    return sorted(out, key=lambda nv: nv[0].lower())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
               "--report", str(report_path), *TORCH, f"{REPO}[{EXTRAS}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"error: pip could not resolve the package: {proc.stderr.strip().splitlines()[-1]}",
                  file=sys.stderr)
            return 1
        pins = resolved(json.loads(report_path.read_text()))
    header = [
        "# The exact versions `make setup` installs (pip install -c constraints.txt), all extras resolved",
        "# together beside torch 2.13.0 (CPU). Regenerate with `make lock` (tools/write_constraints.py);",
        "# torch and torchvision are chosen by TORCH_SPEC and not pinned here.",
    ]
    out = REPO / "constraints.txt"
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text("\n".join(header + [f"{n}=={v}" for n, v in pins]) + "\n")
    tmp_out.replace(out)
    print(f"{len(pins)} packages pinned -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
