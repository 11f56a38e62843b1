"""Saving a trained captioner for use outside the chapters, and captioning new image files.

An export is one **folder** (``runs/NAME/captioner`` when made by ``python -m utils train``)::

    captioner/
        model.keras        the Keras model (architecture + weights, no optimizer state)
        vocabulary.json    {"words": [...]}: id i is words[i] (utils.text.Vocabulary)
        export.json        metadata, written last: image size, max caption length, profile,
                           vocabulary size and sha256, model.keras sha256, versions, ``extra``

A folder, not a ``.keras`` file with a sibling ``vocabulary.json``, so that the model and its
words travel and are replaced together. :func:`save_captioner` writes the whole folder next to
its destination under a hidden name, then swaps it in with two renames (the old export is moved
aside, the new one into place, the old one deleted). A crash at any point leaves the previous
export usable: before the swap it is untouched; between the two renames it is found again by
:func:`load_captioner` under its moved-aside name.

:func:`load_captioner` checks the pieces against each other before trusting them: a vocabulary or
model file that is not the one saved raises :class:`ExportMismatchError` saying what differs.

    loaded = load_captioner("runs/shapes-cpu/captioner")
    for text, attention in caption(loaded, ["photo.png"], beam_size=3):
        print(text, attention.shape)          # attention: [words + <end>, regions]
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Sequence

import numpy as np

from .checksums import file_sha256
from .text import Vocabulary

FORMAT = "image-understanding-captioner"
FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
VOCABULARY_FILE = "vocabulary.json"
METADATA_FILE = "export.json"
#: Default caption length limit when no profile says otherwise (profile.max_caption_tokens + 1).
DEFAULT_MAX_LENGTH = 17
#: Bounds on ``export.json``'s image size: the encoder's grid has ``image_size // 8`` cells a side,
#: and every image to caption is resized to it, so a huge value would ask for gigabytes.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096
#: Bound on ``max_length``, the decoding steps per caption (profiles use 17 to 21).
MAX_CAPTION_LENGTH = 1000


class ExportMismatchError(ValueError):
    """The pieces of an export do not belong together (vocabulary, model file, metadata)."""


@dataclasses.dataclass
class LoadedCaptioner:
    """A captioner read back by :func:`load_captioner`: the Keras model, its vocabulary, the
    metadata of ``export.json``, and the folder it came from."""

    model: object
    vocabulary: Vocabulary
    metadata: dict
    path: pathlib.Path

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def max_length(self) -> int:
        return int(self.metadata["max_length"])

    def caption(self, image_paths, *, beam_size: int = 1):
        """See :func:`caption`."""
        return caption(self, image_paths, beam_size=beam_size)


def vocabulary_hash(words: Sequence[str]) -> str:
    """sha256 of the word list (order matters: it defines the ids)."""
    return hashlib.sha256(json.dumps(list(words), ensure_ascii=False).encode("utf-8")).hexdigest()


def register_model_classes() -> None:
    """Make the captioner's classes known to Keras' loader. Importing their modules registers
    them: each class is decorated with ``keras.saving.register_keras_serializable``."""
    from . import captioner  # noqa: F401


def _vocab_size(model) -> int | None:
    """How many words the model's decoder predicts (``None`` if it does not say)."""
    return getattr(getattr(model, "decoder", None), "vocab_size", None)


def save_captioner(model, vocabulary: Vocabulary, path: str | os.PathLike, *, image_size: int,
                   max_length: int | None = None, profile=None, extra: dict | None = None
                   ) -> pathlib.Path:
    """Write ``model`` and ``vocabulary`` as an export folder at ``path`` (see the module
    docstring), replacing an earlier export there atomically; return the folder.

    ``image_size`` is the side of the square images the model was trained on (new images are
    resized to it). ``profile`` (a :class:`utils.profile.Profile` or its name) is recorded, and a
    Profile also gives ``max_length`` (``max_caption_tokens + 1``) unless it is passed.
    ``extra`` is any JSON-serialisable dict kept in the metadata (seed, dataset, scores...).
    A folder at ``path`` that is not an export is never replaced (``FileExistsError``).
    """
    import keras

    register_model_classes()
    path = pathlib.Path(path)
    profile_name = getattr(profile, "name", profile)
    if max_length is None:
        max_length = (profile.max_caption_tokens + 1 if hasattr(profile, "max_caption_tokens")
                      else DEFAULT_MAX_LENGTH)
    config = model.get_config()
    vocab_size = _vocab_size(model)
    if vocab_size is not None and vocab_size != len(vocabulary):
        raise ExportMismatchError(f"the model predicts {vocab_size} words but the vocabulary has "
                                  f"{len(vocabulary)}")
    if path.exists() and not (path / METADATA_FILE).exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not a captioner export; not replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its folders are private (mode 0700); this one gets the user's umask.
    staging = path.with_name(f".{path.name}.saving-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        # A fresh copy without optimizer state: smaller, and loads without compile warnings.
        copy = type(model).from_config(config)
        copy.build(((None, image_size, image_size, 3), (None, 1)))  # no call: no XLA compile
        copy.set_weights(model.get_weights())
        copy.save(staging / MODEL_FILE)
        vocabulary.save(staging / VOCABULARY_FILE)
        metadata = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_class": type(model).__name__,
            "image_size": int(image_size), "max_length": int(max_length),
            "profile": profile_name,
            "vocabulary_size": len(vocabulary),
            "vocabulary_sha256": vocabulary_hash(vocabulary.words),
            "model_sha256": file_sha256(staging / MODEL_FILE),
            "keras_version": keras.__version__,
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "extra": dict(extra or {}),
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1, ensure_ascii=False))
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _aside(path: pathlib.Path) -> pathlib.Path:
    """Where the previous export waits while a new one is swapped in."""
    return path.with_name(f".{path.name}.previous")


