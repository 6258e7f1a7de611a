"""conf/ is found both in a source checkout and in an installed wheel (where it is miro/conf)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from miro.config import CONF_DIR, find_conf_dir

REPO = Path(__file__).resolve().parent.parent


def test_every_package_and_config_group_is_listed():
    """pyproject.toml lists the packages by hand (conf/ must be mapped into miro/conf, which discovery
    cannot do); one missing from the list would be missing from the wheel."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["miro.conf"] == "conf"
    groups = {f"miro.conf.{p.name}" for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"}
    code = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("miro", "data_prep")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert groups and code and groups | code | {"miro.conf"} == set(setuptools["packages"])


def test_a_checkout_uses_its_top_level_conf_else_the_installed_copy(tmp_path):
    package = tmp_path / "site" / "miro"
    (package / "conf").mkdir(parents=True)
    assert find_conf_dir(package) == package / "conf"  # a wheel: no train.yaml beside the package
    (tmp_path / "site" / "conf").mkdir()
    (tmp_path / "site" / "conf" / "train.yaml").write_text("{}")
    assert find_conf_dir(package) == tmp_path / "site" / "conf"
    assert CONF_DIR == REPO / "conf"  # the tests run from a checkout


def test_a_wheel_carries_the_configs_and_its_commands_find_them(tmp_path):
    """Build the wheel from a copy of the sources (no build/ left in the checkout), unpack it and
    compose the training config through ``python -m miro.train`` from another directory."""
    src = tmp_path / "src"
    for name in ("miro", "data_prep", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", tmp_path / "dist", src], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("miro-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    conf_files = {p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*") if p.is_file()}
    assert {"miro/" + f for f in conf_files} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    job = subprocess.run(
        [sys.executable, "-m", "miro.train", "--cfg", "job", "+experiment=shapes"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert job.returncode == 0, job.stderr
    assert "miro.models.dit.MiroDiT" in job.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import miro.config as c; print(c.CONF_DIR)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(where.stdout.strip()) == site / "miro" / "conf"


def test_the_shapes_experiment_trains_as_long_as_make_demo() -> None:
    """`python -m miro.train +experiment=shapes` by hand and `make demo` train the same default length."""
    from miro.config import compose_config

    made = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True)
    steps = compose_config("train", ["+experiment=shapes"]).trainer.max_steps
    assert f"trainer.max_steps={steps} " in made.stdout.replace("\\\n\t", "")
