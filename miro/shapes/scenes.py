"""The embedded "shapes" world: random scenes of coloured shapes, rendered small, with web-like flaws.

It stands in for a web-scale image-text corpus so the whole MIRO pipeline runs on a CPU in minutes,
while keeping what matters for reward conditioning: captions that a program can check
(:mod:`miro.shapes.alignment`), a share of degraded images (blur, noise, low contrast, JPEG
artefacts, colour casts) for the quality rewards to find, and a share of captions that disagree with
their image, so that "how well does the image match the text" genuinely varies across the data.

Every sample is a pure function of ``(seed, index)``: any sample can be regenerated on its own and
shards can be written in parallel, in any order, with byte-identical results. Positions and sizes are
fractions of the image side (x to the right, y downwards), so one scene renders at any resolution.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from miro.data.shards import atomic_shard_writer, encode_jpeg, write_bytes_atomic
from miro.shapes.captions import (
    COLOURS,
    OPPOSITE_RELATION,
    SHAPES,
    CaptionSpec,
    Phrase,
    describe_objects,
    facts_of,
    fraction_true,
    render_caption,
)
from miro.shapes.synthetic import describe_synthetic

log = logging.getLogger(__name__)

# Saturated object colours, at least 45 CIELAB units from each other and 60 from every background,
# so that nearest-colour classification survives blur, noise and mild casts.
OBJECT_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 40),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 170, 60),
    "blue": (30, 100, 235),
    "purple": (165, 40, 175),
}
# Muted backgrounds: dark or pale and low in chroma, never confusable with an object colour.
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "charcoal": (40, 42, 46),
    "navy": (28, 32, 60),
    "slate": (70, 80, 95),
    "sage": (150, 165, 145),
    "light grey": (200, 200, 196),
    "cream": (232, 224, 200),
}
if tuple(OBJECT_RGB) != COLOURS:  # the detector indexes both in the same order
    raise RuntimeError("the shapes palette and the caption vocabulary must name the same colours in order")

# Five or more objects large enough to classify at 24-32 px rarely fit apart by random placement.
MAX_OBJECTS = 4
MIN_SIZE = 16  # smallest image side; the detector is tested from 24 px up
# Upper bounds: the shapes world is a CPU stand-in for real data; beyond these a request is a typo
# (--size 100000 would render 30 GB images), not a data set.
MAX_SIZE = 1024
MAX_N = 100_000_000
MAX_PER_SHARD = 1_000_000


class SceneError(ValueError):
    """The requested object sizes and count do not fit into the image (raised while sampling a scene)."""


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape; ``size`` is the side of its square bounding box (triangles point up)."""

    shape: str
    colour: str
    center: tuple[float, float]
    size: float

    def bbox(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.center[0] - half, self.center[1] - half, self.center[0] + half, self.center[1] + half)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "background": {"name": self.background, "rgb": list(BACKGROUND_RGB[self.background])},
            "objects": [
                {
                    "shape": o.shape,
                    "colour": o.colour,
                    "rgb": list(OBJECT_RGB[o.colour]),
                    "center": [round(o.center[0], 5), round(o.center[1], 5)],
                    "size": round(o.size, 5),
                }
                for o in self.objects
            ],
        }


# --------------------------------------------------------------------------------------------------
# Scenes