def _swap_in(staging: pathlib.Path, path: pathlib.Path) -> None:
    aside = _aside(path)
    if path.exists():
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(path, aside)
    os.replace(staging, path)
    shutil.rmtree(aside, ignore_errors=True)


def export_folder(path: str | os.PathLike) -> pathlib.Path:
    """The export folder for ``path``: the folder itself, its ``captioner/`` (a run folder of
    ``python -m utils train``), or the moved-aside copy an interrupted save left behind."""
    path = pathlib.Path(path)
    for candidate in (path, path / "captioner"):
        if (candidate / METADATA_FILE).is_file():
            return candidate
        if (_aside(candidate) / METADATA_FILE).is_file() and not candidate.exists():
            return _aside(candidate)
    if not path.exists():
        raise FileNotFoundError(f"no captioner export at {path}: it does not exist")
    raise FileNotFoundError(f"no captioner export at {path}: no {METADATA_FILE} in it or in "
                            f"{path / 'captioner'} (make one with `python -m utils train` or "
                            "utils.export.save_captioner)")


def _integer(low: int, high: int | None = None) -> Callable[[object], bool]:
    return lambda value: (type(value) is int and value >= low
                          and (high is None or value <= high))


_SHA256 = re.compile(r"[0-9a-f]{64}")

#: The fields of ``export.json`` that are read: whether each is required, a test of its value,
#: and what the test asks for (to say so when it fails).
_METADATA_FIELDS: dict[str, tuple[bool, Callable[[object], bool], str]] = {
    "format_version": (True, _integer(1), "a positive integer"),
    "image_size": (True, _integer(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
                   f"an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"),
    "max_length": (True, _integer(1, MAX_CAPTION_LENGTH),
                   f"an integer from 1 to {MAX_CAPTION_LENGTH}"),
    "vocabulary_size": (True, _integer(4), "an integer of at least 4 (the special tokens)"),
    "vocabulary_sha256": (True, lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)),
                          "64 hexadecimal digits"),
    "model_sha256": (True, lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)),
                     "64 hexadecimal digits"),
    "profile": (False, lambda v: v is None or isinstance(v, str), "a profile name or null"),
    "extra": (False, lambda v: isinstance(v, dict), "a JSON object"),
}


