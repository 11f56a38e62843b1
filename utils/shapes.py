"""Shapes: a small captioning dataset whose captions can be checked exactly.

Every image is drawn from a *scene*, a list of one to three objects, each with a shape, a colour,
a size and a bounding box. The scene is stored next to the image, so a caption can be checked word
by word: :func:`check_caption` parses it with a small grammar and says whether it is true of the
scene (*correct*) and whether it mentions every object (*complete*). The reference captions come
from the same grammar and are judged by the same code, so a perfect captioner can score 100%.

Only numpy and Pillow are needed here; TensorFlow is never imported.

The caption grammar (tokens are lower-case words; commas in raw captions are dropped)::

    caption  := [prefix] item ( [","] item )* "and" item  |  [prefix] item
    prefix   := "there is" | "there are" | "the image shows" | "a picture of"
    item     := group | group relation group
    group    := det [size] colour noun        det in {a, one, two, three}
    relation := "left of" | "right of" | "to the left of" | "to the right of" | "above" | "below"

A group claims that *exactly* ``det`` objects of the scene match its colour, shape and (when
given) size; ``G1 relation G2`` claims that every object of G1 stands in that relation to every
object of G2. "there is" / "there are" must agree with the count of the first group, and a noun is
plural exactly when its determiner is "two" or "three".
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .checksums import file_sha256

try:
    import fcntl
except ImportError:  # Windows: no flock, so stale staging folders are left for the user to delete
    fcntl = None

# --------------------------------------------------------------------------- the world

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")

#: Paint of each colour. Every pair is at least ~140 apart in RGB, and all of them stand out
#: against the dark background, so a small CNN can tell them apart despite tint and noise.
COLOUR_RGB = {
    "red": (225, 45, 45),
    "green": (40, 185, 70),
    "blue": (55, 95, 235),
    "yellow": (240, 215, 40),
    "purple": (185, 60, 205),
    "white": (240, 240, 240),
}
BACKGROUND_RGB = (40, 42, 52)

#: Side of an object's bounding box as a share of the image side. Three large objects still fit
#: (a 2 x 2 arrangement needs 2 * 0.36 of the side plus gaps).
SIZE_FRACTIONS = {"small": 0.2, "large": 0.36}
MAX_OBJECTS = 3
MIN_IMAGE_SIZE = 32  # below this, small objects are a handful of pixels and stop being shapes
MAX_IMAGE_SIZE = 1024  # guards against a typo that would ask for gigabytes of canvas
OBJECT_GAP_PIXELS = 2  # background pixels kept between two bounding boxes
EDGE_PIXELS = 1  # background pixels kept between a bounding box and the image border
#: A relation holds only when the centres differ by at least this share of the image side, so no
#: caption hinges on a difference a reader (or a model) could not see.
RELATION_MARGIN_FRACTION = 1 / 8

#: Pairs never seen in train/val/test: one per colour and one per shape. Every ``test_novel``
#: image holds at least one of them, which tests compositional generalisation.
HELDOUT_PAIRS = (
    ("red", "star"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "triangle"),
    ("white", "diamond"),
)
#: The 30 pairs that train, val and test may use.
SEEN_PAIRS = tuple(
    (colour, shape)
    for colour in COLOURS
    for shape in SHAPES
    if (colour, shape) not in HELDOUT_PAIRS
)

# --------------------------------------------------------------------------- scene sampling

#: Share of multi-object scenes that repeat a (colour, shape) pair, so counts such as
#: "two red circles" occur; of the repeating three-object scenes, this share repeat it three times.
DUPLICATE_PROBABILITY = 0.18
TRIPLE_PROBABILITY = 0.3
PLACEMENT_ATTEMPTS = 50  # random positions tried for one object before starting the layout over
SCENE_ATTEMPTS = 200  # layouts tried before giving up (never reached at MIN_IMAGE_SIZE or above)

# --------------------------------------------------------------------------- reference captions
# The template mix. A captioning model is trained on one random reference per image per epoch,
# so these shares are what it learns to imitate.

REFERENCES_PER_IMAGE = 5
MAX_REFERENCE_TOKENS = 16  # matches the ``max_caption_tokens`` of the smaller book profiles
#: Share of an image's references that use a relation ("a red circle left of a blue square"),
#: by number of objects.
RELATION_SHARE = {1: 0.0, 2: 0.4, 3: 0.2}
#: Chance that a reference starts with "there is/are", "the image shows" or "a picture of".
PREFIX_PROBABILITY = {1: 0.3, 2: 0.2, 3: 0.15}
SIZE_PROBABILITY = 0.5  # a reference names the size of every group, or of none it can omit
ONE_PROBABILITY = 0.15  # "one red circle" instead of "a red circle"
LONG_RELATION_PROBABILITY = 0.5  # "to the left of" instead of "left of"
LEFT_TO_RIGHT_PROBABILITY = 0.7  # a list names its groups from left to right, else shuffled
SPLIT_BY_SIZE_PROBABILITY = 0.5  # "a small red circle and a large red circle" vs "two red circles"
CAPTION_ATTEMPTS = 30  # samples tried to find a reference the image does not have yet

PREFIXES = ("there is", "there are", "the image shows", "a picture of")
RELATION_WORDINGS = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
}
COUNT_WORDS = {"a": 1, "one": 1, "two": 2, "three": 3}
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "star": "stars",
    "cross": "crosses",
}

# --------------------------------------------------------------------------- rendering

SUPERSAMPLE = 4  # shapes are drawn this many times larger, then box-filtered down (anti-aliasing)
BACKGROUND_TINT = 16  # each channel of the background moves by up to this much per image
NOISE_STD = 6.0  # per-pixel Gaussian noise over the whole image
COLOUR_JITTER = 14  # each channel of an object's paint moves by up to this much
STAR_INNER_RATIO = 0.45  # inner radius / outer radius; fatter points stay visible at 13 pixels
CROSS_ARM_HALF_WIDTH = 0.18  # half the width of a plus sign's arm, as a share of its box

# --------------------------------------------------------------------------- the dataset on disk

DATASET_NAME = "shapes"
JSON_NAME = "dataset_shapes.json"
IMAGE_FOLDER = "images"
#: Bumped whenever a change to this module changes the files written for the same arguments, so an
#: old dataset on disk is not mistaken for a current one.
GENERATOR_VERSION = 1
#: Written last into every dataset folder :func:`write_dataset` makes. Only a folder that holds it,
#: whose dataset file has the sha256 it records, and that holds nothing but that dataset's files,
#: counts as written by this program and may be replaced (see :func:`write_dataset`).
MARKER_NAME = ".shapes-marker.json"
MARKER_PROGRAM = "utils.shapes.write_dataset"
STAGING = "partial"  # staging folders are named .NAME.partial-<12 hex digits> (_unique_sibling)
_STAGED_IMAGE = re.compile(r"shapes_\d{6,}\.png")  # the names _fill_folder gives images
SPLIT_FRACTIONS = {"train": 0.75, "val": 0.10, "test": 0.10, "test_novel": 0.05}
#: Lower bounds of the disk space one image takes. Measured from 32 to 1024 pixels: a PNG holds
#: 0.65-0.69 bytes per pixel channel (the noise does not compress) and the JSON 1.0-1.2 kB per
#: image. Slightly less is assumed, so that only a count that surely cannot fit is refused.
PNG_BYTES_PER_CHANNEL = 0.6
JSON_BYTES_PER_IMAGE = 900

Pair = tuple[str, str]


class DatasetExistsError(FileExistsError):
    """The output folder holds something other than the dataset that was asked for."""


# =========================================================================== scenes


def generate_scene(
    rng: np.random.Generator,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    allowed: Iterable[Sequence[str]] | None = None,
    require_any: Iterable[Sequence[str]] | None = None,
) -> dict:
    """Sample a random scene of non-overlapping objects.

    ``allowed`` limits the (colour, shape) pairs that may appear (default: all 36);
    ``require_any`` makes at least one object take a pair from that set. Returns a JSON-ready dict
    ``{"image_size": int, "objects": [{"shape", "colour", "size", "bbox": [x0, y0, x1, y1]}]}``
    where ``x1``/``y1`` are exclusive pixel bounds.
    """
    _check_image_size(image_size)
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}")
    pool = _pair_pool(allowed)
    if len(pool) < max_objects:
        raise ValueError(f"allowed holds {len(pool)} pairs; {max_objects} objects need more")
    required = _pair_pool(require_any) if require_any is not None else None
    if required is not None and not set(required) <= set(pool):
        raise ValueError("require_any names pairs that allowed excludes")
    for _ in range(SCENE_ATTEMPTS):
        count = int(rng.integers(min_objects, max_objects + 1))
        pairs = _sample_pairs(rng, count, pool, required)
        sizes = [SIZES[int(i)] for i in rng.integers(0, len(SIZES), size=count)]
        boxes = _place_boxes(rng, [object_side(size, image_size) for size in sizes], image_size)
        if boxes is not None:
            objects = [
                {"shape": shape, "colour": colour, "size": size, "bbox": box}
                for (colour, shape), size, box in zip(pairs, sizes, boxes, strict=True)
            ]
            return {"image_size": image_size, "objects": objects}
    raise RuntimeError(f"could not place {max_objects} objects on a {image_size}-pixel canvas")


def object_side(size: str, image_size: int) -> int:
    """Side in pixels of the bounding box of a ``size`` ("small"/"large") object."""
    return max(1, round(SIZE_FRACTIONS[size] * image_size))


def _check_image_size(image_size: int) -> None:
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels "
            f"(smaller images cannot hold {MAX_OBJECTS} recognisable objects), got {image_size}"
        )


def _pair_pool(pairs: Iterable[Sequence[str]] | None) -> list[Pair]:
    """Validated, sorted (colour, shape) pairs; sorted so sampling never depends on set order."""
    if pairs is None:
        return [(colour, shape) for colour in COLOURS for shape in SHAPES]
    pool = sorted({(str(colour), str(shape)) for colour, shape in pairs})
    unknown = [pair for pair in pool if pair[0] not in COLOURS or pair[1] not in SHAPES]
    if unknown or not pool:
        raise ValueError(f"expected known (colour, shape) pairs, got {unknown or 'none'}")
    return pool


def _sample_pairs(
    rng: np.random.Generator, count: int, pool: list[Pair], required: list[Pair] | None
) -> list[Pair]:
    """``count`` (colour, shape) pairs in random order, sometimes with one pair repeated."""
    first_choices = required or pool
    first = first_choices[int(rng.integers(len(first_choices)))]
    repeats = 1
    if count > 1 and rng.random() < DUPLICATE_PROBABILITY:
        repeats = 3 if count == 3 and rng.random() < TRIPLE_PROBABILITY else 2
    others = [pair for pair in pool if pair != first]
    picked = rng.choice(len(others), size=count - repeats, replace=False)
    pairs = [first] * repeats + [others[int(i)] for i in picked]
    return [pairs[int(i)] for i in rng.permutation(count)]


def _place_boxes(
    rng: np.random.Generator, sides: list[int], image_size: int
) -> list[list[int]] | None:
    """One square box per side length, none overlapping; None when this layout got stuck."""
    boxes: list[list[int]] = []
    for side in sides:
        box = _free_box(rng, side, image_size, boxes)
        if box is None:
            return None
        boxes.append(box)
    return boxes


def _free_box(
    rng: np.random.Generator, side: int, image_size: int, taken: list[list[int]]
) -> list[int] | None:
    highest_corner = image_size - EDGE_PIXELS - side
    for _ in range(PLACEMENT_ATTEMPTS):
        x0, y0 = (int(v) for v in rng.integers(EDGE_PIXELS, highest_corner + 1, size=2))
        box = [x0, y0, x0 + side, y0 + side]
        if all(_boxes_apart(box, other) for other in taken):
            return box
    return None


def _boxes_apart(a: Sequence[int], b: Sequence[int]) -> bool:
    gap = OBJECT_GAP_PIXELS
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def describe(scene: dict) -> str:
    """A short summary of a scene, objects from left to right (for figure titles)."""
    ordered = sorted(scene["objects"], key=lambda obj: _centre(obj["bbox"]))
    return ", ".join(f"{obj['size']} {obj['colour']} {obj['shape']}" for obj in ordered)


# =========================================================================== relations


def relation_holds(a: dict, b: dict, relation: str, image_size: int) -> bool:
    """Whether object ``a`` is ``relation`` ("left of", "right of", "above", "below") object ``b``.

    Compares bounding-box centres (y grows downwards) and demands a clear margin of
    ``RELATION_MARGIN_FRACTION * image_size`` pixels along the relation's axis.
    """
    (ax, ay), (bx, by) = _centre(a["bbox"]), _centre(b["bbox"])
    offsets = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}
    if relation not in offsets:
        raise ValueError(f"unknown relation {relation!r}; choose one of {RELATIONS}")
    return offsets[relation] >= RELATION_MARGIN_FRACTION * image_size


def _centre(bbox: Sequence[int]) -> tuple[float, float]:
    return (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2


# =========================================================================== meaning of captions


@dataclasses.dataclass(frozen=True)
class _Group:
    """``count`` objects of one colour and shape, of one size or (size None) of any size."""

    count: int
    size: str | None
    colour: str
    shape: str


@dataclasses.dataclass(frozen=True)
class _Item:
    """One listed item: a group alone, or ``subject relation landmark``."""

    subject: _Group
    relation: str | None = None
    landmark: _Group | None = None

    @property
    def groups(self) -> tuple[_Group, ...]:
        return (self.subject,) if self.landmark is None else (self.subject, self.landmark)


def _denotation(group: _Group, objects: Sequence[dict]) -> list[int]:
    """Indices of the objects a group refers to."""
    return [
        index
        for index, obj in enumerate(objects)
        if obj["colour"] == group.colour
        and obj["shape"] == group.shape
        and group.size in (None, obj["size"])
    ]


def _relation_true(
    subject: _Group, relation: str, landmark: _Group, objects: Sequence[dict], image_size: int
) -> bool:
    return all(
        relation_holds(objects[a], objects[b], relation, image_size)
        for a in _denotation(subject, objects)
        for b in _denotation(landmark, objects)
    )


def _item_true(item: _Item, objects: Sequence[dict], image_size: int) -> bool:
    counts_right = all(len(_denotation(group, objects)) == group.count for group in item.groups)
    if item.relation is None:
        return counts_right
    return counts_right and _relation_true(
        item.subject, item.relation, item.landmark, objects, image_size
    )


# =========================================================================== reading captions

_SPECIAL_TOKENS = re.compile(r"<\s*(?:start|end)\s*>")
_NON_LETTERS = re.compile(r"[^a-z]+")
#: Each noun's shape and whether it is plural.
_NOUNS = {
    **{shape: (shape, False) for shape in SHAPES},
    **{plural: (shape, True) for shape, plural in PLURALS.items()},
}
# Longest wordings first, so "to the left of" is never cut short.
_RELATION_PHRASES = sorted(
    (
        (tuple(wording.split()), relation)
        for relation, wordings in RELATION_WORDINGS.items()
        for wording in wordings
    ),
    key=lambda entry: -len(entry[0]),
)


def tokenize(caption: str) -> list[str]:
    """Standardise a caption into words: lower case, no punctuation, no <start>/<end> markers."""
    without_markers = _SPECIAL_TOKENS.sub(" ", caption.lower())
    return _NON_LETTERS.sub(" ", without_markers).split()


@dataclasses.dataclass(frozen=True)
class CaptionCheck:
    """The verdict on one caption: grammatical, true, mentions everything, and all three."""

    parsed: bool
    correct: bool
    complete: bool
    exact: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        # Derived, yet a real field so dataclasses.asdict() reports it too.
        object.__setattr__(self, "exact", self.parsed and self.correct and self.complete)


def check_caption(caption: str, scene: dict) -> CaptionCheck:
    """Judge ``caption`` (raw text or tokens joined by spaces) against a scene dict as stored."""
    items = _parse(tokenize(caption))
    if items is None:
        return CaptionCheck(parsed=False, correct=False, complete=False)
    objects, image_size = scene["objects"], scene["image_size"]
    denotations = [_denotation(group, objects) for item in items for group in item.groups]
    mentioned = {i for indices in denotations for i in indices}
    # Every object is mentioned once: "a red circle and a red circle" claims two red circles.
    once = sum(len(indices) for indices in denotations) == len(mentioned)
    correct = once and all(_item_true(item, objects, image_size) for item in items)
    return CaptionCheck(parsed=True, correct=correct, complete=len(mentioned) == len(objects))


def stated_relations(caption: str, scene: dict) -> list[bool] | None:
    """Whether each relation the caption states is true of ``scene``, in the caption's order:
    ``[]`` for a caption that states none, ``None`` for one outside the grammar. A relation is
    true when both groups name the objects they count and the relation holds between them."""
    items = _parse(tokenize(caption))
    if items is None:
        return None
    objects, image_size = scene["objects"], scene["image_size"]
    return [_item_true(item, objects, image_size) for item in items if item.relation is not None]


def mentions(caption: str, scene: dict) -> list[tuple[int, list[int]]] | None:
    """Where each group of a caption names its objects: ``[(noun position, object indices)]``.

    Positions index :func:`tokenize`'s words (the shape noun that ends each group); the indices
    are the scene objects the group denotes. ``None`` when the caption is outside the grammar.
    Used to check whether attention looked at the object being named.
    """
    tokens = tokenize(caption)
    items = _parse(tokens)
    if items is None:
        return None
    groups = [group for item in items for group in item.groups]
    nouns = [position for position, token in enumerate(tokens) if token in _NOUNS]
    return [(position, _denotation(group, scene["objects"])) for position, group in zip(nouns, groups)]


class _Cursor:
    """Reads a token list from left to right; a failed read consumes nothing."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0

    def at_end(self) -> bool:
        return self.position == len(self.tokens)

    def take_phrase(self, words: Sequence[str]) -> bool:
        end = self.position + len(words)
        if tuple(self.tokens[self.position : end]) != tuple(words):
            return False
        self.position = end
        return True

    def take_word(self, vocabulary: Iterable[str]) -> str | None:
        if not self.at_end() and self.tokens[self.position] in vocabulary:
            self.position += 1
            return self.tokens[self.position - 1]
        return None