def sample_scene(
    rng: np.random.Generator,
    size: int,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.25, 0.4),
    min_object_px: float = 7.0,
    min_gap: float = 0.06,
    border: float = 0.04,
    repeat_prob: float = 0.35,
    max_tries: int = 200,
) -> Scene:
    """A random scene of 1..``max_objects`` non-overlapping shapes.

    Bounding boxes stay ``min_gap`` apart and ``border`` inside the frame (fractions of the side) so
    every object is its own connected region and the frame's edge shows background. Objects are at
    least ``min_object_px`` pixels across so that shape classification works at ``size``. With
    probability ``repeat_prob`` several objects share colour and shape, which is what counting
    captions ("three green triangles") need.
    """
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
    if size < MIN_SIZE:
        raise ValueError(f"image size {size} is too small for the shapes world (minimum {MIN_SIZE})")
    lo = max(size_range[0], min_object_px / size)
    hi = max(size_range[1], lo)
    background = list(BACKGROUND_RGB)[rng.integers(len(BACKGROUND_RGB))]
    n = int(rng.integers(1, max_objects + 1))
    kinds = [(COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]) for _ in range(n)]
    if n >= 2 and rng.random() < repeat_prob:
        repeats = int(rng.integers(2, n + 1))
        kinds[:repeats] = [kinds[0]] * repeats
    # Shrink the largest allowed size with the object count so that crowded scenes still fit.
    top = max(lo, min(hi, 0.8 / math.sqrt(n) - min_gap))
    for _ in range(max_tries):
        placed: list[ShapeObject] = []
        for colour, shape in kinds:
            obj = _place(rng, shape, colour, placed, lo, top, min_gap, border)
            if obj is None:
                break
            placed.append(obj)
        else:
            return Scene(background=background, objects=tuple(placed))
    raise SceneError(
        f"could not place {n} objects of {lo:.2f}-{top:.2f} of the side apart in a {size} px image in "
        f"{max_tries} tries; use a smaller minimum object size (--object-size) or fewer objects "
        "(--max-objects)"
    )


def _place(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    placed: Sequence[ShapeObject],
    lo: float,
    hi: float,
    min_gap: float,
    border: float,
    tries: int = 30,
) -> ShapeObject | None:
    for _ in range(tries):
        side = float(rng.uniform(lo, hi))
        half = side / 2
        cx, cy = rng.uniform(border + half, 1 - border - half, size=2)
        obj = ShapeObject(shape, colour, (float(cx), float(cy)), side)
        if all(_separation(obj, other) >= min_gap for other in placed):
            return obj
    return None


def _separation(a: ShapeObject, b: ShapeObject) -> float:
    """Gap between two bounding boxes (negative when they overlap along both axes)."""
    ax0, ay0, ax1, ay1 = a.bbox()
    bx0, by0, bx1, by1 = b.bbox()
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def render_scene(scene: Scene, size: int, supersample: int = 4) -> Image.Image:
    """RGB image of ``scene``, antialiased by drawing ``supersample`` times larger and box-filtering."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = (v * big for v in obj.bbox())
        fill = OBJECT_RGB[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon(((obj.center[0] * big, y0), (x0, y1), (x1, y1)), fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; valid: {', '.join(SHAPES)}")
    return image.resize((size, size), Image.Resampling.BOX) if supersample > 1 else image


# --------------------------------------------------------------------------------------------------
# Captions


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that is true of the clean scene (see :func:`miro.shapes.captions.describe_objects`)."""
    return render_caption(describe_objects(scene.objects, rng))


def corrupt_spec(
    spec: CaptionSpec, objects: Sequence[ShapeObject], rng: np.random.Generator, max_count: int = MAX_OBJECTS
) -> tuple[CaptionSpec, dict[str, Any]]:
    """Change one word of ``spec`` (a colour, a count, a shape or the relation) so that it is false.

    Every candidate edit is checked against the true objects with the same facts the alignment reward
    uses, so a "mismatched" caption always contains at least one false fact. The kind of edit is
    drawn uniformly among the kinds that can produce one, then the edit within the kind.
    """
    phrases = list(spec.phrases)
    candidates: dict[str, list[tuple[CaptionSpec, dict[str, Any]]]] = {}

    def offer(kind: str, new: CaptionSpec, change: dict[str, Any]) -> None:
        if len(set(new.phrases)) < len(new.phrases):  # "a red circle and a red circle"
            return
        if fraction_true(facts_of(new), objects) < 1.0:
            candidates.setdefault(kind, []).append((new, {"kind": kind, **change}))

    for i, p in enumerate(phrases):

        def with_phrase(q: Phrase, i: int = i) -> CaptionSpec:
            return replace(spec, phrases=tuple(q if j == i else old for j, old in enumerate(phrases)))

        for colour in COLOURS:
            if colour != p.colour:
                offer(
                    "colour",
                    with_phrase(replace(p, colour=colour)),
                    {"phrase": i, "from": p.colour, "to": colour},
                )
        for shape in SHAPES:
            if shape != p.shape:
                offer(
                    "shape", with_phrase(replace(p, shape=shape)), {"phrase": i, "from": p.shape, "to": shape}
                )
        if spec.relation is None:
            for count in range(1, max(max_count, p.count + 1) + 1):
                if count != p.count:
                    new = with_phrase(replace(p, count=count, exact=True))
                    offer("count", new, {"phrase": i, "from": p.count, "to": count})
    if spec.relation is not None:
        flipped = OPPOSITE_RELATION[spec.relation]
        offer("relation", replace(spec, relation=flipped), {"from": spec.relation, "to": flipped})
    if not candidates:
        raise ValueError(f"no false variant of caption {render_caption(spec)!r} exists")
    kinds = sorted(candidates)
    options = candidates[kinds[rng.integers(len(kinds))]]
    return options[rng.integers(len(options))]


