"""The caption grammar of the shapes world: vocabulary, templates, parser and the facts a caption asserts.

One grammar serves three users, which is why it lives apart from the renderer and the detector:

* the data generator *describes* a scene (:func:`describe_objects`) and renders the description
  (:func:`render_caption`);
* the alignment reward *parses* any caption (:func:`parse_caption`) into checkable :data:`Fact` s and
  counts how many hold for the objects it detected (:func:`fraction_true`);
* caption corruption edits a description and re-checks it against the true scene with the same facts,
  so a "mismatched" caption is guaranteed to be false of its image.

Grammar (lower case; an optional final period is ignored)::

    caption   := [prefix] (relation | listing)
    prefix    := "a photo of" | "an image of" | "a picture of" | "a rendering of"
    relation  := single RELATION single
    listing   := phrase | phrase ("," phrase)* "and" phrase
    single    := ("a" | "an" | "one") [colour] shape
    phrase    := count [colour] shape["s"]
    count     := "a" | "an" | "one" | "two" | ... | "nine"
    RELATION  := "above" | "below" | "to the left of" | "to the right of" (also "left of", "right of",
                 "on the left of", "on the right of")

Counting follows GenEval: an article asserts *at least one* such object, a number word asserts *exactly*
that many. Relations compare object centres (image y grows downwards).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")
OPPOSITE_RELATION: dict[str, str] = {
    "above": "below",
    "below": "above",
    "left of": "right of",
    "right of": "left of",
}
PREFIXES: tuple[str, ...] = ("a photo of", "an image of", "a picture of", "a rendering of")

# How each relation is written (canonical) and every wording the parser also accepts.
_RELATION_TEXT = {
    "above": "above",
    "below": "below",
    "left of": "to the left of",
    "right of": "to the right of",
}
_RELATION_WORDINGS = {
    ("above",): "above",
    ("below",): "below",
    ("left", "of"): "left of",
    ("to", "the", "left", "of"): "left of",
    ("on", "the", "left", "of"): "left of",
    ("right", "of"): "right of",
    ("to", "the", "right", "of"): "right of",
    ("on", "the", "right", "of"): "right of",
}
_PLURALS = {shape + "s": shape for shape in SHAPES}
_ARTICLES = ("a", "an")


def vocabulary() -> list[str]:
    """Every word a caption of this grammar can contain, in a fixed order.

    A closed-vocabulary text encoder is built from this list; fixing the order here (not by scanning a
    data set) means two runs, or a model and the captions it is later prompted with, agree on word ids.
    """
    words: list[str] = []
    for text in (*PREFIXES, *_RELATION_TEXT.values(), *(" ".join(w) for w in _RELATION_WORDINGS)):
        words.extend(text.split())
    words += [*_ARTICLES, *NUMBER_WORDS, *COLOURS, *SHAPES, *_PLURALS, "and"]
    return list(dict.fromkeys(words))


class CaptionParseError(ValueError):
    """A caption outside the shapes grammar; the message quotes the caption and the offending word."""


class SceneObject(Protocol):
    """Anything with a shape, a colour and a centre: a scene's ground truth or a detector's output."""

    @property
    def shape(self) -> str: ...

    @property
    def colour(self) -> str: ...

    @property
    def center(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class Phrase:
    """``count [colour] shape``: ``exact`` is False for an article ("a red circle" = at least one)."""

    shape: str
    colour: str | None = None
    count: int = 1
    exact: bool = False

    def matches(self, obj: SceneObject) -> bool:
        return obj.shape == self.shape and (self.colour is None or obj.colour == self.colour)


@dataclass(frozen=True)
class CaptionSpec:
    """A structured caption. With a ``relation``, ``phrases`` is (subject, object) of that relation."""

    phrases: tuple[Phrase, ...]
    relation: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class CountFact:
    """The scene holds ``phrase.count`` matching objects (exactly, or at least for an article)."""

    phrase: Phrase

    def holds(self, objects: Sequence[SceneObject], relation_margin: float = 0.0) -> bool:
        n = sum(self.phrase.matches(o) for o in objects)
        return n == self.phrase.count if self.phrase.exact else n >= self.phrase.count


@dataclass(frozen=True)
class RelationFact:
    """Some object matching ``subject`` is ``relation`` some other object matching ``obj``.

    ``relation_margin`` (in image widths) is how far apart the centres must be along the axis; a
    small positive margin keeps side-by-side objects from satisfying "above" through pixel jitter.
    """

    subject: Phrase
    relation: str
    obj: Phrase

    def holds(self, objects: Sequence[SceneObject], relation_margin: float = 0.0) -> bool:
        subjects = [o for o in objects if self.subject.matches(o)]
        others = [o for o in objects if self.obj.matches(o)]
        return any(
            a is not b and relation_holds(a.center, b.center, self.relation, relation_margin)
            for a in subjects
            for b in others
        )


Fact = CountFact | RelationFact


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str, margin: float) -> bool:
    """Whether centre ``a`` is ``relation`` centre ``b`` by more than ``margin`` (x right, y down)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if relation == "left of":
        return dx > margin
    if relation == "right of":
        return -dx > margin
    if relation == "above":
        return dy > margin
    if relation == "below":
        return -dy > margin
    raise ValueError(f"unknown relation {relation!r}; valid: {', '.join(RELATIONS)}")