def _parse(tokens: list[str]) -> list[_Item] | None:
    """The items of a caption in the grammar, or None when it is outside the grammar."""
    cursor = _Cursor(tokens)
    prefix = next((p for p in PREFIXES if cursor.take_phrase(p.split())), None)
    items: list[_Item] = []
    separators: list[str] = []
    while True:
        item = _read_item(cursor)
        if item is None:
            return None
        items.append(item)
        if cursor.at_end():
            break
        separators.append("and" if cursor.take_phrase(["and"]) else ",")
    # "and" must join the last two items and appear nowhere else.
    if separators and (separators[-1] != "and" or "and" in separators[:-1]):
        return None
    if prefix in ("there is", "there are") and (prefix == "there are") != (
        items[0].subject.count > 1
    ):
        return None
    return items


def _read_item(cursor: _Cursor) -> _Item | None:
    subject = _read_group(cursor)
    if subject is None:
        return None
    for words, relation in _RELATION_PHRASES:
        if cursor.take_phrase(words):
            landmark = _read_group(cursor)
            return None if landmark is None else _Item(subject, relation, landmark)
    return _Item(subject)


def _read_group(cursor: _Cursor) -> _Group | None:
    determiner = cursor.take_word(COUNT_WORDS)
    size = cursor.take_word(SIZES)
    colour = cursor.take_word(COLOURS)
    noun = cursor.take_word(_NOUNS)
    if determiner is None or colour is None or noun is None:
        return None
    shape, plural = _NOUNS[noun]
    count = COUNT_WORDS[determiner]
    if plural != (count > 1):
        return None
    return _Group(count, size, colour, shape)