def corrupt_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """A caption that disagrees with the scene, and what was changed (recorded in the sample's json)."""
    spec = describe_objects(scene.objects, rng)
    bad, info = corrupt_spec(spec, scene.objects, rng)
    info["true_caption"] = render_caption(spec)
    info["fraction_true"] = fraction_true(facts_of(bad), scene.objects)
    return render_caption(bad), info


# --------------------------------------------------------------------------------------------------
# Degradations: each takes a strength in [0, 1] and returns the image and its parameters.

Params = dict[str, Any]
Degradation = Callable[[Image.Image, np.random.Generator, float], tuple[Image.Image, Params]]


def _blur(image: Image.Image, rng: np.random.Generator, strength: float) -> tuple[Image.Image, Params]:
    radius = 0.04 * image.width * strength  # 1.3 px at 32 px for the strongest blur
    return image.filter(ImageFilter.GaussianBlur(radius)), {"radius_px": round(radius, 3)}


def _noise(image: Image.Image, rng: np.random.Generator, strength: float) -> tuple[Image.Image, Params]:
    sigma = 25.0 * strength
    arr = np.asarray(image, dtype=np.float32) + rng.normal(0.0, sigma, size=(image.height, image.width, 3))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)), {"sigma": round(sigma, 3)}


def _low_contrast(
    image: Image.Image, rng: np.random.Generator, strength: float
) -> tuple[Image.Image, Params]:
    factor = 1.0 - 0.6 * strength
    arr = np.asarray(image, dtype=np.float32)
    mean = arr.mean(axis=(0, 1), keepdims=True)
    out = mean + factor * (arr - mean)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)), {"factor": round(factor, 3)}


def _jpeg(image: Image.Image, rng: np.random.Generator, strength: float) -> tuple[Image.Image, Params]:
    quality = int(round(60 - 45 * strength))  # 15 (strongest) to 47 at the default strengths
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)  # default 4:2:0 chroma subsampling, like the web
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), {"quality": quality}


def _colour_cast(image: Image.Image, rng: np.random.Generator, strength: float) -> tuple[Image.Image, Params]:
    gains = 1.0 + 0.25 * strength * rng.uniform(-1.0, 1.0, size=3)
    out = np.asarray(image, dtype=np.float32) * gains
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)), {
        "gains": [round(float(g), 4) for g in gains]
    }


DEGRADATIONS: dict[str, Degradation] = {
    "blur": _blur,
    "noise": _noise,
    "low_contrast": _low_contrast,
    "jpeg": _jpeg,
    "colour_cast": _colour_cast,
}


