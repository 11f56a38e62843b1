"""Reading images for a captioner: decode any JPEG/PNG to ``uint8[H, W, 3]`` RGB and resize.

Real photo collections hold surprises: greyscale and palette images, PNGs with transparency,
CMYK JPEGs from print workflows, 16-bit scans, phone photos stored sideways with an EXIF
"rotate me" tag, files cut short by a failed copy, HTML error pages saved as ``.jpg``. Every
file is either turned into plain 8-bit RGB pixels the right way up, or rejected with an
:class:`ImageError` that names the file and says what is wrong with it.

Normalising pixels for a particular CNN is not done here: it belongs to the backbone, see
:mod:`utils.features`. This module needs only NumPy and Pillow.
"""
from __future__ import annotations

import errno
import numbers
import os
import pathlib
import stat
import struct
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Images with more pixels than this are refused before decoding: a 10 kB PNG can claim to be
#: 30000x30000 and ask for 2.7 GB of memory (a "decompression bomb"). 80 megapixels is far above
#: any dataset photo (COCO's are about 0.3).
MAX_PIXELS = 80_000_000

#: How many file names a "skipped N images" warning lists before saying "and M more".
NAMES_IN_WARNING = 3

_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}

# Pillow reports damaged data with any of these, depending on the format and where it breaks.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)

Size = int | tuple[int, int] | None  # None: keep the image's own size


class ImageError(ValueError):
    """A file that cannot be used as an image; the message names the file and the problem.

    ``path`` is the file, ``problem`` what is wrong with it (without the file name).
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = pathlib.Path(path)
        self.problem = problem
        super().__init__(f"cannot use image {self.path}: {problem}")


class SkippedImagesWarning(UserWarning):
    """Some images were skipped because they could not be read (``skip_bad=True``)."""


def load_rgb(path: str | os.PathLike, size: Size | None = None) -> np.ndarray:
    """Decode one image file to ``uint8[H, W, 3]`` RGB, upright, optionally resized.

    ``size`` is an int for a square ``size x size`` result or ``(height, width)``; ``None``
    keeps the file's own size. Resizing stretches the whole image rather than cropping it (a crop
    could cut away an object the caption mentions), with Pillow's bilinear filter, which
    widens with the scale factor when shrinking and so averages over the area each output pixel
    covers. Transparent pixels are composited over white; 16-bit images are scaled, not clipped,
    to 8 bits; EXIF orientation is applied.

    Raises :class:`ImageError` for a missing, empty, non-image, truncated or corrupt file, and for
    one larger than :data:`MAX_PIXELS`. (Truncated files raise because Pillow's
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is off by default; do not turn it on.)
    """
    path = pathlib.Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that; make the warning an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as handle:
                _check_pixel_count(path, handle.size)
                handle.load()
                image = ImageOps.exif_transpose(handle)
    except ImageError:
        raise  # already says what is wrong (ImageError is a ValueError: keep it unwrapped)
    except UnidentifiedImageError:
        raise ImageError(path, _describe_unreadable(path)) from None
    except _DECODE_ERRORS as error:
        raise ImageError(path, _describe_decode_error(error)) from error
    rgb = _to_rgb(path, image)
    if size is not None:
        height, width = _as_height_width(size)
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8)


def read_images(paths: Sequence[str | os.PathLike], size: Size
                ) -> tuple[np.ndarray, list[int], list[ImageError]]:
    """Decode every readable file in ``paths``, collecting the failures instead of raising.

    Returns ``uint8[K, H, W, 3]`` pixels of the K readable files, their positions in ``paths``,
    and one :class:`ImageError` per unreadable file. The building block of :func:`load_many`
    and of feature extraction; most callers want :func:`load_many`.
    """
    pixels, kept, errors = [], [], []
    for position, path in enumerate(paths):
        try:
            pixels.append(load_rgb(path, size))
            kept.append(position)
        except ImageError as error:
            errors.append(error)
    return _stack(pixels, size), kept, errors


def load_many(paths: Sequence[str | os.PathLike], size: Size, *, skip_bad: bool = False
              ) -> tuple[np.ndarray, list[int]]:
    """Decode and resize many files into one ``uint8[K, H, W, 3]`` array.

    Returns the pixels and the positions in ``paths`` they came from (all of them unless
    ``skip_bad``). Without ``skip_bad`` the first unreadable file raises its
    :class:`ImageError`; with it, unreadable files are left out and one
    :class:`SkippedImagesWarning` says how many and which.
    """
    if not skip_bad:  # stop at the first bad file rather than decoding the rest first
        return _stack([load_rgb(path, size) for path in paths], size), list(range(len(paths)))
    pixels, kept, errors = read_images(paths, size)
    if errors:
        warnings.warn(skipped_message(errors, len(paths)), SkippedImagesWarning, stacklevel=2)
    return pixels, kept


def skipped_message(errors: Sequence[ImageError], total: int) -> str:
    """One summary line for skipped files: how many, and the first few with their problem."""
    named = "; ".join(f"{error.path} ({error.problem})" for error in errors[:NAMES_IN_WARNING])
    more = len(errors) - NAMES_IN_WARNING
    tail = f"; and {more} more" if more > 0 else ""
    return f"skipped {len(errors)} of {total} images that could not be read: {named}{tail}"


def _stack(pixels: list[np.ndarray], size: Size) -> np.ndarray:
    """``[K, H, W, 3]``, also when K is 0 (``size`` None: the images' own, shared size)."""
    if pixels:
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)[:3]}: pass a size to resize them")
        return np.stack(pixels)
    height, width = _as_height_width(size) if size is not None else (0, 0)
    return np.zeros((0, height, width, 3), np.uint8)


