"""Opening a model directory never runs code its config.json names (issue 17, item 1).

The attacker's payload is a real module on sys.path (``evil_payload``) that writes a marker file when it
is imported and another when its function is called; each crafted config puts that name (or
``builtins.open``, which would truncate a victim file) somewhere Hydra's ``instantiate`` would reach it:
as the component's ``_target_``, nested in an argument, in ``_args_``, with ``_partial_``, behind a
``${oc.env:...}`` interpolation, inside the DiT's or the VAE's arguments. Every one must end in a
one-line CheckpointError naming config.json and the entry, with no marker written, the victim intact,
the module never imported and Hydra's instantiate never called.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra.utils
import pytest
from conftest import OFFLINE_REWARDS
from tiny_models import export_tiny_model

import miro.pretrained
from miro.components import MODEL, TEXT_ENCODERS, VAES
from miro.pretrained import CONFIG, CheckpointError, load_pretrained

EVIL = "evil_payload"
WORD = "miro.models.text.WordTextEncoder"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("export"), None, reward_names=OFFLINE_REWARDS)


@pytest.fixture
def attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The payload module on sys.path, its marker files and a victim file ``builtins.open`` would empty."""
    markers = {name: tmp_path / name for name in ("imported", "called", "victim")}
    markers["victim"].write_text("precious")
    (tmp_path / f"{EVIL}.py").write_text(
        f"open({str(markers['imported'])!r}, 'w').write('imported')\n"
        "def payload(*args, **kwargs):\n"
        f"    open({str(markers['called'])!r}, 'w').write(repr((args, kwargs)))\n"
        "    return payload\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MIRO_EVIL_TARGET", f"{EVIL}.payload")
    monkeypatch.delitem(sys.modules, EVIL, raising=False)

    def no_instantiate(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("hydra instantiate was called on a model directory's config")

    monkeypatch.setattr(hydra.utils, "instantiate", no_instantiate)
    monkeypatch.setattr(miro.pretrained, "instantiate", no_instantiate, raising=False)
    return markers


def _target(**args: Any) -> dict[str, Any]:
    return {"_target_": f"{EVIL}.payload", **args}


def _text(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return config["text_encoder"] | changes


# (entry the error must name, how to edit the exported config)
PAYLOADS = {
    "text_target": ("text_encoder._target_", lambda c, m: {"text_encoder": _target()}),
    "text_builtins_open": (
        "text_encoder._target_",
        lambda c, m: {"text_encoder": {"_target_": "builtins.open", "file": str(m["victim"]), "mode": "w"}},
    ),
    "text_target_via_env": (
        "text_encoder._target_", lambda c, m: {"text_encoder": {"_target_": "${oc.env:MIRO_EVIL_TARGET}"}}
    ),
    "text_partial": ("text_encoder._target_", lambda c, m: {"text_encoder": _target(_partial_=True)}),
    "nested_in_argument": ("text_encoder.vocab", lambda c, m: {"text_encoder": _text(c, vocab=_target())}),
    "nested_in_list": ("text_encoder.vocab", lambda c, m: {"text_encoder": _text(c, vocab=["a", _target()])}),
    "args_key": ("_args_", lambda c, m: {"text_encoder": _text(c, _args_=[_target()])}),
    "recursive_key": ("_recursive_", lambda c, m: {"text_encoder": _text(c, _recursive_=True)}),
    "interpolation_in_argument": (
        "text_encoder.vocab", lambda c, m: {"text_encoder": _text(c, vocab=["${oc.env:MIRO_EVIL_TARGET}"])}
    ),
    "registered_module_other_function": (
        "text_encoder._target_",
        lambda c, m: {"text_encoder": {"_target_": "miro.components.build_component"}},
    ),
    "vae_target": ("vae._target_", lambda c, m: {"vae": _target()}),
    "vae_nested_config": (
        "vae.config", lambda c, m: {"vae": {"_target_": "miro.models.vae.LatentVAE", "config": _target()}}
    ),
    "vae_not_an_object": ("vae", lambda c, m: {"vae": f"{EVIL}.payload"}),
    "model_nested": ("model.reward_names", lambda c, m: {"model": c["model"] | {"reward_names": _target()}}),
    "model_target_key": ("model", lambda c, m: {"model": c["model"] | {"_target_": f"{EVIL}.payload"}}),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_crafted_config_reaches_no_callable(
    name: str, export: Path, tmp_path: Path, attack: dict[str, Path]
) -> None:
    entry, edit = PAYLOADS[name]
    root = Path(shutil.copytree(export, tmp_path / "model"))
    config = json.loads((root / CONFIG).read_text())
    config |= edit(config, attack)
    (root / CONFIG).write_text(json.dumps(config))

    with pytest.raises(CheckpointError) as info:
        load_pretrained(root)

    message = str(info.value)
    assert "\n" not in message and str(root / CONFIG) in message and entry in message, message
    assert not attack["imported"].exists() and EVIL not in sys.modules
    assert not attack["called"].exists()
    assert attack["victim"].read_text() == "precious"


def test_the_payloads_are_live_under_hydra(tmp_path: Path, attack: dict[str, Path]) -> None:
    """The harness can fail: the same entry handed to Hydra (what loading did before) runs the payload."""
    from hydra._internal.instantiate._instantiate2 import instantiate

    instantiate(_target(x=1))
    assert attack["imported"].exists() and attack["called"].exists()
    instantiate({"_target_": "builtins.open", "file": str(attack["victim"]), "mode": "w"}).close()
    assert attack["victim"].read_text() == ""


def test_todays_exports_still_load(export: Path) -> None:
    loaded = load_pretrained(export)
    assert type(loaded.text_encoder).__name__ == "WordTextEncoder" and loaded.vae is None


def test_registry_covers_the_shipped_components() -> None:
    """Every text encoder and VAE config in conf/ names a registered class with allowed arguments, so
    the exports training writes from them load."""
    import yaml

    from miro.config import CONF_DIR

    for group, registry in (("text_encoder", TEXT_ENCODERS), ("vae", VAES)):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            config = yaml.safe_load(path.read_text())
            assert config["_target_"] in registry, path
            args = {k for k in config if k != "_target_"}
            assert args <= set(registry[config["_target_"]].args), path
    for component in (*TEXT_ENCODERS.values(), *VAES.values(), MODEL):
        assert isinstance(component.resolve(), type)


def test_dit_arguments_match_its_exported_config(export: Path) -> None:
    config = json.loads((export / CONFIG).read_text())
    assert set(config["model"]) <= set(MODEL.args)
