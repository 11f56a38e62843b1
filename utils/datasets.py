"""Caption datasets: one view, :class:`CaptionDataset`, over the formats real datasets come in.

* Flickr8k's own files (``Flickr8k.token.txt`` and the three split lists): :func:`read_flickr8k`.
* Karpathy's JSON splits (``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
  ``dataset_coco.json``) and the embedded Shapes dataset, written in the same format:
  :func:`read_karpathy`.
* COCO's own caption files (``annotations/captions_train2014.json``): :func:`read_coco_captions`.

:func:`load_dataset` finds a dataset by name under :func:`data_root` (and downloads it when asked).
Token lists come from the raw captions through :func:`utils.text.standardize`, so every dataset is
tokenised the same way. Chapter 5's helpers (:func:`load_karpathy`, :func:`split`,
:func:`encode_split`...) work on any of them.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .download import RESOURCES, fetch
from .text import standardize

FLICKR8K_TOKEN_FILE = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FLICKR8K_IMAGE_FOLDER = "Flicker8k_Dataset"  # sic: the original archive misspells it
# Listed in Flickr8k.token.txt, but no such image exists (the real one is ...62.jpg).
FLICKR8K_BOGUS_ENTRY = "2258277193_586949ec62.jpg.1"
_SPLIT_ORDER = ("train", "val", "test")


class DatasetWarning(UserWarning):
    """Entries of a dataset were left out; the message says which and why."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image: its path, its split, its reference captions and, for Shapes, its scene.

    ``captions`` holds the references as token lists, ``raw_captions`` as written by the
    annotators; ``image_id`` is the dataset's own id (COCO id, Karpathy ``imgid``, Flickr8k file
    stem).
    """

    path: pathlib.Path
    split: str
    captions: list[list[str]]
    scene: dict | None = None
    raw_captions: tuple[str, ...] = ()
    image_id: int | str | None = None


class CaptionDataset(Sequence):
    """A named, ordered collection of :class:`CaptionedImage` that knows its splits.

    ``len(dataset)``, iteration and indexing work as on a list (a slice is again a dataset);
    ``dataset.split("train")`` is the training part; ``dataset.splits`` counts images per split.
    """

    def __init__(self, name: str, images: Iterable[CaptionedImage]):
        self.name = name
        self.images = tuple(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int | slice) -> CaptionedImage | CaptionDataset:
        if isinstance(index, slice):
            return CaptionDataset(self.name, self.images[index])
        return self.images[index]

    def __iter__(self) -> Iterator[CaptionedImage]:
        return iter(self.images)

    @property
    def splits(self) -> dict[str, int]:
        """Images per split: train, val, test first, then any other split in order of appearance."""
        counts = collections.Counter(image.split for image in self.images)
        usual = [name for name in _SPLIT_ORDER if name in counts]
        others = [name for name in counts if name not in _SPLIT_ORDER]
        return {name: counts[name] for name in usual + others}

    def split(self, name: str) -> CaptionDataset:
        """The images of split ``name``; an unknown name raises ValueError listing the splits."""
        if name not in self.splits:
            known = ", ".join(self.splits) or "none"
            raise ValueError(f"{self.name} has no split {name!r}; its splits are: {known}")
        return CaptionDataset(self.name, (image for image in self.images if image.split == name))

    def __repr__(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        return f"CaptionDataset({self.name!r}, {len(self)} images: {counts or 'empty'})"


# --- Flickr8k's own files ------------------------------------------------------------------

def read_flickr8k(text_folder: str | os.PathLike,
                  image_folder: str | os.PathLike | None = None) -> CaptionDataset:
    """Read Flickr8k from its own files: captions and split lists in ``text_folder``.

    Images are looked up in ``image_folder`` (default ``text_folder/Flicker8k_Dataset``).
    ``Flickr_8k.devImages.txt`` becomes the ``val`` split. The known bogus entry
    ``2258277193_586949ec62.jpg.1`` and images in no split list are left out with a
    :class:`DatasetWarning`; a malformed line raises ValueError naming file and line.
    """
    text_folder = pathlib.Path(text_folder)
    image_folder = (pathlib.Path(image_folder) if image_folder is not None
                    else text_folder / FLICKR8K_IMAGE_FOLDER)
    token_file = text_folder / FLICKR8K_TOKEN_FILE
    captions = _read_flickr8k_captions(token_file)
    split_of = _read_flickr8k_splits(text_folder)
    _warn_unmatched(captions, split_of, token_file)
    images = [
        CaptionedImage(image_folder / filename, split_of[filename],
                       [standardize(raw) for raw in raws], None, tuple(raws),
                       pathlib.PurePath(filename).stem)
        for filename, raws in captions.items() if filename in split_of
    ]
    return CaptionDataset("flickr8k", images)


def _read_flickr8k_captions(token_file: pathlib.Path) -> dict[str, list[str]]:
    """``{filename: [raw caption, ...]}`` in file order, from lines ``NAME.jpg#N<TAB>caption``."""
    captions: dict[str, list[str]] = {}
    bogus = 0
    for number, line in _numbered_lines(token_file):
        filename, raw = _parse_token_line(line, token_file, number)
        _inside_folder(filename, "filename", f"{token_file}, line {number}")
        if filename == FLICKR8K_BOGUS_ENTRY:
            bogus += 1
        else:
            captions.setdefault(filename, []).append(raw)
    if bogus:
        warnings.warn(f"{token_file}: left out {bogus} captions of {FLICKR8K_BOGUS_ENTRY!r}, a "
                      "known bogus entry (no such image exists)", DatasetWarning, stacklevel=3)
    return captions