def facts_of(spec: CaptionSpec) -> list[Fact]:
    """The facts a caption asserts. A relation also asserts that both of its objects exist, so a
    caption whose objects are drawn but misplaced earns partial credit (2 of 3)."""
    facts: list[Fact] = [CountFact(p) for p in spec.phrases]
    if spec.relation is not None:
        facts.append(RelationFact(spec.phrases[0], spec.relation, spec.phrases[1]))
    return facts


def fraction_true(
    facts: Sequence[Fact], objects: Sequence[SceneObject], relation_margin: float = 0.0
) -> float:
    """Share of ``facts`` that hold for ``objects`` (NaN for no facts: there is nothing to check)."""
    if not facts:
        return float("nan")
    return sum(f.holds(objects, relation_margin) for f in facts) / len(facts)


# --------------------------------------------------------------------------------------------------
# Rendering


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def render_phrase(phrase: Phrase) -> str:
    words = [phrase.colour] if phrase.colour else []
    words.append(phrase.shape if phrase.count == 1 else phrase.shape + "s")
    if phrase.exact or phrase.count != 1:
        count = NUMBER_WORDS[phrase.count - 1]
    else:
        count = _article(words[0])
    return " ".join([count, *words])


def render_caption(spec: CaptionSpec) -> str:
    """The canonical text of ``spec``; :func:`parse_spec` inverts it exactly."""
    phrases = [render_phrase(p) for p in spec.phrases]
    if spec.relation is not None:
        body = f"{phrases[0]} {_RELATION_TEXT[spec.relation]} {phrases[1]}"
    elif len(phrases) == 1:
        body = phrases[0]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{spec.prefix} {body}" if spec.prefix else body


# --------------------------------------------------------------------------------------------------
# Parsing

_TOKEN = re.compile(r"[a-z]+|,")


class _Tokens:
    """A cursor over the caption's words that builds error messages naming the caption and word."""

    def __init__(self, text: str) -> None:
        self.text = text
        body = text.strip().lower().rstrip(".").strip()
        leftover = _TOKEN.sub(" ", body).strip()
        if leftover:
            raise CaptionParseError(f"caption {text!r} is not in the shapes grammar: unexpected {leftover!r}")
        self.words = _TOKEN.findall(body)
        self.pos = 0

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.words[i] if i < len(self.words) else None

    def take(self) -> str:
        word = self.peek()
        if word is None:
            self.fail("the caption ends too early")
        self.pos += 1
        return word

    def at(self, words: Sequence[str]) -> bool:
        return tuple(self.words[self.pos : self.pos + len(words)]) == tuple(words)

    def fail(self, why: str) -> NoReturn:
        raise CaptionParseError(
            f"caption {self.text!r} is not in the shapes grammar: {why} (word {self.pos + 1})"
        )


def _parse_phrase(tokens: _Tokens) -> Phrase:
    word = tokens.take()
    if word in _ARTICLES:
        count, exact = 1, False
    elif word in NUMBER_WORDS:
        count, exact = NUMBER_WORDS.index(word) + 1, True
    else:
        tokens.fail(f"expected a count ('a', 'two', ...), got {word!r}")
    colour = None
    if tokens.peek() in COLOURS:
        colour = tokens.take()
    word = tokens.take()
    shape = word if word in SHAPES else _PLURALS.get(word)
    if shape is None:
        tokens.fail(f"expected a shape ({', '.join(SHAPES)}), got {word!r}")
    return Phrase(shape=shape, colour=colour, count=count, exact=exact)


