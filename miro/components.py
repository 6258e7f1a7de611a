"""The closed registry of classes an exported model directory may name, with their allowed arguments.

An export's ``config.json`` is data someone else wrote. Handing its ``text_encoder`` / ``vae`` entries
to Hydra's ``instantiate`` would let that file call any importable function (``builtins.open``,
``torch.load`` of a pickle, ``os.system``), with nested ``_target_``, ``_args_`` or ``_partial_`` in
the arguments and ``${oc.env:...}`` interpolations on top. Here a component entry is only ever matched
against this table: ``_target_`` must be one of the names below, every other key must be one of that
class's listed arguments with a value of the listed kind (JSON scalars and lists; no nested objects
except a VAE's diffusers config, and no key starting with ``_`` anywhere), and nothing is imported or
called before the whole entry has passed. Anything else is a :class:`ComponentError` naming the entry.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ComponentError(ValueError):
    """A component entry that is not in the registry or has an argument it does not allow."""


@dataclass(frozen=True)
class Arg:
    """One allowed constructor argument: what it must be (for the message) and the check."""

    kind: str
    check: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_plain_str(v: Any) -> bool:
    # No interpolation syntax: nothing resolves it here, and a value that looks like one is a sign of a
    # config meant for OmegaConf (where ${oc.env:...} would read the environment).
    return isinstance(v, str) and "${" not in v


def _is_json_data(v: Any) -> bool:
    """Plain nested data without underscore keys (no ``_target_`` / ``_args_`` / ``_partial_``)."""
    if v is None or isinstance(v, bool) or _is_number(v) or _is_plain_str(v):
        return True
    if isinstance(v, list):
        return all(_is_json_data(x) for x in v)
    if isinstance(v, dict):
        return all(_is_plain_str(k) and not k.startswith("_") and _is_json_data(x) for k, x in v.items())
    return False


INT = Arg("an integer", _is_int)
POSITIVE_INT = Arg("a positive integer", lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE_INT = Arg("an integer >= 0", lambda v: _is_int(v) and v >= 0)
NUMBER = Arg("a finite number", _is_number)
PROBABILITY = Arg("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)
BOOL = Arg("true or false", lambda v: isinstance(v, bool))
STRING = Arg("a string", _is_plain_str)
OPTIONAL_STRING = Arg("a string or null", lambda v: v is None or _is_plain_str(v))
STRINGS = Arg("a list of strings", lambda v: isinstance(v, list) and all(_is_plain_str(x) for x in v))
POSITIVE_INTS = Arg(
    "a list of positive integers", lambda v: isinstance(v, list) and all(_is_int(x) and x >= 1 for x in v)
)
TEXT_KIND = Arg('"t5", "clip", "auto" or null', lambda v: v in (None, "t5", "clip", "auto"))
DTYPE = Arg(
    "a dtype name or null", lambda v: v in (None, "float32", "float16", "bfloat16", "auto")
)
JSON_OBJECT = Arg(
    "an object of plain values (no keys starting with _)", lambda v: isinstance(v, dict) and _is_json_data(v)
)


@dataclass(frozen=True)
class Component:
    """A class the registry may build: where it lives in this package and the arguments it takes."""

    module: str
    attr: str
    args: Mapping[str, Arg]
    required: tuple[str, ...] = ()

    def resolve(self) -> type:
        return getattr(importlib.import_module(self.module), self.attr)


_HF_TEXT_ARGS = {
    "model_name_or_path": STRING, "max_length": POSITIVE_INT, "kind": TEXT_KIND, "dtype": DTYPE,
    "local_files_only": BOOL, "min_vocab_size": NON_NEGATIVE_INT, "cache_size": NON_NEGATIVE_INT,
}

TEXT_ENCODERS: dict[str, Component] = {
    "miro.models.text.WordTextEncoder": Component(
        "miro.models.text", "WordTextEncoder",
        {"vocab": STRINGS, "dim": POSITIVE_INT, "depth": POSITIVE_INT, "num_heads": POSITIVE_INT,
         "max_length": POSITIVE_INT, "mlp_ratio": NUMBER, "cache_size": NON_NEGATIVE_INT},
        required=("vocab",),
    ),
    "miro.models.text.MiniLMTextEncoder": Component(
        "miro.models.text", "MiniLMTextEncoder", {"max_length": POSITIVE_INT, "cache_size": NON_NEGATIVE_INT}
    ),
    "miro.models.text.HFTextEncoder": Component(
        "miro.models.text", "HFTextEncoder", _HF_TEXT_ARGS, required=("model_name_or_path",)
    ),
}

VAES: dict[str, Component] = {
    "miro.models.vae.LatentVAE": Component(
        "miro.models.vae", "LatentVAE",
        {"model_name_or_path": OPTIONAL_STRING, "config": JSON_OBJECT, "subfolder": OPTIONAL_STRING,
         "revision": OPTIONAL_STRING},
    ),
}

# The DiT's entry has no _target_ (there is one model class); its arguments are checked the same way.
MODEL = Component(
    "miro.models.dit", "MiroDiT",
    {"image_size": POSITIVE_INT, "in_channels": POSITIVE_INT, "patch_size": POSITIVE_INT,
     "hidden_size": POSITIVE_INT, "depth": POSITIVE_INT, "num_heads": POSITIVE_INT, "mlp_ratio": NUMBER,
     "text_dim": POSITIVE_INT, "reward_names": STRINGS, "reward_dropout": PROBABILITY,
     "fourier_dim": POSITIVE_INT, "fourier_max_frequency": NUMBER, "pooled_text": BOOL,
     "pooled_rewards": BOOL, "conv_channels": NON_NEGATIVE_INT, "unet_channels": POSITIVE_INTS,
     "grad_checkpointing": BOOL, "self_conditioning": BOOL, "refiner_depth": NON_NEGATIVE_INT,
     "refiner_registers": NON_NEGATIVE_INT},
    required=("image_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads", "text_dim"),
)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_arguments(component: Component, entry: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` as keyword arguments of ``component`` once every key and value is allowed."""
    for key, value in args.items():
        if not isinstance(key, str) or key not in component.args:
            allowed = ", ".join(sorted(component.args))
            raise ComponentError(
                f"{entry}: {component.attr} takes no argument {_short(key)} (allowed: {allowed})"
            )
        arg = component.args[key]
        if not arg.check(value):
            raise ComponentError(f"{entry}.{key} must be {arg.kind}, got {_short(value)}")
    absent = [k for k in component.required if k not in args]
    if absent:
        raise ComponentError(f"{entry}: {component.attr} needs {', '.join(absent)}")
    return dict(args)


def lookup(registry: Mapping[str, Component], entry: str, config: Any) -> tuple[Component, dict[str, Any]]:
    """The registered component an entry names and its checked arguments; nothing is imported yet."""
    if not isinstance(config, dict):
        raise ComponentError(f"{entry} must be an object with a _target_, got {_short(config)}")
    args = dict(config)
    target = args.pop("_target_", None)
    if not isinstance(target, str) or target not in registry:
        known = ", ".join(sorted(registry))
        raise ComponentError(f"{entry}._target_ {_short(target)} is not a known component (known: {known})")
    component = registry[target]
    return component, check_arguments(component, entry, args)


def build_component(registry: Mapping[str, Component], entry: str, config: Any) -> Any:
    """Check ``config`` against ``registry`` completely, then build the one class it names."""
    component, kwargs = lookup(registry, entry, config)
    return component.resolve()(**kwargs)


def build_model(entry: str, config: Any) -> Any:
    """The DiT from its exported arguments (no ``_target_``: a model directory holds a MiroDiT)."""
    if not isinstance(config, dict):
        raise ComponentError(f"{entry} must be an object, got {_short(config)}")
    return MODEL.resolve().from_config(check_arguments(MODEL, entry, config))