def degrade(
    image: Image.Image,
    rng: np.random.Generator,
    kinds: Sequence[str],
    strength_range: tuple[float, float] = (0.3, 1.0),
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Apply ``kinds`` in order, each at a random strength; returns the image and one record per kind."""
    records = []
    for kind in kinds:
        if kind not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {kind!r}; valid: {', '.join(DEGRADATIONS)}")
        strength = float(rng.uniform(*strength_range))
        image, params = DEGRADATIONS[kind](image, rng, strength)
        records.append({"kind": kind, "strength": round(strength, 4), **params})
    return image, records


# --------------------------------------------------------------------------------------------------
# Samples and shards


def sample_key(index: int, per_shard: int) -> str:
    """img2dataset's key: shard number (5 digits) then the index inside the shard (as many digits as
    ``per_shard - 1`` needs), e.g. index 12 with 10000 per shard -> ``000000012``."""
    digits = max(1, math.ceil(math.log10(per_shard)))
    shard, within = divmod(index, per_shard)
    return f"{shard:05d}{within:0{digits}d}"


def make_sample(
    seed: int,
    index: int,
    size: int = 32,
    degrade_prob: float = 0.3,
    mismatch_prob: float = 0.2,
    max_objects: int = 4,
    per_shard: int = 1000,
    size_range: tuple[float, float] = (0.25, 0.4),
    min_object_px: float = 7.0,
    synthetic_captions: bool = False,
) -> tuple[str, Image.Image, str, dict[str, Any]]:
    """Sample ``index`` of the data set made with ``seed``: (key, image, caption, img2dataset json).

    Scene, caption, degradation and mismatch draw from separate random streams of ``(seed, index)``,
    so changing ``degrade_prob`` or ``mismatch_prob`` leaves every scene (and true caption) unchanged.
    With ``synthetic_captions`` the json also holds ``syn_caption``, a true description of the rendered
    scene in the second caption family (:mod:`miro.shapes.synthetic`), drawn from a fifth stream so that
    everything else in the sample is unchanged.
    """
    scene_rng, caption_rng, degrade_rng, mismatch_rng, synthetic_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(5)
    )
    try:
        scene = sample_scene(scene_rng, size, max_objects, size_range=size_range, min_object_px=min_object_px)
    except SceneError as err:
        raise SceneError(f"sample {index} (seed {seed}): {err}") from None
    image = render_scene(scene, size)
    degradations: list[dict[str, Any]] = []
    if degrade_rng.random() < degrade_prob:
        n_kinds = 2 if degrade_rng.random() < 0.2 else 1
        kinds = degrade_rng.choice(list(DEGRADATIONS), size=n_kinds, replace=False)
        image, degradations = degrade(image, degrade_rng, [str(k) for k in kinds])
    mismatch: dict[str, Any] | None = None
    if mismatch_rng.random() < mismatch_prob:
        caption, mismatch = corrupt_caption(scene, caption_rng)
    else:
        caption = caption_for(scene, caption_rng)
    key = sample_key(index, per_shard)
    meta = {
        "key": key,
        "caption": caption,
        "url": f"shapes://{seed}/{index}",
        "status": "success",
        "error_message": None,
        "width": size,
        "height": size,
        "original_width": size,
        "original_height": size,
        "scene": {
            **scene.to_json(),
            "seed": seed,
            "index": index,
            "degradations": degradations,
            "caption_mismatch": mismatch,
        },
    }
    if synthetic_captions:
        meta["syn_caption"] = describe_synthetic(scene.objects, scene.background, synthetic_rng).text
    return key, image, caption, meta


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines a shapes data set's bytes (besides the shard layout)."""

    n: int
    size: int = 32
    seed: int = 0
    per_shard: int = 1000
    degrade_prob: float = 0.3
    mismatch_prob: float = 0.2
    max_objects: int = 4
    size_range: tuple[float, float] = (0.25, 0.4)  # object side as a fraction of the image side
    min_object_px: float = 7.0
    synthetic_captions: bool = False  # also write KEY.syn.txt (miro.shapes.synthetic)

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"image size must be from {MIN_SIZE} to {MAX_SIZE} px, got {self.size}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {self.max_objects}")
        if self.n < 1 or self.per_shard < 1:
            raise ValueError(f"n and per_shard must be positive, got n={self.n}, per_shard={self.per_shard}")
        if self.n > MAX_N or self.per_shard > MAX_PER_SHARD:
            raise ValueError(
                f"n must be at most {MAX_N} and per_shard at most {MAX_PER_SHARD}, got n={self.n}, "
                f"per_shard={self.per_shard}"
            )
        if not (math.isfinite(self.min_object_px) and 0 <= self.min_object_px < self.size):
            raise ValueError(f"min_object_px must be from 0 to the image size, got {self.min_object_px}")
        lo, hi = self.size_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"size_range must satisfy 0 < low <= high < 1, got {self.size_range}")
        # Two objects of the smallest allowed side must fit side by side with the gap and borders that
        # sample_scene keeps (its defaults: gap 0.06, border 0.04 of the side).
        smallest = max(lo, self.min_object_px / self.size)
        if self.max_objects >= 2 and 2 * smallest + 0.06 > 1 - 2 * 0.04:
            raise ValueError(
                f"{self.max_objects} objects of at least {smallest * self.size:.1f} px do not fit in "
                f"{self.size} px images; use a larger --size, --max-objects 1 or smaller objects"
            )
        for name in ("degrade_prob", "mismatch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n / self.per_shard)


def write_shard(out_dir: str | Path, spec: ShapesSpec, shard: int) -> tuple[Path, int]:
    """Write shard number ``shard`` (``00000.tar`` ...) atomically; returns its path and sample count."""
    path = Path(out_dir) / f"{shard:05d}.tar"
    start, stop = shard * spec.per_shard, min(spec.n, (shard + 1) * spec.per_shard)
    with atomic_shard_writer(path) as writer:
        for index in range(start, stop):
            key, image, caption, meta = make_sample(
                spec.seed,
                index,
                spec.size,
                spec.degrade_prob,
                spec.mismatch_prob,
                spec.max_objects,
                spec.per_shard,
                tuple(spec.size_range),
                spec.min_object_px,
                spec.synthetic_captions,
            )
            sample = {
                "__key__": key,
                "jpg": encode_jpeg(image),
                "txt": caption.encode("utf-8"),
                "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
            }
            if spec.synthetic_captions:
                sample["syn.txt"] = meta["syn_caption"].encode("utf-8")
            writer.write(sample)
    return path, stop - start


SPEC_FILE = "spec.json"  # written last, next to the shards: the data set they hold, once complete


def _spec_json(spec: ShapesSpec) -> str:
    fields = asdict(spec)
    if not spec.synthetic_captions:  # data sets made before the option keep their spec file (and resume)
        del fields["synthetic_captions"]
    return json.dumps(fields, sort_keys=True)


def shapes_up_to_date(spec: ShapesSpec, out_dir: str | Path) -> bool:
    """``out_dir`` already holds exactly this data set (a rerun of ``make demo`` writes nothing, so
    the scored shards made from it stay valid)."""
    out = Path(out_dir)
    try:
        same = (out / SPEC_FILE).read_text(encoding="utf-8") == _spec_json(spec)
    except OSError:
        return False
    return same and all((out / f"{i:05d}.tar").is_file() for i in range(spec.n_shards))


def _remove_previous(out_dir: Path) -> None:
    """Remove the shards an earlier, different spec wrote here (listed by its spec file), so that a
    smaller data set does not leave old shards behind for later stages to read."""
    try:
        old = ShapesSpec(**json.loads((out_dir / SPEC_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return
    (out_dir / SPEC_FILE).unlink()
    for i in range(old.n_shards):
        (out_dir / f"{i:05d}.tar").unlink(missing_ok=True)
    log.info("removed the %d shards of the previous data set in %s", old.n_shards, out_dir)


def iter_write_shapes_shards(
    spec: ShapesSpec, out_dir: str | Path, workers: int = 1
) -> Iterator[tuple[Path, int]]:
    """Write every shard, yielding (path, samples) in shard order as each is done (for progress bars);
    the spec file is written once all are done."""
    out = Path(out_dir)
    _remove_previous(out)
    shards = range(spec.n_shards)
    if workers <= 1:
        for shard in shards:
            yield write_shard(out_dir, spec, shard)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(write_shard, [out_dir] * len(shards), [spec] * len(shards), shards)
    write_bytes_atomic(out / SPEC_FILE, _spec_json(spec).encode("utf-8"))


def write_shapes_shards(
    out_dir: str | Path,
    n: int,
    size: int = 32,
    seed: int = 0,
    per_shard: int = 1000,
    degrade_prob: float = 0.3,
    mismatch_prob: float = 0.2,
    max_objects: int = 4,
    workers: int = 1,
    size_range: tuple[float, float] = (0.25, 0.4),
    min_object_px: float = 7.0,
    synthetic_captions: bool = False,
) -> list[Path]:
    """Write ``n`` samples as img2dataset-style shards under ``out_dir``; returns the shard paths."""
    spec = ShapesSpec(
        n, size, seed, per_shard, degrade_prob, mismatch_prob, max_objects, tuple(size_range), min_object_px,
        synthetic_captions,
    )
    paths = [path for path, _ in iter_write_shapes_shards(spec, out_dir, workers)]
    log.info("wrote %d shapes samples in %d shards to %s (%s)", n, len(paths), out_dir, asdict(spec))
    return paths
