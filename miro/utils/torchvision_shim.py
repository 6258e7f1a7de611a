"""Make a CUDA-built torchvision importable next to a CPU-only torch.

PyPI only ships CUDA builds of torchvision. With the CPU build of torch its compiled ops cannot load,
and ``torchvision/_meta_registrations.py`` then fails with "operator torchvision::nms does not exist".
Lightning, timm, open_clip and transformers' CLIP all import torchvision, so all of them break.

The fix: just before torchvision is first imported, try to load its compiled library; if that fails,
declare the two operator schemas that torchvision registers fake kernels for without guarding
(``nms`` and ``qnms``). Everything except ``torchvision.ops``/``torchvision.io`` then works; MIRO uses
PIL for image I/O and never needs those.

``make setup`` runs ``python -m miro.utils.torchvision_shim --install``, which checks whether
``import torchvision`` works and only if it does not writes a ``.pth`` file into site-packages that
calls :func:`activate` at interpreter start. On a machine with a matching torch/torchvision pair
nothing is installed.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "miro_torchvision_shim.pth"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library fragment alive for the life of the process


def _declare_missing_ops() -> None:
    global _LIBRARY
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            for lib in Path(location).glob("_C*.so"):
                try:
                    torch.ops.load_library(str(lib))
                    return  # compiled ops work: nothing to declare
                except (OSError, RuntimeError):
                    pass
    missing = [name for name in _SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    if missing:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _LIBRARY.define(_SCHEMAS[name])


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs the fix once, the first time anything imports ``torchvision``."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib protocol
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _declare_missing_ops()
        return None


def activate() -> None:
    if os.environ.get("MIRO_DISABLE_TORCHVISION_SHIM") == "1":
        return
    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


def torchvision_imports(python: str = sys.executable) -> tuple[bool, str]:
    """Whether ``import torchvision`` works in a fresh interpreter (without this shim)."""
    env = {**os.environ, "MIRO_DISABLE_TORCHVISION_SHIM": "1"}
    proc = subprocess.run([python, "-c", "import torchvision"], capture_output=True, text=True, env=env)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install the .pth hook if it is needed")
    args = parser.parse_args(argv)
    pth = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    if importlib.util.find_spec("torchvision") is None:
        print("torchvision is not installed: no shim needed.")
        pth.unlink(missing_ok=True)
        return 0
    works, error = torchvision_imports()
    if works:
        print("torchvision imports cleanly: no shim needed.")
        pth.unlink(missing_ok=True)
        return 0
    print(f"torchvision does not import ({error}).")
    if not args.install:
        return 1
    pth.write_text("import miro.utils.torchvision_shim as _s; _s.activate()\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import torchvision, lightning"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print("The torchvision shim did not fix the import:\n" + proc.stderr[-2000:])
        return 1
    print(f"Installed the torchvision shim: {pth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