# =========================================================================== writing captions


def reference_captions(
    scene: dict, rng: np.random.Generator, n: int = REFERENCES_PER_IMAGE
) -> list[str]:
    """``n`` different true and complete raw captions of a scene (repeats only if it has fewer).

    The mix of forms follows RELATION_SHARE, PREFIX_PROBABILITY and the other template knobs;
    every caption has at most MAX_REFERENCE_TOKENS tokens.
    """
    if not scene["objects"]:
        raise ValueError("a scene without objects has no captions")
    relation_count = int(n * RELATION_SHARE[len(scene["objects"])] + 0.5)
    wants_relation = [True] * relation_count + [False] * (n - relation_count)
    captions: list[str] = []
    for index in rng.permutation(n):
        captions.append(_fresh_caption(scene, wants_relation[int(index)], captions, rng))
    return captions


def phrasings(scene: dict, relation: bool, rng: np.random.Generator,
              draws: int = 300) -> list[str]:
    """Distinct true and complete captions of ``scene`` in the references' grammar, sorted: those
    that state a relation (``relation=True``) or those that only list the objects. Found by
    drawing ``draws`` references of that kind, so a phrasing may be missed but none is invented;
    a scene where no relation holds clearly (or of one object) has no relation phrasings."""
    found = set()
    for _ in range(draws):
        caption = _sample_caption(scene, relation, rng)
        if caption is not None and bool(stated_relations(caption, scene)) == relation:
            found.add(" ".join(tokenize(caption)))
    return sorted(found)


