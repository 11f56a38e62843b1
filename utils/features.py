"""The feature cache: a frozen backbone's region features, computed once and kept on disk.

A captioner with attention needs one vector per image *region*, not one per image: the last
convolutional feature map (8x8x2048 for InceptionV3) flattened to ``[R, C]`` = ``[64, 2048]``.
With a frozen ImageNet backbone (:mod:`utils.backbones`) these features never change, so they
are computed once, stored on disk as float16, and read back by the training loop;
:func:`extract_features` and :class:`FeatureCache` do that. Shapes used throughout: ``B`` batch,
``S`` input side in pixels, ``R`` regions, ``C`` channels per region.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import BinaryIO

import keras
import numpy as np

try:  # the tf.data pipelines; the JAX and PyTorch backends read rows with NumPy
    import tensorflow as tf
except ImportError:
    tf = None

from . import images
from .backbones import (  # noqa: F401  (the backbones used to live here)
    BACKBONES, Backbone, WeightsUnavailableError, build_backbone, get_backbone, preprocess)


def describe_weights(weights: str | os.PathLike | None) -> str:
    """A short human label for a ``weights`` argument, stored in a cache's index."""
    if weights is None:
        return "random initialisation"
    if weights == "imagenet":
        return "imagenet"
    return f"file {pathlib.Path(weights).name}"