def _as_height_width(size: Size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, numbers.Integral) else size
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return int(height), int(width)


#: What a path that is neither a folder nor a regular file is, by its stat mode test.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_file(path: pathlib.Path) -> None:
    """Refuse anything but a non-empty regular file, before opening it (opening a FIFO would
    wait for a writer forever), saying what the path is instead."""
    try:
        status = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(path, f"a broken symbolic link: what it points to "
                                   f"({os.readlink(path)}) does not exist") from None
        raise ImageError(path, "no such file (check the image folder and the file name)") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError(path, "a loop of symbolic links (it leads back to itself), not an "
                                   "image file") from None
        raise ImageError(path, f"cannot be read ({error.strerror})") from None
    if stat.S_ISDIR(status.st_mode):
        raise ImageError(path, "this is a folder, not an image file")
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(status.st_mode)),
                    "a special file")
        raise ImageError(path, f"this is {kind}, not an image file")
    if status.st_size == 0:
        raise ImageError(path, "the file is empty (0 bytes); copy or download it again")


def _check_pixel_count(path: pathlib.Path, size: tuple[int, int]) -> None:
    # Image.open has read only the header here, so nothing large has been allocated yet.
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            path,
            f"it claims to be {width}x{height} = {width * height / 1e6:.1f} megapixels, more than "
            f"utils.images.MAX_PIXELS ({MAX_PIXELS / 1e6:.1f} megapixels): a decompression bomb "
            "or a huge scan; shrink it, or raise MAX_PIXELS if you trust it")


def _describe_unreadable(path: pathlib.Path) -> str:
    with open(path, "rb") as file:
        start = file.read(16)
    for signature, kind in _SIGNATURES.items():
        if start.startswith(signature):
            return f"it starts like a {kind} file but is cut short or damaged; copy it again"
    hint = " (text, e.g. an HTML error page saved by a failed download)" if _is_text(start) else ""
    return f"not an image Pillow can read; it starts with {start!r}{hint}"


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char.isspace() for char in text)


def _describe_decode_error(error: Exception) -> str:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (f"too many pixels to decode safely, refused by Pillow as a possible decompression "
                f"bomb ({error}); shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    if "truncated" in str(error).lower():
        return (f"the file is truncated, only part of it was written or downloaded (Pillow: "
                f"{error}); copy or download it again")
    return f"the image data is corrupt ({type(error).__name__}: {error})"


def _to_rgb(path: pathlib.Path, image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit ``RGB``: 16/32-bit greyscale scaled, transparency over white."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        image = _sixteen_bit_to_grey(path, image)
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        # Transparent pixels often hold arbitrary (frequently black) colours; a reader of the
        # picture sees the page behind them, so composite over white.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(path, f"colour mode {image.mode!r} cannot be converted to RGB") from error


def _sixteen_bit_to_grey(path: pathlib.Path, image: Image.Image) -> Image.Image:
    # Pillow's own convert("L") clips 16-bit values at 255, turning most of the image white.
    values = np.asarray(image).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise ImageError(path, f"{image.mode} pixels outside 0..65535 cannot be mapped to 8 bits")
    return Image.fromarray(np.round(values / 257).astype(np.uint8))