def _fresh_caption(
    scene: dict, wants_relation: bool, taken: list[str], rng: np.random.Generator
) -> str:
    """A caption not in ``taken`` if sampling finds one, else a repeat."""
    repeat = None
    for _ in range(CAPTION_ATTEMPTS):
        candidate = _sample_caption(scene, wants_relation, rng)
        if candidate is not None and candidate not in taken:
            return candidate
        repeat = candidate or repeat
    return repeat or _plain_caption(scene)


def _plain_caption(scene: dict) -> str:
    """The simplest reference: every (colour, shape) counted, left to right, no sizes."""
    objects = scene["objects"]
    groups = [_Group(len(members), None, *pair) for pair, members in _clusters(objects).items()]
    ordered = sorted(groups, key=lambda group: _leftmost(group, objects))
    return _join_items([_group_phrase(group, "a") for group in ordered])


def _sample_caption(scene: dict, wants_relation: bool, rng: np.random.Generator) -> str | None:
    """One random reference, or None when it came out longer than MAX_REFERENCE_TOKENS."""
    objects, image_size = scene["objects"], scene["image_size"]
    groups = _choose_groups(objects, rng.random() < SIZE_PROBABILITY, rng)
    singular = "one" if rng.random() < ONE_PROBABILITY else "a"
    options = _relation_options(groups, objects, image_size) if wants_relation else []
    if options:
        items = _items_with_relation(groups, options[int(rng.integers(len(options)))], rng)
    else:
        items = [_Item(group) for group in _list_order(groups, objects, rng)]
    body = _join_items([_item_phrase(item, singular, rng) for item in items])
    if rng.random() < PREFIX_PROBABILITY[len(objects)]:
        body = f"{_prefix(items[0].subject.count, rng)} {body}"
    return body if len(tokenize(body)) <= MAX_REFERENCE_TOKENS else None


