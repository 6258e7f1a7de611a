"""A second caption family for the shapes world: what a captioning model would write ("synthetic").

MIRO recaptions its data with a vision-language model and trains on the original and the synthetic
caption 50/50. On the shapes world the "captioning model" is this module: it describes the *rendered*
scene (never the sample's caption, which is false for the data's mismatched share) in a grammar of its
own - longer, descriptive sentences with their own words ("a picture with a small red circle on the left
and a blue square on the right") - so that the text encoder sees the same facts phrased two ways, and a
sample with a wrong original caption also carries a right one.

Every sentence is built from facts of :mod:`miro.shapes.captions` that hold for the scene (checked with
the alignment reward's own :func:`~miro.shapes.captions.fraction_true`), and it names exactly the scene's
objects: every colour and shape word in it belongs to an object, and every object is named. The
wording choices are drawn from the random stream the caller passes, so a sample's synthetic caption is a
pure function of ``(seed, index)`` like the rest of the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from miro.shapes.captions import (
    NUMBER_WORDS,
    CountFact,
    Fact,
    Phrase,
    RelationFact,
    SceneObject,
    fraction_true,
    relation_holds,
)

# The family's own openings and wordings (none of them is in the original grammar's prefixes).
OPENINGS: tuple[str, ...] = (
    "a picture with",
    "an illustration showing",
    "this image shows",
    "a simple drawing of",
    "there is",
)
# Size words by the object's side (fraction of the image side): true of the scene, unknown to the
# original grammar.
SIZE_WORDS: tuple[tuple[float, str], ...] = ((0.36, "small"), (0.44, "medium-sized"), (1.01, "large"))
# Where an object is, said as a caption writer would; per relation of its centre to the other object's.
SIDE_WORDS: dict[str, tuple[str, str]] = {
    "left of": ("on the left", "on the right"),
    "above": ("at the top", "at the bottom"),
}
BACKGROUND_WORDS: tuple[str, ...] = ("background", "backdrop")
MIN_OFFSET = 0.15  # as the original captions: positions are only said when they are unambiguous


@dataclass(frozen=True)
class SyntheticCaption:
    """A synthetic caption and the facts it asserts (all true of the scene it was made from)."""

    text: str
    facts: tuple[Fact, ...]


def _size_word(side: float) -> str:
    return next(word for bound, word in SIZE_WORDS if side < bound)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _single(obj: SceneObject, with_size: bool) -> str:
    words = ([_size_word(float(obj.size))] if with_size else []) + [obj.colour, obj.shape]  # type: ignore[attr-defined]
    return f"{_article(words[0])} {' '.join(words)}"


def describe_synthetic(
    objects: Sequence[SceneObject],
    background: str,
    rng: np.random.Generator,
    size_prob: float = 0.5,
    position_prob: float = 0.7,
    background_prob: float = 0.5,
) -> SyntheticCaption:
    """One sentence naming every object of the scene with its colour (and, sometimes, its size, where
    it is and the background). Objects need ``shape``, ``colour``, ``center`` and ``size``.

    Raises ValueError for an empty scene or a caption whose facts would not all hold (a bug, not data).
    """
    if not objects:
        raise ValueError("cannot describe a scene without objects")
    opening = OPENINGS[rng.integers(len(OPENINGS))]
    with_size = rng.random() < size_prob
    groups: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    kinds = list(groups)
    facts: list[Fact] = [
        CountFact(Phrase(shape, colour, len(members), True)) for (colour, shape), members in groups.items()
    ]

    def name(members: list[SceneObject]) -> str:
        if len(members) == 1:
            return _single(members[0], with_size)
        return f"{NUMBER_WORDS[len(members) - 1]} {members[0].colour} {members[0].shape}s"

    if len(kinds) == 1:  # one object, or several of one kind: "two green triangles"
        body = name(groups[kinds[0]])
        if len(objects) > 1 and rng.random() < 0.5:
            body += " of the same kind" if rng.random() < 0.5 else " side by side"
    else:
        ordered = [groups[kinds[i]] for i in rng.permutation(len(kinds))]
        body = ""
        if len(objects) == 2 and rng.random() < position_prob:  # two single objects: say where each is
            a, b = ordered[0][0], ordered[1][0]
            for relation, (near, far) in SIDE_WORDS.items():
                for first, second in ((a, b), (b, a)):
                    if relation_holds(first.center, second.center, relation, MIN_OFFSET):
                        body = f"{_single(first, with_size)} {near} and {_single(second, with_size)} {far}"
                        subject, obj = Phrase(first.shape, first.colour), Phrase(second.shape, second.colour)
                        facts.append(RelationFact(subject, relation, obj))
                        break
                if body:
                    break
        if not body:
            names = [name(members) for members in ordered]
            joiner = " next to " if len(names) == 2 and rng.random() < 0.5 else None
            body = joiner.join(names) if joiner else ", ".join(names[:-1]) + " and " + names[-1]
    if rng.random() < background_prob:
        body += f" against a {background} {BACKGROUND_WORDS[rng.integers(len(BACKGROUND_WORDS))]}"
    if opening == "there is" and len(objects) > 1 and len(kinds) == 1:
        opening = "there are"
    text = f"{opening} {body}."
    text = text[0].upper() + text[1:]
    if fraction_true(facts, objects, 0.0) != 1.0:  # the family's promise: only true facts
        raise ValueError(f"synthetic caption {text!r} asserts something false of its scene")
    return SyntheticCaption(text=text, facts=tuple(facts))