def _parse_token_line(line: str, token_file: pathlib.Path, number: int) -> tuple[str, str]:
    key, tab, raw = line.partition("\t")
    filename, hash_sign, index = key.rpartition("#")
    if not (tab and hash_sign and filename and index.isdigit() and raw.strip()):
        raise ValueError(f"{token_file}, line {number}: expected 'IMAGE.jpg#N<TAB>caption', "
                         f"got {line[:100]!r}")
    return filename, raw.strip()


def _read_flickr8k_splits(text_folder: pathlib.Path) -> dict[str, str]:
    """``{filename: split}`` from the three split lists; an image in two lists is an error."""
    split_of: dict[str, str] = {}
    for split_name, list_name in FLICKR8K_SPLIT_FILES.items():
        for number, line in _numbered_lines(text_folder / list_name):
            filename = line.strip()
            if filename in split_of:
                raise ValueError(f"{text_folder / list_name}, line {number}: {filename} is "
                                 f"already in the {split_of[filename]!r} split")
            split_of[filename] = split_name
    return split_of


def _warn_unmatched(captions: dict[str, list[str]], split_of: dict[str, str],
                    token_file: pathlib.Path) -> None:
    unsplit = [name for name in captions if name not in split_of]
    if unsplit:
        warnings.warn(f"{len(unsplit)} images of {token_file.name} are in no split list and are "
                      f"left out (first: {unsplit[0]})", DatasetWarning, stacklevel=3)
    uncaptioned = [name for name in split_of if name not in captions]
    if uncaptioned:
        warnings.warn(f"{len(uncaptioned)} images of the split lists have no caption in "
                      f"{token_file.name} and are left out (first: {uncaptioned[0]})",
                      DatasetWarning, stacklevel=3)


def _numbered_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file with their 1-based numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: place the Flickr8k text files (from "
                                "Flickr8k_text.zip) in that folder") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


# --- Karpathy JSON (Flickr8k, Flickr30k, COCO, Shapes) -------------------------------------

def read_karpathy(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                  fold_restval: bool = True) -> CaptionDataset:
    """Read a Karpathy-format file (``dataset_*.json``).

    An image's path is ``image_root / filepath / filename``; ``filepath`` is given only by COCO
    (``train2014``/``val2014``) and Shapes (``images``). ``image_root`` defaults to the JSON's
    folder; Flickr8k's images live in ``Flicker8k_Dataset``, Flickr30k's in ``flickr30k-images``.
    ``fold_restval`` (default True) moves COCO's ``restval`` images (30,504 images of val2014
    outside Karpathy's val and test) into ``train``, as the papers that report on this split do;
    pass False to keep ``restval`` as a split of its own. ``image_id`` is COCO's ``cocoid`` or
    else the file's ``imgid``.
    """
    json_path = pathlib.Path(json_path)
    data = _read_json(json_path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{json_path} is not a Karpathy-format caption file: it has no "
                         "'images' list at the top level")
    root = pathlib.Path(image_root) if image_root is not None else json_path.parent
    images = [_karpathy_image(entry, root, fold_restval, f"{json_path}: image entry #{position}")
              for position, entry in enumerate(entries)]
    return CaptionDataset(str(data.get("dataset") or json_path.stem), images)


