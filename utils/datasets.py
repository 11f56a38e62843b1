"""Caption datasets in the Karpathy JSON format (``dataset_*.json`` + an image folder).

The Shapes dataset is written in this format, so the reader below serves it as well as the
Karpathy splits of Flickr8k, Flickr30k and COCO.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image: where it is, its split, its reference captions (as token lists), its scene."""

    path: pathlib.Path
    split: str
    captions: list[list[str]]
    scene: dict | None = None


def load_karpathy(json_path: str | pathlib.Path, image_root: str | pathlib.Path | None = None) -> list[CaptionedImage]:
    """Read a Karpathy-format file; images are looked up under ``image_root`` (default: its folder)."""
    json_path = pathlib.Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"caption file not found: {json_path}")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        entries = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{json_path} is not a Karpathy-format caption file: {error}") from error
    root = pathlib.Path(image_root) if image_root is not None else json_path.parent
    images = []
    for position, entry in enumerate(entries):
        try:
            path = root / entry.get("filepath", "") / entry["filename"]
            captions = [list(s["tokens"]) for s in entry["sentences"]]
            images.append(CaptionedImage(path, entry["split"], captions, entry.get("scene")))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{json_path}: image entry #{position} lacks {error}") from error
    return images


def split(images: list[CaptionedImage], name: str) -> list[CaptionedImage]:
    """The images of one split (``train``, ``val``, ``test``, ``test_novel``...)."""
    return [image for image in images if image.split == name]


def load_pixels(images: list[CaptionedImage]) -> np.ndarray:
    """Decode the images (PNG/JPEG, any mode) to one ``uint8[N, H, W, 3]`` array.

    All images must share one size (true of Shapes); a file that cannot be read raises an error
    that names it.
    """
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for image in images:
        try:
            with Image.open(image.path) as handle:
                arrays.append(np.asarray(handle.convert("RGB")))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"cannot read image {image.path}: {error}") from error
    return np.stack(arrays)


@dataclasses.dataclass
class EncodedSplit:
    """One split ready for training: pixels, encoded captions and the raw references.

    ``pixels``: ``uint8[N, H, W, 3]``; ``captions``: ``int32[N, K, L]`` (K references per image,
    each ``<start> ... <end>`` padded with 0 to L); ``references``: the K captions as text;
    ``scenes``: the true scenes (Shapes only, else ``None``).
    """

    name: str
    pixels: np.ndarray
    captions: np.ndarray
    references: list[list[str]]
    scenes: list[dict] | None

    def __len__(self) -> int:
        return len(self.pixels)


def encode_split(images: list[CaptionedImage], vocabulary, length: int, name: str = "",
                 references_per_image: int = 5) -> EncodedSplit:
    """Decode the images and encode their first ``references_per_image`` captions.

    Images with fewer captions repeat theirs, so every image has the same number of rows.
    """
    if not images:
        raise ValueError(f"split {name!r} is empty")
    captions = np.zeros((len(images), references_per_image, length), np.int32)
    references = []
    for row, image in enumerate(images):
        if not image.captions:
            raise ValueError(f"{image.path} has no captions")
        chosen = [image.captions[k % len(image.captions)] for k in range(references_per_image)]
        captions[row] = [vocabulary.encode(tokens, length) for tokens in chosen]
        references.append([" ".join(tokens) for tokens in image.captions])
    scenes = [image.scene for image in images] if all(i.scene for i in images) else None
    return EncodedSplit(name, load_pixels(images), captions, references, scenes)


def data_root() -> pathlib.Path:
    """Where datasets are written: ``$BOOK_DATA``, else ``data/`` in the repository checkout,
    else ``~/image-understanding-data`` (an installed, non-editable package)."""
    import os

    if os.environ.get("BOOK_DATA"):
        return pathlib.Path(os.environ["BOOK_DATA"]).expanduser()
    repository = pathlib.Path(__file__).resolve().parent.parent
    if (repository / "chapters").is_dir():
        return repository / "data"
    return pathlib.Path.home() / "image-understanding-data"


def shapes_dataset(profile, seed: int = 0) -> pathlib.Path:
    """Generate (or reuse) the Shapes dataset sized by ``profile``; return its JSON path."""
    from . import shapes

    folder = data_root() / f"shapes-{profile.num_images}-{profile.image_size}px-seed{seed}"
    return shapes.write_dataset(folder, profile.num_images, seed=seed,
                                image_size=profile.image_size, progress=True)
