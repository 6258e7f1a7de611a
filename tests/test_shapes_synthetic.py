"""The shapes world's second caption family (miro-data shapes --synthetic-captions): only true facts of the
rendered scene, every object named and nothing else, deterministic per (seed, index), and off by default
without changing a byte of the demo's data or its spec file."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from miro.data.shards import encode_jpeg, iter_shard
from miro.shapes.captions import (
    COLOURS,
    SHAPES,
    CaptionParseError,
    fraction_true,
    parse_caption,
    relation_holds,
)
from miro.shapes.cli import main as data_main
from miro.shapes.scenes import ShapeObject, ShapesSpec, _spec_json, make_sample, sample_scene
from miro.shapes.synthetic import MIN_OFFSET, describe_synthetic

_WORD = re.compile(r"[a-z-]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _named(text: str) -> tuple[set[str], set[str]]:
    """Colour and shape words of ``text`` (plurals folded), background words excluded: the shapes
    palette and the background names share no word."""
    words = _words(text)
    return {w for w in words if w in COLOURS}, {w.rstrip("s") for w in words if w.rstrip("s") in SHAPES}


def _scenes(n: int, seed: int = 0) -> list:
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    return [sample_scene(r, 24, 2, size_range=(0.3, 0.5)) for r in rngs]


def test_synthetic_captions_assert_only_true_facts_and_name_exactly_the_scene() -> None:
    rng = np.random.default_rng(7)
    texts = set()
    for scene in _scenes(400):
        syn = describe_synthetic(scene.objects, scene.background, rng)
        texts.add(syn.text)
        assert fraction_true(syn.facts, scene.objects) == 1.0
        colours, shapes = _named(syn.text)
        assert colours == {o.colour for o in scene.objects}
        assert shapes == {o.shape for o in scene.objects}
        # every object is named by its colour and shape (once per kind; "two red circles" for a pair)
        assert len(syn.facts) >= len({(o.colour, o.shape) for o in scene.objects})
        if "on the left" in syn.text or "at the top" in syn.text:
            first, second = re.findall(rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})", syn.text)
            a = next(o for o in scene.objects if (o.colour, o.shape) == first)
            b = next(o for o in scene.objects if (o.colour, o.shape) == second)
            relation = "left of" if "on the left" in syn.text else "above"
            assert relation_holds(a.center, b.center, relation, MIN_OFFSET)
    # a grammar of its own: none of these parses as an original caption
    for text in list(texts)[:50]:
        with pytest.raises(CaptionParseError):
            parse_caption(text)
    assert len(texts) > 200  # varied wording, not one template


def test_synthetic_caption_of_a_hand_made_scene() -> None:
    left = ShapeObject("square", "orange", (0.25, 0.5), 0.3)
    right = ShapeObject("circle", "red", (0.75, 0.5), 0.48)
    texts = {describe_synthetic([right, left], "navy", np.random.default_rng(s)).text for s in range(60)}
    placed = [t for t in texts if "on the left" in t]
    assert placed and all(re.search(r"orange square on the left and a (large )?red circle on the right", t)
                          for t in placed)
    assert any("small orange square" in t for t in texts) and any("large red circle" in t for t in texts)
    assert not any("on the right and" in t for t in texts)  # never the false order
    pair = [ShapeObject("triangle", "green", (0.3, 0.3), 0.3),
            ShapeObject("triangle", "green", (0.7, 0.7), 0.3)]
    assert all("two green triangles" in describe_synthetic(pair, "cream", np.random.default_rng(s)).text
               for s in range(10))
    with pytest.raises(ValueError, match="without objects"):
        describe_synthetic([], "cream", np.random.default_rng(0))


def test_samples_with_synthetic_captions_are_deterministic_and_true_even_when_the_caption_is_false() -> None:
    for index in range(60):
        key, image, caption, meta = make_sample(5, index, size=24, max_objects=2, size_range=(0.3, 0.5),
                                                mismatch_prob=1.0, synthetic_captions=True)
        again = make_sample(5, index, size=24, max_objects=2, size_range=(0.3, 0.5), mismatch_prob=1.0,
                            synthetic_captions=True)
        assert again[3] == meta and again[2] == caption
        plain = make_sample(5, index, size=24, max_objects=2, size_range=(0.3, 0.5), mismatch_prob=1.0)
        assert plain[2] == caption and encode_jpeg(plain[1]) == encode_jpeg(image)  # nothing else changes
        assert {k: v for k, v in meta.items() if k != "syn_caption"} == plain[3]
        objects = meta["scene"]["objects"]
        assert meta["scene"]["caption_mismatch"] is not None  # the original caption is false...
        colours, shapes = _named(meta["syn_caption"])  # ...the synthetic one names the scene as drawn
        assert colours == {o["colour"] for o in objects} and shapes == {o["shape"] for o in objects}
    other = make_sample(6, 0, size=24, synthetic_captions=True)[3]["syn_caption"]
    assert other  # another seed draws its own words (determinism is per seed and index)


def test_the_demo_data_and_its_spec_file_are_unchanged_when_the_option_is_off() -> None:
    # Pinned from the code before the option existed: make demo's samples and spec.json, byte for byte,
    # so a rerun of make demo still finds its shards up to date.
    digest = hashlib.sha256()
    for i in range(40):
        _, image, caption, meta = make_sample(0, i, size=24, max_objects=2, size_range=(0.3, 0.5))
        digest.update(encode_jpeg(image) + caption.encode() + json.dumps(meta, sort_keys=True).encode())
    assert digest.hexdigest() == "5e0747973c0f72013c7ded51547bd6bebf7bbf8aa7583eb2524499afe71f73f6"
    demo = ShapesSpec(n=20000, size=24, max_objects=2, size_range=(0.3, 0.5))
    assert _spec_json(demo) == (
        '{"degrade_prob": 0.3, "max_objects": 2, "min_object_px": 7.0, "mismatch_prob": 0.2, "n": 20000, '
        '"per_shard": 1000, "seed": 0, "size": 24, "size_range": [0.3, 0.5]}'
    )
    with_syn = ShapesSpec(n=20000, size=24, max_objects=2, size_range=(0.3, 0.5), synthetic_captions=True)
    assert json.loads(_spec_json(with_syn))["synthetic_captions"] is True


def test_cli_writes_syn_txt_only_when_asked_and_rewrites_when_the_option_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    args = ["shapes", "--out", str(out), "--n", "6", "--size", "24", "--max-objects", "2"]
    assert data_main(args) == 0
    assert not any(k.endswith("syn.txt") for s in iter_shard(out / "00000.tar") for k in s)
    assert data_main([*args, "--synthetic-captions"]) == 0
    assert "Wrote 6 samples" in capsys.readouterr().out  # a different data set: not "nothing written"
    samples = list(iter_shard(out / "00000.tar"))
    assert len(samples) == 6
    for s in samples:
        meta = json.loads(s["json"])
        assert s["syn.txt"].decode("utf-8") == meta["syn_caption"] and meta["syn_caption"].endswith(".")
    assert json.loads((out / "spec.json").read_text())["synthetic_captions"] is True
