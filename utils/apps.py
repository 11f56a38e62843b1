"""Using a trained captioner on pictures of your own, and probing it outside its training data.

Chapter 7 needs four small things that later work can reuse:

* :func:`compose_scene` writes a Shapes scene by hand ("a large yellow star at (6, 8)"), so a
  picture drawn for the model comes with its truth, and :func:`save_png` stores the rendering;
* :func:`uploaded_image` turns what a JupyterLab upload widget holds into a file on disk;
* :func:`four_object_scenes` and :func:`photo_like_images` make inputs unlike the training data
  (more objects than ever seen, smooth photo-like pictures with no shapes at all);
* :func:`phantom_rate` and :func:`search_captions` measure hallucinated objects and the quality of
  a caption-based image search against the true scenes.

Only NumPy and Pillow are needed; TensorFlow is never imported.
"""
from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from . import shapes

#: A placed object: (size, colour, shape, left x, top y), the corner in pixels.
PlacedObject = tuple[str, str, str, int, int]


def compose_scene(objects: Sequence[PlacedObject], image_size: int = 64) -> dict:
    """A Shapes scene dict (as :func:`utils.shapes.generate_scene` returns) from objects placed
    by hand. Raises ``ValueError`` for an unknown word, an object outside the canvas, or two
    objects closer than the generator ever places them (their relation would be ambiguous)."""
    placed = []
    for size, colour, shape, left, top in objects:
        if size not in shapes.SIZES or colour not in shapes.COLOURS or shape not in shapes.SHAPES:
            raise ValueError(f"unknown object {(size, colour, shape)}; sizes {shapes.SIZES}, "
                             f"colours {shapes.COLOURS}, shapes {shapes.SHAPES}")
        side = shapes.object_side(size, image_size)
        box = [int(left), int(top), int(left) + side, int(top) + side]
        if min(box) < 0 or max(box) > image_size:
            raise ValueError(f"the {size} {colour} {shape} at {box} leaves the "
                             f"{image_size}-pixel canvas")
        for other in placed:
            if not _apart(box, other["bbox"]):
                raise ValueError(f"the {size} {colour} {shape} at {box} touches the "
                                 f"{other['colour']} {other['shape']} at {other['bbox']}")
        placed.append({"shape": shape, "colour": colour, "size": size, "bbox": box})
    return {"image_size": image_size, "objects": placed}


def _apart(a: Sequence[int], b: Sequence[int]) -> bool:
    gap = shapes.OBJECT_GAP_PIXELS
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> pathlib.Path:
    """Write ``uint8[H, W, 3]`` pixels as a PNG (folders created); return the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)
    return path


def uploaded_image(value, folder: str | os.PathLike) -> pathlib.Path | None:
    """Save the first uploaded file in ``folder`` and return its path; ``None`` when nothing was
    uploaded.

    ``value`` is what an upload gave: an ``ipywidgets.FileUpload`` widget's ``value`` in
    ipywidgets 8 (a tuple of dicts with ``name`` and ``content``) or 7 (a dict from file name to a
    dict with ``content``), or the dict from file name to bytes of Colab's ``files.upload()``.
    """
    if not value:
        return None
    if isinstance(value, dict):
        name, entry = next(iter(value.items()))
        if not isinstance(entry, dict):  # Colab: the bytes themselves
            entry = {"content": entry}
    else:
        entry = value[0]
        name = entry["name"]
    # Keep only the file's own name: an upload must not write outside ``folder``.
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", pathlib.PurePath(str(name)).name) or "upload"
    path = pathlib.Path(folder) / safe_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(entry["content"]))
    return path


def four_object_scenes(rng: np.random.Generator, count: int, image_size: int = 64) -> list[dict]:
    """``count`` scenes of four small objects, one per quadrant, each with a different
    (colour, shape) pair from the pairs the model saw in training. Shapes scenes never hold more
    than three objects, so these test whether a captioner notices a fourth."""
    side = shapes.object_side("small", image_size)
    half = image_size // 2
    pairs = shapes.SEEN_PAIRS
    scenes = []
    for _ in range(count):
        chosen = rng.choice(len(pairs), size=4, replace=False)
        objects = []
        for quadrant, pair_index in enumerate(chosen):
            colour, shape = pairs[int(pair_index)]
            low_x = (quadrant % 2) * half + shapes.EDGE_PIXELS
            low_y = (quadrant // 2) * half + shapes.EDGE_PIXELS
            high = half - side - 2 * shapes.EDGE_PIXELS  # room left inside the quadrant
            left, top = (int(v) for v in rng.integers(0, high + 1, size=2))
            objects.append(("small", colour, shape, low_x + left, low_y + top))
        scenes.append(compose_scene(objects, image_size))
    return scenes


def photo_like_images(rng: np.random.Generator, count: int, image_size: int = 64) -> np.ndarray:
    """``uint8[count, S, S, 3]`` pictures with no Shapes object in them: a smooth colour gradient,
    a few soft blurred blobs and sensor-like noise, a crude stand-in for a photograph."""
    axis = np.linspace(0.0, 1.0, image_size)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    for index in range(count):
        start, end = rng.uniform(0, 255, size=(2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * x + np.sin(angle) * y + 1.5) / 3  # in (0, 1)
        picture = start + ramp[..., None] * (end - start)
        for _ in range(int(rng.integers(2, 5))):
            centre, width = rng.uniform(0.1, 0.9, size=2), rng.uniform(0.08, 0.25)
            blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * width**2))
            picture += blob[..., None] * (rng.uniform(0, 255, size=3) - picture) * 0.8
        picture += rng.normal(0.0, shapes.NOISE_STD, size=picture.shape)
        images[index] = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return images


def phantom_objects(caption: str, scene: dict) -> int | None:
    """How many object groups a caption names that match nothing in ``scene`` (hallucinated
    objects); ``None`` when the caption is outside the Shapes grammar."""
    named = shapes.mentions(caption, scene)
    if named is None:
        return None
    return sum(1 for _, objects in named if not objects)


def phantom_rate(captions: Sequence[str], scenes: Sequence[dict]) -> float:
    """Share of parsable captions that name at least one object the scene does not hold
    (``nan`` when none parses)."""
    counts = [phantom_objects(c, s) for c, s in zip(captions, scenes, strict=True)]
    parsed = [n for n in counts if n is not None]
    return float(np.mean([n > 0 for n in parsed])) if parsed else float("nan")


def search_captions(captions: Sequence[str], colour: str, shape: str) -> list[int]:
    """Indices of the captions that mention a ``colour`` ``shape`` (singular or plural): a text
    search over generated captions, as an image index built from captions would run it."""
    nouns = {shape, shapes.PLURALS[shape]}
    hits = []
    for index, caption in enumerate(captions):
        words = shapes.tokenize(caption)
        for position, word in enumerate(words[:-1]):
            if word == colour and words[position + 1] in nouns:
                hits.append(index)
                break
    return hits


def holds(scene: dict, colour: str, shape: str) -> bool:
    """Whether the scene really contains a ``colour`` ``shape``."""
    return any(o["colour"] == colour and o["shape"] == shape for o in scene["objects"])