def _parse_relation(tokens: _Tokens) -> str | None:
    for wording, relation in sorted(_RELATION_WORDINGS.items(), key=lambda kv: -len(kv[0])):
        if tokens.at(wording):
            tokens.pos += len(wording)
            return relation
    return None


def parse_spec(text: str) -> CaptionSpec:
    """Caption text -> :class:`CaptionSpec`; :class:`CaptionParseError` if it is outside the grammar."""
    if not isinstance(text, str):
        raise CaptionParseError(f"caption {text!r} is not a string")
    tokens = _Tokens(text)
    if not tokens.words:
        tokens.fail("the caption is empty")
    prefix = ""
    for candidate in PREFIXES:
        if tokens.at(candidate.split()):
            prefix = candidate
            tokens.pos += len(candidate.split())
            break
    phrases = [_parse_phrase(tokens)]
    relation = _parse_relation(tokens)
    if relation is not None:
        phrases.append(_parse_phrase(tokens))
        if any(p.count != 1 for p in phrases):
            tokens.fail("a relation must relate two single objects")
    else:
        while tokens.peek() in (",", "and"):
            tokens.take()
            if tokens.peek() == "and":  # tolerate the Oxford comma
                tokens.take()
            phrases.append(_parse_phrase(tokens))
    if tokens.peek() is not None:
        tokens.fail(f"unexpected {tokens.peek()!r}")
    return CaptionSpec(phrases=tuple(phrases), relation=relation, prefix=prefix)


def parse_caption(text: str) -> list[Fact]:
    """Caption text -> the facts it asserts; :class:`CaptionParseError` if it is not in the grammar."""
    return facts_of(parse_spec(text))


# --------------------------------------------------------------------------------------------------
# Describing a scene


def _groups(objects: Sequence[SceneObject], with_colour: bool) -> list[Phrase]:
    """Objects grouped by (colour, shape) or by shape alone, in first-seen order."""
    counts: dict[tuple[str | None, str], int] = {}
    for obj in objects:
        key = (obj.colour if with_colour else None, obj.shape)
        counts[key] = counts.get(key, 0) + 1
    return [Phrase(shape=shape, colour=colour, count=n, exact=n > 1) for (colour, shape), n in counts.items()]


def _relation_candidates(
    objects: Sequence[SceneObject], with_colour: bool, min_offset: float
) -> list[tuple[Phrase, str, Phrase]]:
    """(subject, relation, object) triples that are true with room to spare: both objects are the only
    ones of their description, and their centres are at least ``min_offset`` apart along the axis."""
    singles = [p for p in _groups(objects, with_colour) if p.count == 1]
    found = []
    for a in singles:
        for b in singles:
            if a == b:
                continue
            oa = next(o for o in objects if a.matches(o))
            ob = next(o for o in objects if b.matches(o))
            for relation in RELATIONS:
                if relation_holds(oa.center, ob.center, relation, min_offset):
                    found.append((a, relation, b))
    return found


def describe_objects(
    objects: Sequence[SceneObject],
    rng: np.random.Generator,
    relation_prob: float = 0.4,
    omit_colour_prob: float = 0.1,
    prefix_prob: float = 0.5,
    numeral_prob: float = 0.1,
    min_relation_offset: float = 0.15,
) -> CaptionSpec:
    """A true description of ``objects``, drawn from the templates with the given probabilities.

    A listing names every object (grouped, with exact counts for groups of two or more); a relation
    names two objects that are unique in the scene, so the caption never claims something false
    about the clean scene. ``min_relation_offset`` (in image widths) keeps relations unambiguous.
    """
    if not objects:
        raise ValueError("cannot describe a scene without objects")
    with_colour = rng.random() >= omit_colour_prob
    prefix = PREFIXES[rng.integers(len(PREFIXES))] if rng.random() < prefix_prob else ""
    candidates = _relation_candidates(objects, with_colour, min_relation_offset)
    if candidates and rng.random() < relation_prob:
        subject, relation, obj = candidates[rng.integers(len(candidates))]
        return CaptionSpec(phrases=(subject, obj), relation=relation, prefix=prefix)
    phrases = [
        p if p.count > 1 or rng.random() >= numeral_prob else Phrase(p.shape, p.colour, 1, True)
        for p in _groups(objects, with_colour)
    ]
    order = rng.permutation(len(phrases))
    return CaptionSpec(phrases=tuple(phrases[i] for i in order), prefix=prefix)
