"""Exported model directories and Lightning checkpoints keep loading: MiroDiT against fixtures recorded
from the code they were written with (tests/fixtures/record_dit_compat.py says how; never re-record to
make this pass).

* every conf/model config has the same state-dict keys, shapes and order (the order indexes a resumed
  run's optimiser state);
* small models with each config's structure load the recorded weights strictly and compute the recorded
  outputs, and a seed still gives the same initial weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors import safe_open

from miro.components import MODEL, check_arguments
from miro.config import compose_config
from miro.models.dit import MiroDiT

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LAYOUT = json.loads((FIXTURES / "dit_layout.json").read_text())
OUTPUTS = FIXTURES / "dit_outputs.safetensors"
with safe_open(str(OUTPUTS), "pt") as _f:
    SMALL = json.loads(_f.metadata()["configs"])


def _recorded(prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(OUTPUTS), "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(LAYOUT["layouts"]))
def test_conf_model_state_dict_layout_is_unchanged(name: str) -> None:
    base, _, _ = name.partition("+")
    overrides = LAYOUT["extra_overrides"].get(name, [])
    cfg = compose_config("train", [f"model={base}", *overrides])
    with torch.device("meta"):  # DiT-XL's layout without its 2.7 GB
        model = instantiate(cfg.model, text_dim=LAYOUT["text_dim"], reward_names=LAYOUT["reward_names"])
    layout = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert layout == LAYOUT["layouts"][name]
    # what optimiser states are indexed by: parameters() in the same order as the recorded state dict
    params = [n for n, _ in model.named_parameters()]
    assert params == [key for key, _ in LAYOUT["layouts"][name] if key in set(params)]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_recorded_weights_load_and_give_the_recorded_outputs(name: str) -> None:
    config = check_arguments(MODEL, "model", SMALL[name])  # an exported config.json's arguments pass
    model = MiroDiT.from_config(config).eval()
    weights = {k: v.float() for k, v in _recorded(f"{name}/weights/").items()}
    model.load_state_dict(weights, strict=True)
    inputs = _recorded(f"{name}/inputs/")
    inputs["text_mask"], inputs["reward_mask"] = inputs["text_mask"].bool(), inputs["reward_mask"].bool()
    expected = _recorded(f"{name}/")
    with torch.no_grad():
        if model.self_conditioning:
            first, tokens = model(**inputs, return_tokens=True)
            torch.testing.assert_close(first, expected["output_first_pass"], rtol=1e-5, atol=1e-5)
            out = model(**inputs, previous_tokens=tokens)
        else:
            out = model(**inputs)
    assert out.abs().max() > 0.1  # the weights were randomised: a real function is compared, not zeros
    torch.testing.assert_close(out, expected["output"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_seed_gives_the_recorded_initial_weights(name: str) -> None:
    torch.manual_seed(0)
    model = MiroDiT(**SMALL[name])
    sums = torch.stack([p.double().sum() for p in model.state_dict().values()])
    torch.testing.assert_close(sums, _recorded(f"{name}/")["init_sums"], rtol=1e-6, atol=1e-6)