def _clusters(objects: Sequence[dict]) -> dict[Pair, list[int]]:
    """Object indices by (colour, shape), in a fixed order."""
    clusters: dict[Pair, list[int]] = {}
    for index, obj in enumerate(objects):
        clusters.setdefault((obj["colour"], obj["shape"]), []).append(index)
    return dict(sorted(clusters.items()))


def _choose_groups(
    objects: Sequence[dict], include_size: bool, rng: np.random.Generator
) -> list[_Group]:
    """Groups that together cover every object, each naming an exact count."""
    groups = []
    for (colour, shape), members in _clusters(objects).items():
        sizes = sorted({objects[i]["size"] for i in members})
        if len(sizes) > 1 and rng.random() < SPLIT_BY_SIZE_PROBABILITY:
            for size in sizes:
                count = sum(objects[i]["size"] == size for i in members)
                groups.append(_Group(count, size, colour, shape))
        else:
            # Mixed sizes cannot share one size word, so such a group drops it.
            size = sizes[0] if include_size and len(sizes) == 1 else None
            groups.append(_Group(len(members), size, colour, shape))
    return groups


def _leftmost(group: _Group, objects: Sequence[dict]) -> float:
    return min(_centre(objects[i]["bbox"])[0] for i in _denotation(group, objects))


def _list_order(
    groups: list[_Group], objects: Sequence[dict], rng: np.random.Generator
) -> list[_Group]:
    if rng.random() < LEFT_TO_RIGHT_PROBABILITY:
        return sorted(groups, key=lambda group: _leftmost(group, objects))
    return [groups[int(i)] for i in rng.permutation(len(groups))]


def _relation_options(
    groups: list[_Group], objects: Sequence[dict], image_size: int
) -> list[tuple[_Group, str, _Group]]:
    """Every (subject, relation, landmark) among the groups that is true of the scene."""
    return [
        (subject, relation, landmark)
        for subject, landmark in itertools.permutations(groups, 2)
        for relation in RELATIONS
        if _relation_true(subject, relation, landmark, objects, image_size)
    ]


def _items_with_relation(
    groups: list[_Group], chosen: tuple[_Group, str, _Group], rng: np.random.Generator
) -> list[_Item]:
    """The chosen relation as one item, the remaining groups as plain items around it."""
    subject, relation, landmark = chosen
    items = [_Item(group) for group in groups if group not in (subject, landmark)]
    items.insert(int(rng.integers(len(items) + 1)), _Item(subject, relation, landmark))
    return items


def _item_phrase(item: _Item, singular: str, rng: np.random.Generator) -> str:
    subject = _group_phrase(item.subject, singular)
    if item.relation is None:
        return subject
    wordings = RELATION_WORDINGS[item.relation]
    long_form = len(wordings) > 1 and rng.random() < LONG_RELATION_PROBABILITY
    wording = wordings[-1] if long_form else wordings[0]
    return f"{subject} {wording} {_group_phrase(item.landmark, singular)}"


def _group_phrase(group: _Group, singular: str) -> str:
    """The words of one group, e.g. "a small red circle"; ``singular`` is "a" or "one"."""
    number_words = {count: word for word, count in COUNT_WORDS.items() if count > 1}
    determiner = singular if group.count == 1 else number_words[group.count]
    noun = group.shape if group.count == 1 else PLURALS[group.shape]
    return " ".join(word for word in (determiner, group.size, group.colour, noun) if word)