def weights_fingerprint(model: keras.Model) -> str:
    """A hash of every weight of ``model``: equal only for the very same network.

    Two ``weights=None`` builds share a label but not a fingerprint, so their features are
    never mixed in one cache.
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


# -- the feature cache ----------------------------------------------------------------------

INDEX_NAME = "index.json"
CACHE_FORMAT = 1
CACHE_DTYPE = "float16"
#: Default shard size in bytes: small enough to hold in memory while it is written, big enough
#: that a COCO-sized cache is a few thousand files, not a hundred thousand.
SHARD_BYTES = 64 * 2**20


class FeatureCache:
    """Features of one backbone for many images, on disk under ``cache_dir/<backbone>/``.

    Layout: ``index.json`` (the settings that made the features, the shard list, and
    ``key -> [shard, row]``) and per shard ``shard_00000.features.npy`` (``float16[N, R, C]``)
    plus ``shard_00000.keys.npy`` (the N keys, a fixed-width unicode array). Plain ``.npy``
    rather than ``.npz`` because each row of an ``.npy`` file sits at a known offset: readers
    read only the rows they need, so a COCO-sized cache (tens of GB) need not fit in memory
    (:class:`CachedFeatures`). Nothing is pickled. The index is replaced atomically after each
    shard is complete, so a cache killed at any moment still opens, holding every shard finished
    before the kill. One process writes to a cache at a time; any number may read it.

    Opening reads the index once; a cache extended later by another call needs reopening.
    """

    def __init__(self, cache_dir: str | os.PathLike, backbone_name: str):
        self.folder = pathlib.Path(cache_dir) / get_backbone(backbone_name).name
        index_path = self.folder / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(
                f"no {backbone_name} features cached in {self.folder}; run extract_features first")
        self._index = json.loads(index_path.read_text(encoding="utf-8"))
        if self._index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{index_path} is in cache format {self._index.get('format')}, this "
                             f"version of utils reads format {CACHE_FORMAT}; delete the folder")
        self._data_offsets: dict[int, int] = {}  # shard -> where its rows start in the file

    @classmethod
    def _create(cls, folder: pathlib.Path, settings: dict) -> FeatureCache:
        folder.mkdir(parents=True, exist_ok=True)
        index = {"format": CACHE_FORMAT, "settings": settings, "shards": [], "keys": {}}
        _save_json(folder / INDEX_NAME, index)
        return cls(folder.parent, folder.name)

    @property
    def settings(self) -> dict:
        """Backbone, input size, feature shape, dtype and weights the features were made with."""
        return dict(self._index["settings"])

    @property
    def keys(self) -> list[str]:
        """Cached image keys, in the order they were added."""
        return list(self._index["keys"])

    def __len__(self) -> int:
        return len(self._index["keys"])

    def __contains__(self, key) -> bool:
        return key in self._index["keys"]

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(R, C)`` of one image."""
        regions, channels = self._index["settings"]["feature_shape"]
        return regions, channels

    @property
    def nbytes_per_image(self) -> int:
        """Bytes of one image's features in memory and on disk (float16)."""
        regions, channels = self.feature_shape
        return regions * channels * np.dtype(CACHE_DTYPE).itemsize

    @property
    def disk_bytes(self) -> int:
        """Bytes of all the cache's files: shards and index."""
        names = [INDEX_NAME] + [f"{stem}{suffix}" for stem in self._index["shards"]
                                for suffix in (".features.npy", ".keys.npy")]
        return sum((self.folder / name).stat().st_size for name in names)

    @property
    def float32_npy_bytes(self) -> int:
        """What the same features would take as one float32 ``.npy`` file per image, the usual
        tutorial layout; compare with :attr:`disk_bytes` (about twice as much)."""
        regions, channels = self.feature_shape
        header = _npy_header_bytes(self.feature_shape, np.float32)
        return len(self) * (header + regions * channels * np.dtype(np.float32).itemsize)

    def get(self, key: str) -> np.ndarray:
        """``float16[R, C]`` features of one image."""
        return self._read_rows(self._locations([key]))[0]

    def dataset(self, keys: Sequence[str], *, labels=None, batch_size: int | None = None,
                shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
        """A ``tf.data`` pipeline of the features of ``keys``, in that order unless ``shuffle``.

        Yields ``float16[R, C]`` (``[b, R, C]`` with ``batch_size``); cast to float32 where
        needed (Keras layers cast their inputs themselves). With ``labels`` (an array whose
        first axis matches ``keys``, e.g. encoded captions) yields ``(features, labels)`` pairs,
        which stay paired when shuffled. Shuffling reorders each epoch, reproducibly from
        ``seed``. Rows are read as they are needed (:meth:`CachedFeatures.read_tensor`), with
        prefetching.
        """
        features = CachedFeatures(self, keys)
        if labels is not None and len(labels) != len(keys):
            raise ValueError(f"{len(labels)} labels for {len(keys)} keys")
        label_table = None if labels is None else tf.constant(np.asarray(labels))

        def load(positions):
            rows = features.read_tensor(positions)
            if label_table is None:
                return rows
            return rows, tf.gather(label_table, positions)

        positions = tf.data.Dataset.range(len(keys))
        if shuffle:
            positions = positions.shuffle(len(keys), seed=seed, reshuffle_each_iteration=True)
        if batch_size:
            positions = positions.batch(batch_size)
        return positions.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=True).prefetch(tf.data.AUTOTUNE)

    def _locations(self, keys: Sequence[str]) -> np.ndarray:
        """``int64[N, 2]``: shard number and row of each key."""
        stored = self._index["keys"]
        missing = [key for key in keys if key not in stored]
        if missing:
            shown = ", ".join(repr(key) for key in missing[:3])
            raise KeyError(f"{len(missing)} of {len(keys)} keys are not in the feature cache "
                           f"{self.folder} (first: {shown}); run extract_features for them")
        return np.array([stored[key] for key in keys], np.int64).reshape(-1, 2)

    def _read_rows(self, locations: np.ndarray) -> np.ndarray:
        """``float16[N, R, C]``: the rows at ``locations`` (``[N, 2]``: shard, row), each read
        from its file at its offset.

        Positioned reads, not memory maps: the pages of a memory map that a process has read
        count as its resident memory until the map is closed, so one epoch over a 10 GB cache
        would show as a 10 GB process. Read this way, the file's pages stay in the operating
        system's cache, which gives them back whenever memory is needed.
        """
        rows = np.empty((len(locations), *self.feature_shape), CACHE_DTYPE)
        row_bytes = self.nbytes_per_image
        for shard in np.unique(locations[:, 0]):
            path = self.folder / f"{self._index['shards'][shard]}.features.npy"
            start = self._data_offset(int(shard), path)
            targets = np.flatnonzero(locations[:, 0] == shard)
            with open(path, "rb", buffering=0) as file:
                # Rows asked for in file order, one after another, become one read.
                for run in _runs(locations[targets, 1], targets):
                    first, count = int(locations[run[0], 1]), len(run)
                    # straight into the result where the run fills consecutive rows of it
                    in_place = run[-1] - run[0] == count - 1
                    into = (rows[run[0] : run[0] + count] if in_place
                            else np.empty((count, *self.feature_shape), CACHE_DTYPE))
                    file.seek(start + first * row_bytes)
                    if file.readinto(memoryview(into).cast("B")) != count * row_bytes:
                        raise ValueError(f"{path} ends before row {first + count - 1}: the "
                                         f"file is cut short; delete the folder {self.folder} "
                                         "and extract again")
                    if not in_place:
                        rows[run] = into
        return rows

    def _data_offset(self, shard: int, path: pathlib.Path) -> int:
        """Where the rows of ``shard`` begin in its ``.npy`` file, checking its header once."""
        if shard not in self._data_offsets:
            with open(path, "rb") as file:
                try:
                    version = np.lib.format.read_magic(file)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, fortran_order, dtype = header(file)
                except ValueError as error:
                    raise ValueError(f"{path} is not a readable .npy file ({error}); delete the "
                                     f"folder {self.folder} and extract again") from None
                if (tuple(shape[1:]) != self.feature_shape or dtype != np.dtype(CACHE_DTYPE)
                        or fortran_order):
                    raise ValueError(f"{path} holds {dtype}{list(shape)}, not "
                                     f"{CACHE_DTYPE} rows of {list(self.feature_shape)}")
                self._data_offsets[shard] = file.tell()
        return self._data_offsets[shard]

    def _append_shard(self, keys: list[str], features: np.ndarray) -> None:
        """Write one complete shard, then (only then) the index that lists it."""
        if len(keys) != len(features):
            raise ValueError(f"{len(keys)} keys for {len(features)} feature rows")
        number = len(self._index["shards"])
        stem = f"shard_{number:05d}"
        _save_npy(self.folder / f"{stem}.features.npy", features)
        _save_npy(self.folder / f"{stem}.keys.npy", np.array(keys, dtype=str))
        self._index["shards"].append(stem)
        self._index["keys"].update({key: [number, row] for row, key in enumerate(keys)})
        _save_json(self.folder / INDEX_NAME, self._index)