def _karpathy_image(entry, root: pathlib.Path, fold_restval: bool, where: str) -> CaptionedImage:
    """One entry of a Karpathy file, every field checked here, so that a malformed file fails
    at once, naming the entry and the field, rather than deep inside later work."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a JSON object")
    missing = [key for key in ("filename", "split", "sentences") if key not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}")
    folder = _inside_folder(entry.get("filepath", ""), "filepath", where)
    filename = _inside_folder(entry["filename"], "filename", where)
    if not isinstance(entry["split"], str) or not entry["split"]:
        raise ValueError(f"{where}: 'split' should be a split name (text), found "
                         f"{_short(entry['split'])}")
    where = f"{where} ({filename})"
    sentences = _as_list(entry["sentences"], f"{where}: 'sentences'")
    if not sentences:
        raise ValueError(f"{where}: 'sentences' is empty; every image needs a caption")
    raws = tuple(_karpathy_raw(sentence, where, number)
                 for number, sentence in enumerate(sentences))
    if entry.get("scene") is not None:
        problem = _scene_problem(entry["scene"])
        if problem:
            raise ValueError(f"{where}: 'scene' {problem}")
    split_name = "train" if fold_restval and entry["split"] == "restval" else entry["split"]
    return CaptionedImage(root / folder / filename, split_name,
                          [standardize(raw) for raw in raws], entry.get("scene"), raws,
                          entry.get("cocoid", entry.get("imgid")))


def _karpathy_raw(sentence, where: str, number: int) -> str:
    """Sentence ``number``'s raw text; files that carry only tokens get them joined by spaces."""
    if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str):
        return sentence["raw"].strip()
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
        if not all(isinstance(token, str) for token in sentence["tokens"]):
            raise ValueError(f"{where}: sentence #{number}: 'tokens' should be a list of words "
                             f"(text), found {_short(sentence['tokens'])}")
        return " ".join(sentence["tokens"])
    raise ValueError(f"{where}: a sentence has neither 'raw' text nor a 'tokens' list "
                     f"(sentence #{number})")


_SEPARATOR = re.compile(r"[/\\]")  # either kind of slash separates folders on Windows
_DRIVE = re.compile(r"[A-Za-z]:")


def _inside_folder(name, field: str, where: str) -> str:
    """``name``, a file or folder name from a dataset file, checked to be text that stays inside
    the dataset's folder once joined to it: no absolute path, drive or '..' (a dataset file
    must not make the program open /etc/passwd)."""
    if not isinstance(name, str) or (not name and field != "filepath"):
        raise ValueError(f"{where}: {field!r} should be a relative path (text), found "
                         f"{_short(name)}")
    # String tests, not PurePath objects: this runs for every image of COCO (8x faster).
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in _SEPARATOR.split(name):
        raise ValueError(f"{where}: {field!r} must stay inside the dataset's folder, found "
                         f"{_short(name)}")
    return name