def read_metadata(path: str | os.PathLike) -> dict:
    """The checked ``export.json`` of an export (no TensorFlow needed): every field that is read
    has the type and range it needs, or :class:`ExportMismatchError` names the field."""
    folder = export_folder(path)
    metadata_path = folder / METADATA_FILE
    try:
        metadata = json.loads(metadata_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ExportMismatchError(f"{metadata_path} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ExportMismatchError(f"{metadata_path} is not a captioner export's metadata")
    for field, (required, valid, wanted) in _METADATA_FIELDS.items():
        if field not in metadata:
            if required:
                raise ExportMismatchError(f"{metadata_path}: {field!r} is missing; save the "
                                          "export again")
        elif not valid(metadata[field]):
            found = json.dumps(metadata[field])
            found = found if len(found) <= 40 else found[:37] + "..."
            raise ExportMismatchError(f"{metadata_path}: {field!r} should be {wanted}, found "
                                      f"{found.replace(chr(34), chr(39))}")
    if metadata["format_version"] > FORMAT_VERSION:
        raise ExportMismatchError(f"{folder} was saved by a newer version of utils (format "
                                  f"{metadata['format_version']}); update the package")
    return metadata


def check_export(path: str | os.PathLike) -> tuple[pathlib.Path, dict, Vocabulary]:
    """Check that the vocabulary and model file are those the metadata describes (file hashes;
    no TensorFlow needed); return the folder, the metadata and the vocabulary."""
    folder = export_folder(path)
    metadata = read_metadata(folder)
    try:
        vocabulary = Vocabulary.load(folder / VOCABULARY_FILE)
    except (ValueError, KeyError, TypeError) as error:
        raise ExportMismatchError(f"{folder / VOCABULARY_FILE} is not a vocabulary file: "
                                  f"{error}") from None
    differences = []
    if len(vocabulary) != metadata["vocabulary_size"]:
        differences.append(f"it has {len(vocabulary)} words, the model was saved with "
                           f"{metadata['vocabulary_size']}")
    elif vocabulary_hash(vocabulary.words) != metadata["vocabulary_sha256"]:
        saved = metadata["vocabulary_sha256"][:12]
        differences.append(f"its words differ from those the model was saved with (sha256 "
                           f"{vocabulary_hash(vocabulary.words)[:12]}, saved {saved})")
    if differences:
        raise ExportMismatchError(f"{folder / VOCABULARY_FILE} does not match the saved model: "
                                  + "; ".join(differences))
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise ExportMismatchError(f"{model_file} is missing")
    actual = file_sha256(model_file)
    if actual != metadata["model_sha256"]:
        raise ExportMismatchError(
            f"{model_file} is not the model this export was saved with (sha256 {actual[:12]}, "
            f"{METADATA_FILE} says {metadata['model_sha256'][:12]}); save the export again")
    return folder, metadata, vocabulary


def load_captioner(path: str | os.PathLike) -> LoadedCaptioner:
    """Read an export written by :func:`save_captioner` (``path``: the export folder or a run
    folder holding ``captioner/``). Raises :class:`ExportMismatchError` when its vocabulary,
    model file and metadata do not belong together, ``FileNotFoundError`` when there is none."""
    folder, metadata, vocabulary = check_export(path)
    register_model_classes()
    model = _load_model_file(folder / MODEL_FILE)
    vocab_size = _vocab_size(model)
    if vocab_size is not None and vocab_size != metadata["vocabulary_size"]:
        raise ExportMismatchError(f"{folder / MODEL_FILE} predicts {vocab_size} words "
                                  f"but {METADATA_FILE} says {metadata['vocabulary_size']}")
    grid = getattr(getattr(model, "encoder", None), "grid", None)
    size = int(metadata["image_size"])
    if grid is not None and tuple(grid) != (size // 8, size // 8):
        raise ExportMismatchError(f"{folder / MODEL_FILE} was built for another image size "
                                  f"than the {size} pixels {METADATA_FILE} says")
    return LoadedCaptioner(model, vocabulary, metadata, folder)


def _load_model_file(model_file: pathlib.Path):
    """The Keras model in ``model_file``; a file Keras cannot read raises ExportMismatchError
    saying so (Keras itself calls a damaged file "not found")."""
    import keras

    if not zipfile.is_zipfile(model_file):
        raise ExportMismatchError(f"{model_file} is not a complete .keras (zip) file: it was cut "
                                  "short or damaged; save the export again")
    try:
        return keras.saving.load_model(model_file, compile=False)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as error:
        raise ExportMismatchError(f"{model_file} cannot be loaded as a Keras model "
                                  f"({type(error).__name__}: {error}); save the export "
                                  "again") from None


def load_images(image_paths: Sequence[str | os.PathLike], image_size: int) -> np.ndarray:
    """``uint8[N, S, S, 3]``: the files decoded and resized with :func:`utils.images.load_rgb`
    (an unreadable file raises :class:`utils.images.ImageError` naming it)."""
    from .images import load_rgb

    pixels = [load_rgb(p, image_size) for p in image_paths]
    if not pixels:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack(pixels)


def caption(path_or_loaded, image_paths: Sequence[str | os.PathLike] | str | os.PathLike, *,
            beam_size: int = 1) -> list[tuple[str, np.ndarray]]:
    """Caption image files (any size, JPEG or PNG) with an export (a path or a
    :class:`LoadedCaptioner`): one ``(caption, attention)`` per file, ``attention`` being
    ``float32[T, R]``, the weights over the ``R`` regions behind each word, the last row
    belonging to ``<end>`` (``T`` = words + 1, or ``max_length`` for a caption that never ended).
    ``beam_size`` 1 is greedy decoding, more is beam search (best caption kept)."""
    from .decoding import caption_images

    loaded = (path_or_loaded if isinstance(path_or_loaded, LoadedCaptioner)
              else load_captioner(path_or_loaded))
    if isinstance(image_paths, (str, os.PathLike)):
        image_paths = [image_paths]
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    pixels = load_images(image_paths, loaded.image_size)
    if len(pixels) == 0:
        return []
    captions, attention = caption_images(loaded.model, pixels, loaded.vocabulary,
                                         loaded.max_length, beam_size=beam_size)
    rows = [min(len(text.split()) + 1, loaded.max_length) for text in captions]
    return [(text, np.asarray(weights[:n], np.float32))
            for text, weights, n in zip(captions, attention, rows)]


#: The names ``utils`` itself offers from this module (``utils.load_captioner`` ...).
PACKAGE_LEVEL = ("load_captioner", "save_captioner", "ExportMismatchError")


def lazy_attribute(name: str):
    """``utils.__getattr__``'s last resort: ``utils.load_captioner`` and the other
    :data:`PACKAGE_LEVEL` names, imported on first use; any other name raises the
    ``AttributeError`` a module raises for a missing attribute."""
    if name in PACKAGE_LEVEL:
        return globals()[name]
    raise AttributeError(f"module 'utils' has no attribute {name!r}")
