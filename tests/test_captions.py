"""The shapes caption grammar: rendering, parsing (round trips and errors) and the facts' semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from miro.shapes.captions import (
    COLOURS,
    RELATIONS,
    SHAPES,
    CaptionParseError,
    CaptionSpec,
    CountFact,
    Phrase,
    RelationFact,
    describe_objects,
    facts_of,
    fraction_true,
    parse_caption,
    parse_spec,
    relation_holds,
    render_caption,
)
from miro.shapes.scenes import ShapeObject, sample_scene


def obj(shape: str, colour: str, x: float, y: float) -> ShapeObject:
    return ShapeObject(shape, colour, (x, y), 0.3)


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("a red circle", [CountFact(Phrase("circle", "red", 1, False))]),
        ("an orange square.", [CountFact(Phrase("square", "orange", 1, False))]),
        ("A Photo of a triangle", [CountFact(Phrase("triangle", None, 1, False))]),
        ("three green triangles", [CountFact(Phrase("triangle", "green", 3, True))]),
        ("one blue circle", [CountFact(Phrase("circle", "blue", 1, True))]),
        (
            "a red circle and a blue square",
            [CountFact(Phrase("circle", "red")), CountFact(Phrase("square", "blue"))],
        ),
        (
            "an image of two circles, a yellow square, and four purple triangles",
            [
                CountFact(Phrase("circle", None, 2, True)),
                CountFact(Phrase("square", "yellow")),
                CountFact(Phrase("triangle", "purple", 4, True)),
            ],
        ),
        (
            "a red circle above a blue square",
            [
                CountFact(Phrase("circle", "red")),
                CountFact(Phrase("square", "blue")),
                RelationFact(Phrase("circle", "red"), "above", Phrase("square", "blue")),
            ],
        ),
    ],
)
def test_parse_examples(text: str, facts: list) -> None:
    assert parse_caption(text) == facts


@pytest.mark.parametrize("wording", ["to the left of", "left of", "on the left of"])
def test_relation_wordings_are_synonyms(wording: str) -> None:
    spec = parse_spec(f"a picture of a green triangle {wording} one red square")
    assert spec.relation == "left of"
    assert spec.prefix == "a picture of"
    assert spec.phrases == (Phrase("triangle", "green"), Phrase("square", "red", 1, True))


def test_render_uses_correct_articles_and_plurals() -> None:
    spec = CaptionSpec((Phrase("circle", "orange"), Phrase("square", None, 3, True)), prefix="an image of")
    assert render_caption(spec) == "an image of an orange circle and three squares"
    spec = CaptionSpec((Phrase("triangle", "red"), Phrase("circle", "blue")), relation="right of")
    assert render_caption(spec) == "a red triangle to the right of a blue circle"


def test_every_template_round_trips() -> None:
    """Every caption the generator can write parses back to the same structure and the same text."""
    kinds = set()
    for i in range(400):
        rng = np.random.default_rng([7, i])
        scene = sample_scene(rng, 32, max_objects=4)
        spec = describe_objects(scene.objects, rng)
        text = render_caption(spec)
        assert parse_spec(text) == spec, text
        assert render_caption(parse_spec(text)) == text
        assert parse_caption(text) == facts_of(spec)
        kinds.add("relation" if spec.relation else f"list{len(spec.phrases)}")
        kinds.update({"prefix"} if spec.prefix else set())
        kinds.update({"counting"} if any(p.count > 1 for p in spec.phrases) else set())
        kinds.update({"no colour"} if any(p.colour is None for p in spec.phrases) else set())
        kinds.update({"numeral one"} if any(p.exact and p.count == 1 for p in spec.phrases) else set())
    assert kinds >= {"relation", "list1", "list2", "list3", "prefix", "counting", "no colour", "numeral one"}


def test_exhaustive_single_phrases_round_trip() -> None:
    for shape in SHAPES:
        for colour in (*COLOURS, None):
            for count in range(1, 10):
                for exact in (True, False) if count == 1 else (True,):
                    spec = CaptionSpec((Phrase(shape, colour, count, exact),))
                    assert parse_spec(render_caption(spec)) == spec


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("   .", "empty"),
        ("a red hexagon", "'hexagon'"),
        ("red circle", "expected a count"),
        ("a red circle near a blue square", "'near'"),
        ("a red circle and", "ends too early"),
        ("two circles above a square", "two single objects"),
        ("a red circle!", "'!'"),
        ("a photo of", "ends too early"),
        ("ten red circles", "expected a count"),
    ],
)
def test_bad_captions_raise_naming_the_caption(text: str, complaint: str) -> None:
    with pytest.raises(CaptionParseError) as info:
        parse_caption(text)
    assert isinstance(info.value, ValueError)
    assert repr(text) in str(info.value) and complaint in str(info.value)


def test_non_string_caption_is_rejected() -> None:
    with pytest.raises(CaptionParseError, match="not a string"):
        parse_caption(None)  # type: ignore[arg-type]


def test_count_semantics_article_is_at_least_numeral_is_exact() -> None:
    scene = [obj("circle", "red", 0.2, 0.2), obj("circle", "red", 0.8, 0.2), obj("square", "blue", 0.5, 0.8)]
    assert CountFact(Phrase("circle", "red")).holds(scene)  # "a red circle": at least one
    assert not CountFact(Phrase("circle", "red", 1, True)).holds(scene)  # "one red circle": exactly one
    assert CountFact(Phrase("circle", "red", 2, True)).holds(scene)
    assert CountFact(Phrase("circle", None, 2, True)).holds(scene)
    assert not CountFact(Phrase("circle", "blue")).holds(scene)
    assert not CountFact(Phrase("triangle")).holds(scene)


def test_relations_compare_centres_with_a_margin() -> None:
    a, b = (0.2, 0.5), (0.6, 0.52)  # a is clearly left of b, and level with it
    assert relation_holds(a, b, "left of", 0.05) and relation_holds(b, a, "right of", 0.05)
    assert not relation_holds(a, b, "right of", 0.0)
    assert relation_holds(a, b, "above", 0.0) and not relation_holds(a, b, "above", 0.05)
    with pytest.raises(ValueError, match="unknown relation"):
        relation_holds(a, b, "beside", 0.0)
    assert set(RELATIONS) == {"above", "below", "left of", "right of"}


def test_relation_fact_needs_two_distinct_objects() -> None:
    scene = [obj("circle", "red", 0.2, 0.2), obj("circle", "red", 0.2, 0.8)]
    fact = RelationFact(Phrase("circle", "red"), "above", Phrase("circle", "red"))
    assert fact.holds(scene)
    assert not fact.holds(scene[:1])  # one object is never above itself


def test_fraction_true_counts_partial_credit() -> None:
    scene = [obj("circle", "red", 0.2, 0.8), obj("square", "blue", 0.2, 0.2)]
    facts = parse_caption("a red circle above a blue square")  # both exist, relation is false
    assert fraction_true(facts, scene) == pytest.approx(2 / 3)
    assert fraction_true(parse_caption("a red circle below a blue square"), scene) == 1.0
    assert fraction_true(facts, []) == 0.0
    assert math.isnan(fraction_true([], scene))


def test_descriptions_are_true_of_their_scene() -> None:
    for i in range(300):
        rng = np.random.default_rng([11, i])
        scene = sample_scene(rng, 32, max_objects=4)
        spec = describe_objects(scene.objects, rng)
        assert fraction_true(facts_of(spec), scene.objects) == 1.0, render_caption(spec)
        if spec.relation is None:  # a listing names every object
            assert sum(p.count for p in spec.phrases) == len(scene.objects)


def test_describe_rejects_empty_scene() -> None:
    with pytest.raises(ValueError, match="without objects"):
        describe_objects([], np.random.default_rng(0))