class CachedFeatures:
    """The features of ``keys`` in ``cache``, used like a read-only ``float16[N, R, C]`` array
    that is never loaded whole: ``len``, ``shape``, ``dtype`` and indexing along the first axis
    (an int, a slice, an array of ints) read just the rows asked for.

    This is what lets a captioner train on more features than memory holds: an
    :class:`utils.datasets.EncodedSplit` whose ``pixels`` are ``CachedFeatures`` is read batch
    by batch (:func:`utils.train.training_pipeline`), so the memory a run needs does not grow
    with the number of images. ``np.asarray`` of it loads everything.
    """

    def __init__(self, cache: FeatureCache, keys: Sequence[str]):
        self.cache = cache
        self.keys = [str(key) for key in keys]
        self._locations = cache._locations(self.keys)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.keys), *self.cache.feature_shape)

    dtype = np.dtype(CACHE_DTYPE)
    ndim = 3

    @property
    def nbytes(self) -> int:
        """What the features would take in memory: ``len(self)`` rows of the cache's size."""
        return len(self.keys) * self.cache.nbytes_per_image

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            rows = np.arange(*index.indices(len(self)))
        else:
            rows = np.asarray(index)
            if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
                raise IndexError("CachedFeatures rows are chosen by an int, a slice or an "
                                 f"array of ints, not {index!r}")
            rows = np.where(rows < 0, rows + len(self), rows)
            if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
                raise IndexError(f"row {index} is out of range for {len(self)} images")
        return self.read(rows)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``float16[*rows.shape, R, C]``: the features of the images at positions ``rows``."""
        rows = np.asarray(rows)
        found = self.cache._read_rows(self._locations[rows.reshape(-1)])
        return found.reshape(rows.shape + self.cache.feature_shape)

    def read_tensor(self, rows: tf.Tensor) -> tf.Tensor:
        """:meth:`read` inside a ``tf.data`` pipeline: ``rows`` is an integer tensor."""
        features = tf.numpy_function(self.read, [rows], tf.float16, stateful=False)
        features.set_shape(rows.shape.concatenate(self.cache.feature_shape))
        return features

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        everything = self.read(np.arange(len(self)))
        return everything if dtype is None else everything.astype(dtype)

    def __repr__(self) -> str:
        return (f"CachedFeatures({len(self)} images of {list(self.cache.feature_shape)} "
                f"{CACHE_DTYPE} in {self.cache.folder})")


def _runs(file_rows: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
    """``targets`` cut into runs whose ``file_rows`` follow one another in the file (each row
    the previous plus one): each run is one read."""
    if len(targets) == 0:
        return []
    breaks = np.flatnonzero(np.diff(file_rows) != 1) + 1
    return np.split(targets, breaks)


def extract_features(backbone_name: str, image_paths: Sequence[str | os.PathLike],
                     keys: Sequence[str], cache_dir: str | os.PathLike, *, batch_size: int = 32,
                     weights: str | os.PathLike | None = "imagenet",
                     model: keras.Model | None = None, skip_bad: bool = False,
                     progress: bool = True, shard_size: int | None = None) -> FeatureCache:
    """Compute and cache the ``[R, C]`` features of every image not cached yet.

    ``keys`` name the images (e.g. their file names) one for one with ``image_paths``. The
    cache lives in ``cache_dir/<backbone_name>/``; a second call, or one after an interruption,
    computes only the missing keys. ``model`` passes an already built backbone (then ``weights``
    only labels it). Features made with other settings (input size, shape, weights) are never
    mixed in: that raises ``ValueError``. Unreadable images raise :class:`utils.images.ImageError`
    (features computed before that stay cached); with ``skip_bad`` they are left out with one
    warning.
    ``shard_size`` (images per shard) defaults to about 64 MB per shard.
    """
    backbone = get_backbone(backbone_name)
    keys, image_paths = [str(key) for key in keys], list(image_paths)
    _check_keys(keys, image_paths)
    folder = pathlib.Path(cache_dir) / backbone.name
    cache = FeatureCache(cache_dir, backbone.name) if (folder / INDEX_NAME).is_file() else None
    todo = [(key, path) for key, path in zip(keys, image_paths, strict=True)
            if cache is None or key not in cache]
    settings = {"backbone": backbone.name, "input_size": backbone.input_size,
                "feature_shape": list(backbone.feature_shape), "dtype": CACHE_DTYPE,
                "weights": describe_weights(weights)}
    if cache is not None and not todo and model is None and _same(cache.settings, settings):
        return cache  # nothing to compute: no need to build (or download) the network
    model = build_backbone(backbone.name, weights) if model is None else model
    _check_model_shape(backbone, model)
    settings["weights_fingerprint"] = weights_fingerprint(model)
    if cache is None or len(cache) == 0:  # an empty cache may still change its settings
        cache = FeatureCache._create(folder, settings)
    _check_settings_match(cache, settings)
    per_shard = shard_size or max(1, SHARD_BYTES // cache.nbytes_per_image)
    _fill(cache, model, todo, min(batch_size, max(1, len(todo))), per_shard, skip_bad, progress)
    return cache


def _same(stored: dict, settings: dict) -> bool:
    return all(stored.get(name) == value for name, value in settings.items())


def _check_keys(keys: list[str], image_paths: list) -> None:
    if len(keys) != len(image_paths):
        raise ValueError(f"{len(keys)} keys for {len(image_paths)} image paths")
    seen = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice; each image needs its own key")
        seen.add(key)


def _check_model_shape(backbone: Backbone, model: keras.Model) -> None:
    side = backbone.input_size
    expected_in, expected_out = (None, side, side, 3), (None, *backbone.feature_shape)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise ValueError(
            f"the model given for {backbone.name} maps {model.input_shape} -> "
            f"{model.output_shape}, but {backbone.name} features need {expected_in} -> "
            f"{expected_out}; build it with build_backbone({backbone.name!r}, ...)")


def _check_settings_match(cache: FeatureCache, settings: dict) -> None:
    """Refuse to add features made differently from those cached. The weights label may differ
    (the same ImageNet weights, downloaded or from a file); the weights themselves may not."""
    stored = cache.settings
    differences = [f"{name} {stored.get(name)!r} cached, {value!r} now"
                   for name, value in settings.items()
                   if name != "weights" and stored.get(name) != value]
    if differences:
        raise ValueError(
            f"the feature cache {cache.folder} holds features made with other settings: "
            + "; ".join(differences) + f" (weights: {stored.get('weights')} cached, "
            f"{settings['weights']} now). Features of different networks must not be mixed: "
            "use another cache_dir, pass the model that made them, or delete the folder")


def _fill(cache: FeatureCache, model: keras.Model, todo: list, batch_size: int,
          per_shard: int, skip_bad: bool, progress: bool) -> None:
    """Extract ``todo`` (key, path) pairs batch by batch, writing a shard every ``per_shard``."""
    from tqdm import tqdm  # plain tqdm, as in utils.shapes: stored notebook outputs stay text

    side = cache.settings["input_size"]
    pending_keys, pending_features, skipped = [], [], []
    bar = tqdm(total=len(todo), desc=f"{cache.folder.name} features", unit="img",
               disable=not progress, mininterval=1.0)
    try:
        for start in range(0, len(todo), batch_size):
            batch_keys, batch_paths = zip(*todo[start:start + batch_size], strict=True)
            pixels, kept, errors = images.read_images(batch_paths, side)
            if errors and not skip_bad:
                raise errors[0]
            skipped += errors
            if kept:
                batch_features = _run(model, pixels, batch_size, batch_keys)
                # Keys join the pending list only with their features, so an interruption
                # inside _run cannot leave a key without its row.
                pending_features.append(batch_features)
                pending_keys += [batch_keys[i] for i in kept]
            bar.update(len(batch_paths))
            if len(pending_keys) >= per_shard:
                keys_done, features_done = pending_keys, pending_features
                pending_keys, pending_features = [], []
                cache._append_shard(keys_done, np.concatenate(features_done))
    finally:
        # Interrupted (Ctrl-C, a bad image): keep the batches already computed.
        if pending_keys:
            cache._append_shard(pending_keys, np.concatenate(pending_features))
        bar.close()
    if skipped:
        warnings.warn(images.skipped_message(skipped, len(todo)) + "; they are not cached",
                      images.SkippedImagesWarning, stacklevel=3)


def _run(model: keras.Model, pixels: np.ndarray, batch_size: int, batch_keys) -> np.ndarray:
    """``uint8[K, S, S, 3]`` -> ``float16[K, R, C]``, always calling the model on full batches
    (zero-padded), so it is traced, or XLA-compiled on a GPU, for one shape only."""
    count = len(pixels)
    padded = np.zeros((batch_size, *pixels.shape[1:]), pixels.dtype)
    padded[:count] = pixels
    features = np.asarray(model.predict_on_batch(padded))[:count].astype(CACHE_DTYPE)
    if not np.isfinite(features).all():
        raise ValueError(f"features of one of {list(batch_keys)} overflow float16 (beyond "
                         "+-65504); this backbone's outputs cannot be cached as float16")
    return features


def _npy_header_bytes(shape: tuple[int, ...], dtype) -> int:
    """Bytes that ``np.save`` writes before the data of an array of ``shape`` and ``dtype``."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.tell()


def _save_npy(path: pathlib.Path, array: np.ndarray) -> None:
    _write_atomically(path, lambda file: np.save(file, array, allow_pickle=False))


def _save_json(path: pathlib.Path, data: dict) -> None:
    _write_atomically(path, lambda file: file.write(json.dumps(data).encode("utf-8")))


def _write_atomically(path: pathlib.Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to a temporary file, flush it to disk, then rename it over ``path`` in one step:
    readers and later runs see either the old file or the complete new one."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