def _scene_problem(scene) -> str | None:
    """What keeps ``scene`` from being read as a Shapes scene (by utils.shapes.check_caption and
    utils.evaluation.caption_rates), or None."""
    if not isinstance(scene, dict):
        return "is not a JSON object"
    if not _is_number(scene.get("image_size")) or scene["image_size"] <= 0:
        return "has no positive 'image_size'"
    if not isinstance(scene.get("objects"), list):
        return "has no 'objects' list"
    for number, item in enumerate(scene["objects"]):
        if not (isinstance(item, dict)
                and all(isinstance(item.get(key), str) for key in ("shape", "colour", "size"))):
            return f"object #{number} needs 'shape', 'colour' and 'size' texts"
        bbox = item.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            return f"object #{number} needs a 'bbox' of 4 numbers, found {_short(bbox)}"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value) -> str:
    """``value`` as JSON, cut to a length that fits in a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- COCO's own caption files --------------------------------------------------------------

_COCO_CAPTION_FILE = re.compile(r"^captions_(?P<split>[a-z]+)(?P<year>\d{4})\.json$")


def read_coco_captions(annotation_path: str | os.PathLike,
                       image_root: str | os.PathLike | None = None, *,
                       split: str | None = None) -> CaptionDataset:
    """Read a COCO captions file (``annotations/captions_train2014.json`` or ``..._val2014``).

    Every image gets the split the file stands for (``train`` or ``val``, from its name unless
    ``split`` is given), and images are looked up in ``image_root`` (default: ``train2014/`` or
    ``val2014/`` beside the ``annotations`` folder). This is COCO's official split; captioning
    papers report on Karpathy's split instead (``dataset_coco.json``, :func:`read_karpathy`),
    whose test images come out of val2014. Images without a caption are left out with a warning.
    """
    path = pathlib.Path(annotation_path)
    name_match = _COCO_CAPTION_FILE.match(path.name)
    if name_match is None and (split is None or image_root is None):
        raise ValueError(f"cannot tell the split and image folder of {path.name} from its name "
                         "(expected captions_<split><year>.json): pass split= and image_root=")
    split = split or name_match["split"]
    root = (pathlib.Path(image_root) if image_root is not None
            else path.parent.parent / f"{name_match['split']}{name_match['year']}")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a COCO captions file: the top level is not an object")
    files = _coco_files(_as_list(data.get("images"), f"{path}: 'images'"), path)
    raws = _coco_captions(_as_list(data.get("annotations"), f"{path}: 'annotations'"), files, path)
    uncaptioned = [image_id for image_id in files if image_id not in raws]
    if uncaptioned:
        warnings.warn(f"{len(uncaptioned)} images of {path.name} have no caption and are left "
                      f"out (first: id {uncaptioned[0]})", DatasetWarning, stacklevel=2)
    images = [CaptionedImage(root / filename, split, [standardize(r) for r in raws[image_id]],
                             None, tuple(raws[image_id]), image_id)
              for image_id, filename in files.items() if image_id in raws]
    return CaptionDataset("coco", images)


def _coco_files(entries: list, path: pathlib.Path) -> dict[int, str]:
    """``{image id: file name}`` in file order."""
    files = {}
    for position, entry in enumerate(entries):
        if not (isinstance(entry, dict) and "id" in entry
                and isinstance(entry.get("file_name"), str)):
            raise ValueError(f"{path}: images entry #{position} needs an 'id' and a 'file_name'")
        files[entry["id"]] = _inside_folder(entry["file_name"], "file_name",
                                            f"{path}: images entry #{position}")
    return files


def _coco_captions(entries: list, files: dict[int, str],
                   path: pathlib.Path) -> dict[int, list[str]]:
    """``{image id: [raw caption, ...]}`` in file order; captions of unknown images are errors."""
    raws: dict[int, list[str]] = {}
    for position, entry in enumerate(entries):
        if not (isinstance(entry, dict) and "image_id" in entry
                and isinstance(entry.get("caption"), str)):
            raise ValueError(f"{path}: annotations entry #{position} needs an 'image_id' and a "
                             "'caption' text")
        if entry["image_id"] not in files:
            raise ValueError(f"{path}: annotations entry #{position} refers to image id "
                             f"{entry['image_id']}, which is not in 'images'")
        raws.setdefault(entry["image_id"], []).append(entry["caption"].strip())
    return raws


def _read_json(path: pathlib.Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"caption file not found: {path} (load_dataset() tells where "
                                "each dataset's files go, and can download them)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _as_list(value, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where} should be a list, found {type(value).__name__}")
    return value


# --- finding a dataset by name -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Layout:
    """What a dataset folder must hold: caption files and image folders, relative to it."""

    title: str
    files: tuple[str, ...]
    image_folders: tuple[str, ...]
    advice: str  # how to get what is missing when it is not (or cannot be) downloaded


_LAYOUTS = {
    "shapes": _Layout(
        "Shapes", ("dataset_shapes.json",), ("images",),
        "Shapes is generated, not downloaded: run `python -m utils shapes --out {root} "
        "--num-images 10000 --seed 0`, or use utils.datasets.shapes_dataset(profile)."),
    "flickr8k": _Layout(
        "Flickr8k", (FLICKR8K_TOKEN_FILE, *FLICKR8K_SPLIT_FILES.values()),
        (FLICKR8K_IMAGE_FOLDER,),
        "The image folder is spelled 'Flicker8k_Dataset' in the original archive; keep that name."),
    "flickr30k": _Layout(
        "Flickr30k", ("dataset_flickr30k.json",), ("flickr30k-images",),
        "Flickr30k's images are given out only through the request form at "
        "https://shannon.cs.illinois.edu/DenotationGraph/ : unpack flickr30k-images.tar.gz there "
        "by hand, whether or not download=True."),
    "coco": _Layout(
        "COCO 2014 (Karpathy split)", ("dataset_coco.json",), ("train2014", "val2014"),
        "dataset_coco.json comes from caption_datasets.zip; train2014/ and val2014/ from COCO's "
        "image archives."),
}


def load_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
                 fold_restval: bool = True) -> CaptionDataset:
    """Load ``shapes``, ``flickr8k``, ``flickr30k`` or ``coco`` from ``root``.

    ``root`` defaults to ``data_root()/name``. Flickr8k is read from its own files, Flickr30k and
    COCO from Karpathy's splits (with ``restval`` folded into ``train`` unless ``fold_restval`` is
    False; see :func:`read_karpathy`). When files are missing, ``download=True`` fetches them
    (:func:`utils.download.fetch`); otherwise :class:`DatasetNotFoundError` says which URLs to
    download and which files and folders to place where.
    """
    if name not in _LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(_LAYOUTS)}")
    layout = _LAYOUTS[name]
    root = pathlib.Path(root) if root is not None else data_root() / name
    missing = _missing_paths(layout, root)
    if missing and download and name in RESOURCES:
        fetch(name, root)
        missing = _missing_paths(layout, root)
    if missing:
        raise DatasetNotFoundError(_placement_advice(name, layout, root, missing))
    if name == "flickr8k":
        return read_flickr8k(root)
    image_root = root / "flickr30k-images" if name == "flickr30k" else root
    return read_karpathy(root / layout.files[0], image_root, fold_restval=fold_restval)


def _missing_paths(layout: _Layout, root: pathlib.Path) -> list[str]:
    files = [name for name in layout.files if not (root / name).is_file()]
    folders = [f"{name}/" for name in layout.image_folders if not (root / name).is_dir()]
    return files + folders


def _placement_advice(name: str, layout: _Layout, root: pathlib.Path, missing: list[str]) -> str:
    lines = [f"{layout.title} was not found in {root}: missing {', '.join(missing)}."]
    resources = RESOURCES.get(name, ())
    if resources:
        lines.append(f"Call load_dataset({name!r}, download=True), or download by hand")
        lines += [f"  {resource.url}" for resource in resources]
        lines.append(f"and unpack them into {root}, so that it holds:")
    else:
        lines.append(f"{root} must hold:")
    lines += [f"  {root / name}" for name in layout.files]
    lines += [f"  {root / name}/" for name in layout.image_folders]
    lines.append(layout.advice.format(root=root))
    return "\n".join(lines)


# --- chapter 5's helpers -------------------------------------------------------------------

def load_karpathy(json_path: str | pathlib.Path,
                  image_root: str | pathlib.Path | None = None) -> list[CaptionedImage]:
    """Read a Karpathy-format file as a list; images are looked up under ``image_root`` (default:
    its folder). Splits are kept as written (no ``restval`` folding)."""
    return list(read_karpathy(json_path, image_root, fold_restval=False))


def split(images: Iterable[CaptionedImage], name: str) -> list[CaptionedImage]:
    """The images of one split (``train``, ``val``, ``test``, ``test_novel``...)."""
    return [image for image in images if image.split == name]


def load_pixels(images: Iterable[CaptionedImage], size: int | tuple[int, int] | None = None
                ) -> np.ndarray:
    """Decode the images (JPEG/PNG, any mode) to one ``uint8[N, H, W, 3]`` array.

    ``size`` resizes every image (int: square); without it all images must share one size (true
    of Shapes). An unreadable file raises :class:`utils.images.ImageError` naming it.
    """
    from .images import load_many

    pixels, _ = load_many([image.path for image in images], size)
    return pixels


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


def encode_split(images: Sequence[CaptionedImage], vocabulary, length: int, name: str = "",
                 references_per_image: int = 5, pixels: np.ndarray | None = None) -> EncodedSplit:
    """Decode the images and encode their first ``references_per_image`` captions.

    Images with fewer captions repeat theirs, so every image has the same number of rows.
    ``pixels`` replaces the decoded images (e.g. cached backbone features, one row per image).
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
    if pixels is not None and len(pixels) != len(images):
        raise ValueError(f"{len(pixels)} rows of pixels for {len(images)} images")
    return EncodedSplit(name, load_pixels(images) if pixels is None else pixels, captions,
                        references, scenes)


def data_root() -> pathlib.Path:
    """Where datasets are written: ``$BOOK_DATA``, else ``data/`` in the repository checkout,
    else ``~/image-understanding-data`` (an installed, non-editable package)."""
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
