"""The core never imports the shapes world: a contract over the import graph.

``miro/shapes/`` is a plug-in (renderer, caption grammar, detector reward, benchmark, prompt pool); the
rest of ``miro`` and ``data_prep`` must work for any domain. Every module outside ``miro/shapes/`` is
parsed (never imported, so a module that fails to import is still checked) and its imports collected:
``import``/``from`` statements (relative ones resolved), ``importlib.import_module`` / ``__import__``
calls and any string that is a dotted module path (a module list handed to ``import_module`` later).
The primary configs the entry points compose (``conf/*.yaml``, with their default groups) must not name
a ``_target_`` in the shapes world either: that is the plug-in's wiring, chosen by an experiment or by
name (``benchmark=shapes``, ``rewards=alignment``), never loaded by default.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from miro.config import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "miro.shapes"
PACKAGES = ("miro", "data_prep")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
# Known, named exceptions (path -> why), each to be removed when its reason goes away. None at present.
EXEMPT: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if not module_name(p).startswith(PLUGIN)
            and str(p.relative_to(ROOT)) not in EXEMPT]


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for everything ``path`` imports or names as a module to import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:  # from miro import shapes
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
            yield node.lineno, node.value  # import_module("..."), __import__("..."), module lists


def is_plugin(name: str) -> bool:
    return name == PLUGIN or name.startswith(PLUGIN + ".")


def plugin_imports(paths: list[Path]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in paths for line, name in imported_names(path) if is_plugin(name)
    ]


def test_the_core_never_imports_the_shapes_world() -> None:
    modules = core_modules()
    assert len(modules) > 50 and not any("shapes" in module_name(p).split(".")[:2] for p in modules)
    offenders = plugin_imports(modules)
    assert not offenders, "the core imports the shapes plug-in:\n" + "\n".join(offenders)


def test_the_check_sees_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector itself: each way of reaching the plug-in is caught (a contract that cannot fail
    would pass on anything)."""
    fake_root = tmp_path
    (fake_root / "miro" / "eval").mkdir(parents=True)
    cases = {
        "plain.py": "import miro.shapes.alignment\n",
        "from_import.py": "from miro.shapes.benchmark import ShapesBenchmark\n",
        "from_package.py": "from miro import shapes\n",
        "relative.py": "from ..shapes import captions\n",
        "dynamic.py": "import importlib\nimportlib.import_module('miro.shapes.alignment')\n",
        "module_list.py": "MODULES = ('miro.rewards.offline',) + ('miro.shapes.alignment',)\n",
        "clean.py": "import miro.rewards\n'''the shapes world lives in miro.shapes (a docstring)'''\n",
    }
    for name, text in cases.items():
        (fake_root / "miro" / "eval" / name).write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", fake_root)
    caught = {p.name for p in (fake_root / "miro" / "eval").glob("*.py") if plugin_imports([p])}
    assert caught == set(cases) - {"clean.py"}


def targets(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield where or "<root>", value
            else:
                yield from targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from targets(value, f"{where}[{i}]")


@pytest.mark.parametrize("config", sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
def test_default_configs_name_no_shapes_target(config: str) -> None:
    try:
        cfg = compose_config(config, [])
    except HydraException as err:  # a config with a mandatory choice (???) composes only when told
        pytest.skip(f"conf/{config}.yaml does not compose without overrides: {err}")
    tree = OmegaConf.to_container(cfg, resolve=False)
    offenders = [f"{where}: {target}" for where, target in targets(tree) if is_plugin(target)]
    assert not offenders, f"conf/{config}.yaml loads the shapes plug-in by default: {offenders}"
