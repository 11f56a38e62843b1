"""Profiles: one object that holds every size knob, chosen by ``BOOK_PROFILE``.

``smoke`` is for CI (tiny data, a few steps), ``cpu`` is the full Shapes course on a laptop,
``gpu`` is for Colab or a GPU machine. ``auto`` (the default) picks ``gpu`` when Keras' backend
sees a GPU and ``cpu`` otherwise. ``BOOK_DATASET`` chooses the dataset (default: ``shapes``, except in
the ``gpu`` profile where it is ``flickr8k``).
"""
from __future__ import annotations

import dataclasses
import os

PROFILE_NAMES = ("smoke", "cpu", "gpu")
DATASET_NAMES = ("shapes", "flickr8k", "flickr30k", "coco")


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every size knob of the book in one place; chapters read these, never literals."""

    name: str
    dataset: str
    # data
    num_images: int  # Shapes images over all splits
    image_size: int  # Shapes canvas, pixels per side
    max_caption_tokens: int  # caption words kept, <start>/<end> not counted
    # model
    embed_dim: int
    units: int  # LSTM width
    attention_units: int
    cnn_filters: tuple[int, ...]
    dropout: float
    # training
    epochs: int
    batch_size: int
    learning_rate: float
    final_learning_rate: float  # cosine decay ends here
    steps_per_epoch: int | None  # None: one pass over the training split
    eval_images: int  # validation images decoded after each epoch
    patience: int | None = None  # early stopping: epochs without a better validation score
    # Where a GPU is visible: True for mixed_float16, or a Keras policy's name
    # ("mixed_bfloat16"); False keeps float32 (utils.set_precision).
    mixed_precision: bool | str = False
    jit_compile: bool = True
    # Batches of similar caption length (train.groups_by_length): None = unless the encoder
    # trains batch normalisation, which grouped batches would mislead.
    group_by_length: bool | None = None

    def replace(self, **changes) -> "Profile":
        """Return a copy with some knobs changed (for experiments in a chapter)."""
        return dataclasses.replace(self, **changes)


_PROFILES = {
    # A dozen training steps: XLA would spend longer compiling the decoder than it saves. Its
    # captions are cut after 8 words: every graph unrolls the decoder over the caption, and
    # tracing those graphs is most of what the smoke profile's runs cost.
    "smoke": Profile(
        name="smoke", dataset="shapes", num_images=240, image_size=64, max_caption_tokens=8,
        embed_dim=32, units=64, attention_units=32, cnn_filters=(16, 32, 32), dropout=0.0,
        epochs=2, batch_size=16, learning_rate=3e-3, final_learning_rate=1e-3,
        steps_per_epoch=6, eval_images=16, jit_compile=False,
    ),
    # Without XLA: its gain on a CPU is small (benchmarks/README.md), while compiling the decoder
    # costs from seconds to a minute per caption length. Batches of 128 run an epoch in about
    # 16 s on 2 CPU cores (about 20 s with 64). The schedule is as long as chapter 5's 10-minute
    # budget allows, the chapter's other cells taking about 3.5 minutes: 8 epochs of 64 gave
    # 85.7% exact test captions (28% on test_novel), 16 of 64 88.7% (61%), 24 of 128 90-92%
    # (55-65%) but made chapter 5 run 12 minutes (2026-12-07).
    "cpu": Profile(
        name="cpu", dataset="shapes", num_images=10_000, image_size=64, max_caption_tokens=16,
        embed_dim=64, units=256, attention_units=128, cnn_filters=(32, 64, 128), dropout=0.1,
        epochs=16, batch_size=128, learning_rate=4e-3, final_learning_rate=1e-4,
        steps_per_epoch=None, eval_images=200, jit_compile=False,
    ),
    # Mixed precision stays off until a measurement shows it faster for this model. The one GPU
    # figure so far (an NVIDIA H200, JAX backend, the tutorial's sizes; recorded in the project's
    # issue 21) found mixed_bfloat16 slower than float32, 60 against 48 ms per step at batch 256,
    # probably because an LSTM decoder's many small steps are bound by kernel launches and casts
    # rather than by arithmetic (not yet profiled).
    # benchmarks/gpu_check.py times float32, mixed_float16 and mixed_bfloat16; set
    # mixed_precision to the policy its stored results show faster, if any.
    "gpu": Profile(
        name="gpu", dataset="shapes", num_images=30_000, image_size=64, max_caption_tokens=20,
        embed_dim=256, units=512, attention_units=256, cnn_filters=(64, 128, 256), dropout=0.3,
        epochs=20, batch_size=64, learning_rate=2e-3, final_learning_rate=1e-4,
        steps_per_epoch=None, eval_images=1000, patience=4, mixed_precision=False,
    ),
}


def gpu_visible() -> bool:
    """Whether Keras' backend (TensorFlow, JAX or PyTorch: ``KERAS_BACKEND``) sees a GPU."""
    try:
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(device.platform == "gpu" for device in jax.devices())
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
    except (ImportError, RuntimeError):  # no backend package, or no usable device
        return False
    return False


def get_profile(name: str | None = None, dataset: str | None = None) -> Profile:
    """Return the profile ``name`` (default: ``$BOOK_PROFILE``, else ``auto``).

    ``dataset`` (default: ``$BOOK_DATASET``) overrides the profile's dataset. An unknown name
    raises ``ValueError`` listing the valid ones.
    """
    name = (name or os.environ.get("BOOK_PROFILE") or "auto").strip().lower()
    if name == "auto":
        name = "gpu" if gpu_visible() else "cpu"
    if name not in _PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (BOOK_PROFILE); choose one of: auto, {', '.join(PROFILE_NAMES)}"
        )
    profile = _PROFILES[name]
    default_dataset = "flickr8k" if name == "gpu" else "shapes"
    dataset = (dataset or os.environ.get("BOOK_DATASET") or default_dataset).strip().lower()
    if dataset not in DATASET_NAMES:
        raise ValueError(
            f"unknown dataset {dataset!r} (BOOK_DATASET); choose one of: {', '.join(DATASET_NAMES)}"
        )
    return profile.replace(dataset=dataset)