def _prefix(first_count: int, rng: np.random.Generator) -> str:
    choices = ("there are" if first_count > 1 else "there is", "the image shows", "a picture of")
    return choices[int(rng.integers(len(choices)))]


def _join_items(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# =========================================================================== rendering


def render_scene(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene: uint8 array [image_size, image_size, 3].

    The background gets a random tint and every pixel Gaussian noise; each shape is filled with
    its colour (slightly jittered) and anti-aliased by drawing at SUPERSAMPLE times the size.
    """
    size = scene["image_size"]
    tint = np.asarray(BACKGROUND_RGB) + rng.integers(-BACKGROUND_TINT, BACKGROUND_TINT + 1, size=3)
    coverage = _coverage(scene)[..., None]
    pixels = tint * (1.0 - coverage) + _paint(scene, rng) * coverage
    pixels += rng.normal(0.0, NOISE_STD, size=(size, size, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _coverage(scene: dict) -> np.ndarray:
    """Float [H, W] in [0, 1]: how much of each pixel the shapes cover."""
    size = scene["image_size"]
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for obj in scene["objects"]:
        _draw_shape(draw, obj["shape"], [v * SUPERSAMPLE for v in obj["bbox"]])
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _paint(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Float [H, W, 3]: each object's colour over its bounding box (coverage does the cutting)."""
    size = scene["image_size"]
    paint = np.zeros((size, size, 3))
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        paint[y0:y1, x0:x1] = np.asarray(COLOUR_RGB[obj["colour"]]) + jitter
    return paint


def _star_outline() -> list[tuple[float, float]]:
    """A five-pointed star in the unit square, one point up, centred vertically."""
    # The lower points reach only cos(36°) of the radius below the centre; shift it to balance.
    centre_y = 0.5 + 0.5 * (1 - math.cos(math.pi / 5)) / 2
    points = []
    for k in range(10):
        radius = 0.5 if k % 2 == 0 else 0.5 * STAR_INNER_RATIO
        angle = math.pi * k / 5
        points.append((0.5 + radius * math.sin(angle), centre_y - radius * math.cos(angle)))
    return points


def _cross_outline() -> list[tuple[float, float]]:
    """A plus sign in the unit square."""
    low, high = 0.5 - CROSS_ARM_HALF_WIDTH, 0.5 + CROSS_ARM_HALF_WIDTH
    return [
        (low, 0), (high, 0), (high, low), (1, low), (1, high), (high, high),
        (high, 1), (low, 1), (low, high), (0, high), (0, low), (low, low),
    ]  # fmt: skip


# Outlines in the unit square (x right, y down); a circle is drawn as an ellipse instead.
_OUTLINES = {
    # Inset a little so a square does not look much heavier than a circle of the same size.
    "square": [(0.06, 0.06), (0.94, 0.06), (0.94, 0.94), (0.06, 0.94)],
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "star": _star_outline(),
    "cross": _cross_outline(),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int]) -> None:
    x0, y0, x1, y1 = box
    # Pillow's far edge is inclusive; stopping one pixel short keeps the shape inside its box.
    width, height = x1 - 1 - x0, y1 - 1 - y0
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        draw.polygon([(x0 + u * width, y0 + v * height) for u, v in _OUTLINES[shape]], fill=255)


# =========================================================================== the dataset on disk


def split_sizes(num_images: int) -> dict[str, int]:
    """Images per split: train 75%, val 10%, test 10%, test_novel 5% (each >= 1 from 4 images)."""
    if num_images < 1:
        raise ValueError(f"the number of images must be positive, got {num_images}")
    held_out = {}
    for split in ("val", "test", "test_novel"):
        count = int(num_images * SPLIT_FRACTIONS[split] + 0.5)  # round half up, not to even
        held_out[split] = max(count, 1) if num_images >= len(SPLIT_FRACTIONS) else count
    return {"train": num_images - sum(held_out.values()), **held_out}


def write_dataset(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int,
    image_size: int = 64,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> pathlib.Path:
    """Write a Shapes dataset in the Karpathy JSON format and return the path of its JSON file.

    Creates ``out_dir/images/shapes_000000.png, ...``, ``out_dir/dataset_shapes.json`` and,
    last, the marker ``out_dir/.shapes-marker.json``. The same arguments always give
    byte-identical files. If ``out_dir`` already holds the dataset for these arguments it is
    reused (with or without a marker: datasets of earlier versions have none). Any other non-empty
    ``out_dir`` raises DatasetExistsError, except that ``overwrite`` replaces a dataset this
    program wrote: one with a marker whose recorded sha256 matches its dataset file, holding
    nothing but that file and the images it lists. A folder without a marker is never replaced,
    whatever the flags, so no one's own files are ever deleted. Files are written to a hidden
    sibling folder that is renamed into place at the end, so a failed run never leaves a folder
    that looks complete; such a folder left by a killed run is deleted by the next call for the
    same ``out_dir`` (only when no running process holds its lock and it holds nothing else).
    """
    _check_dataset_arguments(num_images, seed, image_size)
    out_dir = pathlib.Path(out_dir)
    json_path = out_dir / JSON_NAME
    _remove_stale_staging(out_dir)
    if _holds_dataset(out_dir, num_images, seed, image_size):
        print(f"Shapes dataset ({num_images} images, seed {seed}) already in {out_dir}; reusing it")
        return json_path
    _check_replaceable(out_dir, overwrite)
    _check_disk_space(out_dir, num_images, image_size)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"cannot create {out_dir}: part of that path is a file") from None
    staging = _unique_sibling(out_dir, STAGING)
    staging.mkdir()
    try:
        with _locked(staging):
            _fill_folder(staging, num_images, seed, image_size, progress)
            _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful move
    return json_path


@contextlib.contextmanager
def _locked(folder: pathlib.Path):
    """Hold an exclusive lock on ``folder`` for the block: it tells :func:`_remove_stale_staging`
    that a running process is still writing there. The system drops the lock when the process
    ends, however it ends (SIGKILL too)."""
    if fcntl is None:  # Windows: no flock (nor can a folder be opened there)
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _remove_stale_staging(out_dir: pathlib.Path) -> None:
    """Delete the staging folders of ``out_dir`` that killed runs left behind.

    Only a folder named as :func:`_unique_sibling` names them, that no running process holds the
    lock of (see :func:`_locked`) and that holds nothing but what :func:`_fill_folder` writes is
    deleted. An empty one is kept: it may be a writer's that has not taken its lock yet.
    """
    if fcntl is None:
        return
    prefix = f".{out_dir.name}.{STAGING}-"
    try:
        siblings = [p for p in out_dir.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:  # no parent folder yet: nothing left behind
        return
    for folder in siblings:
        named_here = re.fullmatch(r"[0-9a-f]{12}", folder.name[len(prefix):])
        if named_here and not folder.is_symlink() and folder.is_dir():
            _remove_if_stale(folder)


def _remove_if_stale(folder: pathlib.Path) -> None:
    """Delete a staging folder that no process holds the lock of and that holds only what
    :func:`_fill_folder` writes; leave it when it is locked or cannot be read or removed (it may
    be another user's), since this cleanup must never make a run fail."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: in use
        if _holds_only_staged_files(folder):
            shutil.rmtree(folder)
            print(f"Shapes: removed {folder}, left behind by a run that was killed")
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _holds_only_staged_files(folder: pathlib.Path) -> bool:
    """Whether ``folder`` holds something, and only files :func:`_fill_folder` writes."""
    entries = list(folder.iterdir())
    for entry in entries:
        if entry.is_symlink():
            return False
        if entry.name == IMAGE_FOLDER and entry.is_dir():
            images = list(entry.iterdir())
            if not all(_STAGED_IMAGE.fullmatch(i.name) and not i.is_symlink() and i.is_file()
                       for i in images):
                return False
        elif entry.name not in (JSON_NAME, MARKER_NAME) or not entry.is_file():
            return False
    return bool(entries)


def _check_dataset_arguments(num_images: int, seed: int, image_size: int) -> None:
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"the number of images must be a positive integer, got {num_images!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
    _check_image_size(image_size)


def _holds_dataset(out_dir: pathlib.Path, num_images: int, seed: int, image_size: int) -> bool:
    """Whether ``out_dir`` holds the complete dataset for exactly these arguments."""
    try:
        with open(out_dir / JSON_NAME, encoding="utf-8") as file:
            dataset = json.load(file)
        images = dataset["images"]
        same_arguments = (
            dataset["dataset"] == DATASET_NAME
            and dataset["generator_version"] == GENERATOR_VERSION
            and dataset["image_size"] == image_size
            and dataset["seed"] == seed
            and len(images) == num_images
        )
        image_folder = out_dir / IMAGE_FOLDER
        return same_arguments and all((image_folder / im["filename"]).is_file() for im in images)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_replaceable(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir``, unless asked to replace it and this program wrote it."""
    if out_dir.is_symlink():
        raise DatasetExistsError(f"{out_dir} is a symbolic link; give the folder it points to")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DatasetExistsError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    foreign = _not_written_here(out_dir)
    if foreign:
        raise DatasetExistsError(
            f"{out_dir} holds files this program did not write ({foreign}); it is never "
            "replaced, whatever the flags: choose another folder"
        )
    if not overwrite:
        raise DatasetExistsError(
            f"{out_dir} already holds a Shapes dataset made with other arguments; choose another "
            "folder or pass overwrite=True (--overwrite)"
        )


def _check_disk_space(out_dir: pathlib.Path, num_images: int, image_size: int) -> None:
    """Refuse a dataset that cannot fit in the free space of the disk it would be written to."""
    needed = num_images * (PNG_BYTES_PER_CHANNEL * 3 * image_size**2 + JSON_BYTES_PER_IMAGE)
    existing = out_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ValueError(
            f"{num_images} images of {image_size}x{image_size} pixels need at least "
            f"{_readable_bytes(needed)} on disk, but only {_readable_bytes(free)} are free in "
            f"{existing}; ask for fewer images or free some space"
        )


def _readable_bytes(count: float) -> str:
    """``count`` bytes in decimal units, e.g. "8.3 MB"."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if count < 1000:
            return f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} EB"


def _not_written_here(out_dir: pathlib.Path) -> str | None:
    """Why ``out_dir`` does not count as a dataset folder this program wrote; None if it does."""
    marker_path, json_path = out_dir / MARKER_NAME, out_dir / JSON_NAME
    expected = {MARKER_NAME: "file", JSON_NAME: "file", IMAGE_FOLDER: "folder"}
    for entry in out_dir.iterdir():
        if entry.name not in expected:
            return f"{entry.name} is not part of a Shapes dataset"
        if entry.is_symlink() or not _is_kind(entry, expected[entry.name]):
            return f"{entry.name} is not a plain {expected[entry.name]}"
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        recorded = marker["sha256"] if marker.get("program") == MARKER_PROGRAM else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        recorded = None
    if not isinstance(recorded, str):
        return f"no valid {MARKER_NAME}, which this program writes into every dataset folder"
    if not json_path.is_file() or file_sha256(json_path) != recorded:
        return f"{JSON_NAME} does not have the sha256 that {MARKER_NAME} records"
    return _foreign_image(out_dir / IMAGE_FOLDER, json.loads(json_path.read_text("utf-8")))


def _is_kind(entry: pathlib.Path, kind: str) -> bool:
    return entry.is_dir() if kind == "folder" else entry.is_file()


def _foreign_image(image_folder: pathlib.Path, dataset: dict) -> str | None:
    """The first entry of ``image_folder`` that is not an image file ``dataset`` lists, or None."""
    if not image_folder.exists():
        return None
    listed = {image["filename"] for image in dataset["images"]}
    for entry in image_folder.iterdir():
        if entry.name not in listed or entry.is_symlink() or not entry.is_file():
            return f"{IMAGE_FOLDER}/{entry.name} is not one of its images"
    return None


def _fill_folder(
    folder: pathlib.Path, num_images: int, seed: int, image_size: int, progress: bool
) -> None:
    # Plain tqdm, not tqdm.auto: a notebook then shows one updating text line that is stored
    # with the outputs, rather than a widget that needs ipywidgets and vanishes from the site.
    from tqdm import tqdm

    image_folder = folder / IMAGE_FOLDER
    image_folder.mkdir()
    sizes = split_sizes(num_images)
    digits = max(6, len(str(num_images - 1)))
    entries = []
    for index in tqdm(range(num_images), desc="Shapes", unit="img", disable=not progress,
                      mininterval=1.0):
        filename = f"shapes_{index:0{digits}d}.png"
        pixels, entry = _make_example(index, _split_of(index, sizes), seed, image_size)
        entry["filename"] = filename
        Image.fromarray(pixels).save(image_folder / filename, format="PNG", compress_level=6)
        entries.append(entry)
    dataset = {
        "dataset": DATASET_NAME,
        "generator_version": GENERATOR_VERSION,
        "image_size": image_size,
        "seed": seed,
        "heldout_pairs": [list(pair) for pair in HELDOUT_PAIRS],
        "images": entries,
    }
    text = json.dumps(dataset, sort_keys=True, separators=(",", ":"))
    (folder / JSON_NAME).write_text(text + "\n", encoding="utf-8")
    _write_marker(folder, num_images, seed, image_size)


def _split_of(index: int, sizes: dict[str, int]) -> str:
    """The split of image ``index``: each split takes the next ``sizes[split]`` indices, in order
    (computed per image, so no list as long as the dataset is built)."""
    position = index
    for split, count in sizes.items():
        if position < count:
            return split
        position -= count
    raise IndexError(f"image {index} is beyond the {sum(sizes.values())} images of the splits")


def _write_marker(folder: pathlib.Path, num_images: int, seed: int, image_size: int) -> None:
    """Mark ``folder`` as written by this program, last, so a marked folder is always complete."""
    marker = {
        "program": MARKER_PROGRAM,
        "dataset": JSON_NAME,
        "sha256": file_sha256(folder / JSON_NAME),
        "generator_version": GENERATOR_VERSION,
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _make_example(index: int, split: str, seed: int, image_size: int) -> tuple[np.ndarray, dict]:
    """Pixels and the JSON entry (without filename) of image ``index``.

    Each image has its own random streams derived from (seed, index), one each for the scene,
    the pixels and the captions, so changing the caption mix leaves the images as they were.
    """
    streams = np.random.SeedSequence([seed, index]).spawn(3)
    scene_rng, render_rng, caption_rng = (np.random.default_rng(s) for s in streams)
    if split == "test_novel":
        scene = generate_scene(scene_rng, image_size, require_any=HELDOUT_PAIRS)
    else:
        scene = generate_scene(scene_rng, image_size, allowed=SEEN_PAIRS)
    raws = reference_captions(scene, caption_rng)
    first_sentid = index * len(raws)
    sentences = [
        {"raw": raw, "tokens": tokenize(raw), "imgid": index, "sentid": first_sentid + k}
        for k, raw in enumerate(raws)
    ]
    entry = {
        "filepath": IMAGE_FOLDER,
        "imgid": index,
        "split": split,
        "sentids": [sentence["sentid"] for sentence in sentences],
        "sentences": sentences,
        "scene": scene,
    }
    return render_scene(scene, render_rng), entry


def _move_into_place(staging: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Rename the finished folder to ``out_dir``, first moving aside whatever is there."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    retired = _unique_sibling(out_dir, "old")
    os.rename(out_dir, retired)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(retired, out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _unique_sibling(out_dir: pathlib.Path, purpose: str) -> pathlib.Path:
    """An unused hidden path next to ``out_dir``; hidden so no one mistakes it for a dataset."""
    return out_dir.with_name(f".{out_dir.name}.{purpose}-{uuid.uuid4().hex[:12]}")
