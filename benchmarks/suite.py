"""The performance suite: the book's fast path against :mod:`benchmarks.reference`.

Every benchmark returns records ``{"name", "unit", "baseline", "fast", "ratio", ...}`` where
``ratio > 1`` means the fast path wins (``fast / baseline`` when more is better, ``baseline /
fast`` when less is better). Both sides run in the same process, alternating, and each side's
number is the median of several repetitions. :func:`run_suite` runs the groups a mode asks for;
:func:`render_table` turns stored results into the README's table.

Groups: ``training`` (ms/step and tokens/s, plus the share of the machine's matrix-multiply
speed), ``decoding`` (captions/s), ``features`` (extraction images/s, bytes per image, reading
images/s), ``pipeline`` (does training wait for data?) and ``quality`` (Shapes exact-caption rate
after some minutes of training; full mode only).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

GROUPS = ("peak", "training", "decoding", "features", "pipeline", "quality")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One model and batch size; ``positions`` is the padded caption length (``<start>`` to the
    last padding) the reference always uses; caption words are drawn from a normal distribution
    ``N(words_mean, words_sd)`` clipped to ``[3, positions - 2]``."""

    name: str
    encoder: str  # "features" (cached [R, C] features) or "cnn" (pixels)
    vocab: int
    batch: int
    positions: int
    words_mean: float
    words_sd: float
    region_dim: int
    embed_dim: int
    units: int
    attention_units: int
    regions: int = 64
    channels: int = 2048  # features only
    image_size: int = 64  # cnn only
    filters: tuple[int, int, int] = (32, 64, 128)  # cnn only
    decode_words: int = 20

    def describe(self) -> str:
        source = (f"features {self.regions}x{self.channels}->{self.region_dim}"
                  if self.encoder == "features" else
                  f"CNN {self.image_size}px {self.filters}->{self.region_dim}")
        return (f"{source}, LSTM {self.units}, attention {self.attention_units}, embedding "
                f"{self.embed_dim}, vocabulary {self.vocab}, batch {self.batch}, "
                f"{self.positions} positions")


SIZES = {
    # The model of the Shapes cpu profile (utils.profile): 42 words in its vocabulary, 16 words
    # + 2 markers, timed on batches of 32 (the profile itself trains on batches of 128).
    "shapes-cpu": Sizes("shapes-cpu", "cnn", vocab=42, batch=32, positions=18, words_mean=8,
                        words_sd=3, region_dim=128, embed_dim=64, units=256, attention_units=128,
                        decode_words=17),
    # The TensorFlow tutorial's sizes (benchmarks/tutorial.py): InceptionV3 features 64x2048
    # projected to 256, 512 units, 5000 words, batches of 64 captions padded to 50 positions.
    "tutorial": Sizes("tutorial", "features", vocab=5000, batch=64, positions=50, words_mean=11,
                      words_sd=4, region_dim=256, embed_dim=256, units=512, attention_units=512,
                      decode_words=20),
    # For the smoke mode only (tests): seconds, not minutes.
    "tiny": Sizes("tiny", "features", vocab=50, batch=8, positions=12, words_mean=5, words_sd=2,
                  region_dim=16, embed_dim=16, units=32, attention_units=32, regions=16,
                  channels=32, decode_words=8),
    "tiny-cnn": Sizes("tiny-cnn", "cnn", vocab=50, batch=8, positions=12, words_mean=5,
                      words_sd=2, region_dim=16, embed_dim=16, units=32, attention_units=16,
                      regions=16, image_size=32, filters=(8, 8, 16), decode_words=8),
}


@dataclasses.dataclass(frozen=True)
class Mode:
    """How much of the suite runs, how often."""

    name: str
    training_sizes: tuple[str, ...]
    decoding_sizes: tuple[str, ...]
    pipeline_sizes: str
    repeats: int  # alternating repetitions per measurement (medians are over these)
    batches: int  # distinct training batches, each timed once per repetition
    grouped_batches: int  # batches of the fast path where fit trims them: a whole chunk
    single_images: int  # images captioned one at a time per repetition
    backbone: str  # feature extraction network (weights=None: no download)
    extract_images: int
    pipeline_steps: int
    quality_minutes: tuple[float, ...] = ()
    matmul_size: int = 1024


MODES = {
    "smoke": Mode("smoke", ("tiny",), ("tiny",), "tiny-cnn", repeats=2, batches=1,
                  grouped_batches=2, single_images=2, backbone="shapes_cnn", extract_images=8,
                  pipeline_steps=3, matmul_size=256),
    # Under 3 minutes on 2 cores: the tutorial-size training step (whose XLA compilation alone
    # takes a minute per caption length on a CPU) is left to the full mode.
    "quick": Mode("quick", ("shapes-cpu",), ("shapes-cpu", "tutorial"), "shapes-cpu", repeats=3,
                  batches=1, grouped_batches=16, single_images=3, backbone="mobilenet_v3",
                  extract_images=8, pipeline_steps=4),
    "full": Mode("full", ("shapes-cpu", "tutorial"), ("shapes-cpu", "tutorial"), "shapes-cpu",
                 repeats=5, batches=3, grouped_batches=16, single_images=8,
                 backbone="inception_v3", extract_images=64, pipeline_steps=20,
                 quality_minutes=(2.0, 5.0, 10.0), matmul_size=2048),
}


# --- records and timing ------------------------------------------------------------------------


def record(name: str, unit: str, baseline: float, fast: float, *, better: str = "higher",
           group: str, sizes: str = "", goal: float | None = None, ratio: bool = True,
           goal_of: str = "ratio", **detail) -> dict:
    """One result. ``ratio`` > 1 means the fast path wins; ``None`` when it is undefined (a
    zero) or meaningless (``ratio=False``: a share near zero, a machine figure); ``goal`` is
    what the issue asks for, of the ratio or (``goal_of="fast"``) of the fast path's own value,
    and ``met`` whether it was reached (for a ratio with 1 % tolerance, for file headers and
    the like)."""
    if not ratio:
        ratio = None
    elif better == "higher":
        ratio = fast / baseline if baseline else None
    else:
        ratio = baseline / fast if fast else None
    result = {"name": name, "unit": unit, "baseline": _round(baseline), "fast": _round(fast),
              "ratio": _round(ratio), "better": better, "group": group, "sizes": sizes}
    if goal is not None:
        result["goal"] = goal
        # a ratio may fall 1 % short (file headers and the like), a share of the peak may not
        reached, slack = (ratio, 0.99) if goal_of == "ratio" else (fast, 1.0)
        result["met"] = reached is not None and reached >= goal * slack
        if goal_of != "ratio":
            result["goal_of"] = goal_of
    if detail:
        result["detail"] = {key: _round(value) for key, value in detail.items()}
    return result


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_round(item) for item in value]
    return value


def alternate(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` times, alternating the order every
    repetition so that neither side always runs first (a busy machine drifts)."""
    names, times = list(functions), {name: [] for name in functions}
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            started = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - started)
    return times


def median(samples: list[float]) -> float:
    return statistics.median(samples)


# --- synthetic data --------------------------------------------------------------------------


def random_captions(sizes: Sizes, rng: np.random.Generator, count: int) -> np.ndarray:
    """``int32[count, positions]``: ``<start>`` (2), random words (4..V-1), ``<end>`` (3), 0s."""
    words = np.clip(np.rint(rng.normal(sizes.words_mean, sizes.words_sd, count)), 3,
                    sizes.positions - 2).astype(int)
    captions = np.zeros((count, sizes.positions), np.int32)
    for row, length in enumerate(words):
        captions[row, 0] = 2
        captions[row, 1 : length + 1] = rng.integers(4, sizes.vocab, length)
        captions[row, length + 1] = 3
    return captions


def random_inputs(sizes: Sizes, rng: np.random.Generator, count: int) -> np.ndarray:
    """Cached features (float16, as stored) or uint8 pixels for ``count`` images."""
    if sizes.encoder == "features":
        return rng.standard_normal((count, sizes.regions, sizes.channels)).astype(np.float16)
    return rng.integers(0, 256, (count, sizes.image_size, sizes.image_size, 3), dtype=np.uint8)


def trimmed_positions(captions: np.ndarray) -> int:
    """The caption positions ``Captioner.train_step`` keeps of a batch of ``int[B, T]``
    captions: :func:`utils.captioner.trimmed_steps`, plus one (the last target)."""
    from utils.captioner import trimmed_steps

    return trimmed_steps(captions) + 1


# --- the two models ----------------------------------------------------------------------------


def suite_profile(sizes: Sizes, *, jit: bool = True, learning_rate: float = 1e-3,
                  group_by_length: bool | None = None):
    """A :class:`utils.profile.Profile` holding ``sizes``: what :mod:`utils.train` reads to build,
    compile and feed a captioner, so that the suite times the fast path as the book trains it."""
    from utils.profile import get_profile

    return get_profile("cpu").replace(
        embed_dim=sizes.embed_dim, units=sizes.units, attention_units=sizes.attention_units,
        cnn_filters=sizes.filters, dropout=0.0, batch_size=sizes.batch,
        max_caption_tokens=sizes.positions - 2, learning_rate=learning_rate,
        # a constant learning rate, as the reference's Adam has: build_fast compiles for one
        # step per epoch, so a decaying schedule would reach its floor after `epochs` steps
        final_learning_rate=learning_rate, jit_compile=jit, group_by_length=group_by_length)


def build_fast(sizes: Sizes, *, jit: bool = True, end_id: int = 3, learning_rate: float = 1e-3,
               group_by_length: bool | None = None):
    """The book's :class:`utils.captioner.FastCaptioner` at ``sizes``, built and compiled as
    ``utils.train.fit`` does (:func:`utils.train.compile_for_training`: Adam, gradient
    clipping; the cosine schedule's floor is its start, so the rate is constant), no dropout,
    trimming batches where ``fit`` would (:func:`utils.train.groups_by_length`;
    ``group_by_length`` overrides it)."""
    from utils import train
    from utils.captioner import captioner_from_profile

    profile = suite_profile(sizes, jit=jit, learning_rate=learning_rate,
                            group_by_length=group_by_length)
    model = captioner_from_profile(profile, sizes.vocab, encoder=sizes.encoder,
                                   region_dim=sizes.region_dim, end_id=end_id)
    inputs = random_inputs(sizes, np.random.default_rng(0), 1)
    model((inputs, np.full((1, 1), 2, np.int32)))
    train.compile_for_training(model, profile, steps_per_epoch=1)
    model.optimizer.build(model.trainable_variables)
    model.trim_batches = train.groups_by_length(model, profile)  # as fit sets it
    return model


def fit_groups(sizes: Sizes) -> bool:
    """Whether ``utils.train.fit`` groups batches by length for ``sizes``' encoder, as
    :func:`utils.train.groups_by_length` decides it for a model with that encoder (built, not
    called, so no weights are made)."""
    from utils import train
    from utils.captioner import captioner_from_profile

    profile = suite_profile(sizes)
    model = captioner_from_profile(profile, sizes.vocab, encoder=sizes.encoder,
                                   region_dim=sizes.region_dim)
    return train.groups_by_length(model, profile)


def fed_batches(model, sizes: Sizes, count: int, seed: int = 1) -> list:
    """``count`` batches as ``fit`` feeds ``model``: fresh examples (drawn as the baselines'
    are) through :func:`utils.train.training_pipeline`, grouped by caption length where the
    model trims its batches (``model.trim_batches``), else random. Grouping sorts within a chunk
    of :data:`utils.train.LENGTH_GROUP_BATCHES` batches, so a whole chunk is drawn and ``count``
    of its batches (in the pipeline's shuffled order) are kept."""
    from utils import train
    from utils.datasets import EncodedSplit

    rng = np.random.default_rng(seed)
    examples = train.LENGTH_GROUP_BATCHES * sizes.batch
    captions = random_captions(sizes, rng, examples)[:, None, :]  # one reference per image
    split = EncodedSplit("benchmark", random_inputs(sizes, rng, examples), captions,
                         references=[], scenes=None)
    pipeline = train.training_pipeline(split, sizes.batch, group_by_length=model.trim_batches)
    return [(x.numpy(), c.numpy()) for x, c in pipeline.take(count)]


def build_reference(sizes: Sizes, *, end_id: int = 3, learning_rate: float = 1e-3):
    """:class:`benchmarks.reference.ReferenceCaptioner` at ``sizes``, built."""
    from .reference import ReferenceCaptioner

    model = ReferenceCaptioner(sizes.vocab, max_length=sizes.positions, encoder=sizes.encoder,
                               region_dim=sizes.region_dim, filters=sizes.filters,
                               embed_dim=sizes.embed_dim, units=sizes.units,
                               attention_units=sizes.attention_units, end_id=end_id,
                               learning_rate=learning_rate)
    model.build_for(random_inputs(sizes, np.random.default_rng(0), 1))
    return model


def build_tutorial(sizes: Sizes, *, end_id: int = 3):
    """:class:`benchmarks.tutorial.TutorialCaptioner` at ``sizes`` (whose region width must be
    its embedding width, and its attention as wide as its GRU, as in the tutorial), built.
    ``end_id`` out of the vocabulary: its ``evaluate`` never stops early."""
    from .tutorial import TutorialCaptioner

    if sizes.region_dim != sizes.embed_dim or sizes.attention_units != sizes.units:
        raise ValueError(f"{sizes.name}: the tutorial's model has one embedding width and one "
                         "GRU width for everything")
    model = TutorialCaptioner(sizes.vocab, max_length=sizes.positions,
                              embedding_dim=sizes.embed_dim, units=sizes.units, end_id=end_id)
    model.build_for(random_inputs(sizes, np.random.default_rng(0), 1))
    return model


def fast_train_step(model) -> Callable:
    """``model.train_step`` in a ``tf.function`` (as ``fit`` runs it), returning the loss.
    Each caption length is traced (and XLA-compiled) once."""
    import tensorflow as tf

    step = tf.function(model.train_step)
    return lambda inputs, captions: step((inputs, captions))["loss"]


# --- FLOP counting -----------------------------------------------------------------------------


def forward_flops(sizes: Sizes, steps: int, keys_every_step: bool = False) -> float:
    """FLOPs (2 per multiply-add, matrix products and convolutions only) of one teacher-forced
    forward pass over ``steps`` decoder steps: keys projected once (the fast path) or at every
    step (``keys_every_step``, the reference)."""
    b, r, d, a = sizes.batch, sizes.regions, sizes.region_dim, sizes.attention_units
    u, e, v = sizes.units, sizes.embed_dim, sizes.vocab
    if sizes.encoder == "features":
        encoder = b * r * sizes.channels * d * 2
    else:
        s, (f1, f2, f3) = sizes.image_size, sizes.filters
        encoder = b * 2 * ((s // 2) ** 2 * (25 * 3 * f1 + 9 * f1 * f1) + (s // 4) ** 2 * 9 * f1 * f2
                           + (s // 8) ** 2 * 9 * f2 * f3 + r * f3 * d)
    keys = b * r * d * a * 2
    once = encoder + 2 * b * d * u * 2 + (0 if keys_every_step else keys)
    per_step = b * 2 * ((u + e) * a + r * a + r * d + (e + d + u) * 4 * u + (u + d + e) * v)
    return float(once + steps * (per_step + (keys if keys_every_step else 0)))


def training_flops(sizes: Sizes, steps: int, keys_every_step: bool = False) -> float:
    """Forward plus backward (about twice the forward) FLOPs of one training step."""
    return 3.0 * forward_flops(sizes, steps, keys_every_step)


def tutorial_forward_flops(sizes: Sizes, steps: int, keys_every_step: bool = True) -> float:
    """FLOPs of one forward pass of the tutorial's model (:mod:`benchmarks.tutorial`) over
    ``steps`` decoder steps, counted as :func:`forward_flops` counts: ``W1 features`` at every
    step as the tutorial computes it, or once per image (``keys_every_step=False``)."""
    b, r, c, e = sizes.batch, sizes.regions, sizes.channels, sizes.embed_dim
    u, v = sizes.units, sizes.vocab
    encoder = b * r * c * e * 2
    keys = b * r * e * u * 2
    per_step = b * 2 * (u * u + r * u + r * e  # W2 hidden, V, the weighted sum
                        + 2 * e * 3 * u + u * 3 * u  # the GRU's input and recurrent products
                        + u * u + u * v)  # fc1, fc2
    once = encoder + (0 if keys_every_step else keys)
    return float(once + steps * (per_step + (keys if keys_every_step else 0)))


def useful_training_flops(sizes: Sizes, captions: np.ndarray, model: str = "book") -> float:
    """FLOPs that training on ``captions int[N, T]`` needs, per batch of ``sizes.batch``: each
    caption's own decoder steps only (its words and ``<end>``, no padding), the keys projected
    once per image, forward and backward (3 x the forward, as :func:`training_flops`). ``model``
    is ``"book"`` (:func:`forward_flops`) or ``"tutorial"`` (:func:`tutorial_forward_flops`)."""
    one = dataclasses.replace(sizes, batch=1)
    count = (forward_flops if model == "book" else
             functools.partial(tutorial_forward_flops, keys_every_step=False))
    fixed, per_step = count(one, 0), count(one, 1) - count(one, 0)
    steps = np.sum(captions[:, 1:] != 0, axis=1)
    return 3.0 * float(np.sum(fixed + steps * per_step)) * sizes.batch / len(captions)


def matmul_probe(size: int, products: int = 4) -> tuple[Callable[[], None], float]:
    """A function that multiplies two ``size x size`` float32 matrices ``products`` times, and
    the FLOPs it does: timed among the benchmarks' own repetitions (:func:`alternate`), it gives
    this machine's dense matrix-multiply speed under the same load as they ran."""
    import tensorflow as tf

    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])
    product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    product(a, b).numpy()

    def run() -> None:
        for _ in range(products):
            product(a, b).numpy()

    return run, 2.0 * size**3 * products


# --- benchmarks ----------------------------------------------------------------------------------


def matmul_gflops(size: int, repeats: int) -> float:
    """The machine's dense float32 matrix-multiply speed in GFLOP/s, the best of ``repeats``."""
    probe, flops = matmul_probe(size)
    return flops / min(alternate({"peak": probe}, repeats)["peak"]) / 1e9


def bench_peak(mode: Mode) -> list[dict]:
    """The machine's dense float32 matrix-multiply speed, the best of the repetitions."""
    best = matmul_gflops(mode.matmul_size, mode.repeats)
    return [record(f"dense matmul {mode.matmul_size}^2 float32 (machine limit)", "GFLOP/s",
                   best, best, group="peak", ratio=False)]


#: The training baselines, as the records name them.
BASELINES = {"tutorial": "the tutorial's train_step", "reference": "the compiled reference"}


def tutorial_sized(sizes: Sizes) -> bool:
    """Whether the tutorial's own model (:func:`build_tutorial`) exists at ``sizes``."""
    return (sizes.encoder == "features" and sizes.region_dim == sizes.embed_dim
            and sizes.attention_units == sizes.units)


def bench_training(sizes: Sizes, mode: Mode, variants: dict | None = None) -> list[dict]:
    """Training step: the fast path as ``fit`` runs it (keys once, output layer once over all
    positions, XLA on the decoder; batches grouped by caption length and trimmed to their longest
    caption, unless the encoder is the CNN) against two baselines, where they exist at
    ``sizes``: the tutorial's own ``train_step`` (:mod:`benchmarks.tutorial`: its GRU model,
    captions padded to its length) and the compiled reference (:mod:`benchmarks.reference`: the
    book's model written the tutorial's way). For each, the FLOPs a step spends, the FLOPs its
    real tokens need (:func:`useful_training_flops`), and both per second over the machine's
    matrix-multiply speed measured in the same repetitions."""
    import keras

    rng = np.random.default_rng(1)
    batches = [(random_inputs(sizes, rng, sizes.batch), random_captions(sizes, rng, sizes.batch))
               for _ in range(mode.batches)]

    def real_tokens_of(batches):  # per step
        return sum(int(np.sum(c[:, 1:] != 0)) for _, c in batches) / len(batches)

    every_caption = np.concatenate([c for _, c in batches])
    real_tokens = {"reference": real_tokens_of(batches)}
    baselines = {"reference": build_reference(sizes)}
    flops = {"reference": training_flops(sizes, sizes.positions - 1, keys_every_step=True)}
    useful = {"reference": useful_training_flops(sizes, every_caption)}
    # The smoke mode leaves out the tutorial's train_step, whose unrolled GRU steps take longer
    # to trace than the rest of the run (tests check its loss eagerly).
    if tutorial_sized(sizes) and mode.name != "smoke":
        baselines = {"tutorial": build_tutorial(sizes), **baselines}
        flops["tutorial"] = 3.0 * tutorial_forward_flops(sizes, sizes.positions - 1)
        useful["tutorial"] = useful_training_flops(sizes, every_caption, "tutorial")
        real_tokens["tutorial"] = real_tokens["reference"]
    functions, compile_seconds, positions = {}, {}, {}
    steps_timed = dict.fromkeys(baselines, len(batches))
    for name, baseline in baselines.items():
        started = time.perf_counter()
        for x, c in batches:
            baseline.train_on(x, c).numpy()
        compile_seconds[name] = time.perf_counter() - started
        functions[name] = (lambda baseline=baseline:
                           [baseline.train_on(x, c).numpy() for x, c in batches])
    variants = variants or {"fast": {"jit": True}}
    for name, options in variants.items():
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if options.get("mixed_precision") else "float32")
        model = build_fast(sizes, jit=options["jit"], group_by_length=options.get("grouped"))
        keras.mixed_precision.set_global_policy("float32")
        # As fit does: grouped batches are trimmed (by the train step itself: full-length
        # captions go in), random ones are not.
        step = fast_train_step(model)
        # A baseline's step costs the same for any captions (padded to full length), a trimmed
        # one depends on them: time a whole chunk as fit groups it, not a lucky few batches.
        fed = fed_batches(model, sizes, mode.grouped_batches if model.trim_batches
                          else len(batches))
        steps_timed[name] = len(fed)
        kept = [trimmed_positions(c) if model.trim_batches else sizes.positions for _, c in fed]
        positions[name] = float(np.mean(kept))
        flops[name] = float(np.mean([training_flops(sizes, p - 1) for p in kept]))
        useful[name] = useful_training_flops(sizes, np.concatenate([c for _, c in fed]))
        real_tokens[name] = real_tokens_of(fed)
        started = time.perf_counter()
        for x, c in fed:
            step(x, c).numpy()
        compile_seconds[name] = time.perf_counter() - started
        functions[name] = (lambda step=step, fed=fed: [step(x, c).numpy() for x, c in fed])
    functions["peak"], peak_flops = matmul_probe(mode.matmul_size)
    times = alternate(functions, mode.repeats)
    per_step = {name: median(samples) / steps_timed.get(name, 1)
                for name, samples in times.items()}
    peak = peak_flops / median(times["peak"])
    records = []
    common = dict(group="training", sizes=sizes.name)
    for name in variants:
        for base in baselines:
            label = ("training step" + ("" if name == "fast" else f" ({name})")
                     + f" vs {BASELINES[base]}")
            at_tutorial = base == "tutorial" and sizes.name == "tutorial"
            records.append(record(
                f"{label}: time", "ms/step", 1e3 * per_step[base], 1e3 * per_step[name],
                better="lower", goal=3.0 if at_tutorial and name == "fast" else None, **common,
                positions_baseline=sizes.positions, positions_fast=positions[name],
                compile_s_baseline=compile_seconds[base], compile_s_fast=compile_seconds[name],
                steps_timed_baseline=steps_timed[base], steps_timed_fast=steps_timed[name],
                samples_baseline=[t / steps_timed[base] for t in times[base]],
                samples_fast=[t / steps_timed[name] for t in times[name]]))
            records.append(record(f"{label}: real tokens", "tokens/s",
                                  real_tokens[base] / per_step[base],
                                  real_tokens[name] / per_step[name], **common))
            # What each side computes (counted from the shapes) per second, over the peak.
            records.append(record(
                f"{label}: achieved FLOP/s over matmul peak", "fraction",
                flops[base] / per_step[base] / peak, flops[name] / per_step[name] / peak,
                **common, gflop_per_step_baseline=flops[base] / 1e9,
                gflop_per_step_fast=flops[name] / 1e9, peak_gflops=peak / 1e9))
            # What the real tokens need, per second, over the peak: the work that counts.
            records.append(record(
                f"{label}: useful FLOP/s over matmul peak", "fraction",
                useful[base] / per_step[base] / peak, useful[name] / per_step[name] / peak,
                goal=0.55 if at_tutorial and name == "fast" else None, goal_of="fast",
                **common, useful_gflop_per_step_baseline=useful[base] / 1e9,
                useful_gflop_per_step_fast=useful[name] / 1e9,
                useful_share_of_spent_baseline=useful[base] / flops[base],
                useful_share_of_spent_fast=useful[name] / flops[name]))
    return records


def bench_decoding(sizes: Sizes, mode: Mode) -> list[dict]:
    """Captions/s of the batched greedy and beam-3 searches of :mod:`utils.decoding` against
    two ways of captioning one image at a time in a Python loop: the tutorial's own eager
    ``evaluate`` (:meth:`benchmarks.tutorial.TutorialCaptioner.evaluate`, its model, a word drawn
    at each step; where the tutorial's model exists at ``sizes``) and the compiled reference's
    single-image step (:meth:`benchmarks.reference.ReferenceCaptioner.caption_one`).

    The weights are random; the reference's are copied from the fast model, so both write the
    same words. ``<end>`` is set to an id no model emits, so every caption runs to the same
    ``decode_words`` words on every side (a trained model stops earlier, on every side)."""
    from utils.decoding import decode_images

    end_id = sizes.vocab  # never produced: fixed-length captions
    fast = build_fast(sizes, end_id=end_id)
    reference = build_reference(sizes, end_id=end_id)
    reference.copy_weights_from(fast)
    inputs = random_inputs(sizes, np.random.default_rng(2), sizes.batch)
    singles = inputs[: mode.single_images]
    words = sizes.decode_words

    def one_at_a_time():
        return [reference.caption_one(image, words) for image in singles]

    def batched(beam):
        return lambda: decode_images(fast, inputs, max_length=words,
                                     beam_size=beam).sequences.numpy()

    functions = {"one at a time": one_at_a_time, "greedy": batched(1), "beam 3": batched(3)}
    if tutorial_sized(sizes):
        tutorial = build_tutorial(sizes, end_id=end_id)
        functions["tutorial"] = lambda: [tutorial.evaluate(image, words)[0] for image in singles]
    for function in functions.values():
        function()  # trace
    # Same weights, same arithmetic: the same words (checked on the images both captioned).
    greedy_words = functions["greedy"]()[: len(singles), 0]
    agree = float(np.mean([list(row) == caption
                           for row, caption in zip(greedy_words, one_at_a_time())]))
    times = alternate(functions, mode.repeats)
    rate = {name: (len(singles) if name in ("one at a time", "tutorial") else len(inputs))
            / median(samples) for name, samples in times.items()}
    common = dict(group="decoding", sizes=sizes.name, words=words)
    records = []
    if "tutorial" in rate:
        records += [
            record(f"batched greedy ({len(inputs)} images) vs the tutorial's eager evaluate",
                   "captions/s", rate["tutorial"], rate["greedy"], goal=50.0, **common),
            record(f"batched beam 3 ({len(inputs)} images) vs the tutorial's eager evaluate",
                   "captions/s", rate["tutorial"], rate["beam 3"], goal=10.0, **common)]
    return records + [
        record(f"batched greedy ({len(inputs)} images) vs one compiled image step at a time",
               "captions/s", rate["one at a time"], rate["greedy"], goal=20.0,
               same_captions=agree, **common),
        record(f"batched beam 3 ({len(inputs)} images) vs one compiled image step at a time",
               "captions/s", rate["one at a time"], rate["beam 3"], goal=5.0, **common)]


def _write_images(folder: pathlib.Path, count: int, rng: np.random.Generator) -> list[str]:
    from PIL import Image

    paths = []
    for index in range(count):
        path = folder / f"image_{index:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def bench_features(mode: Mode) -> list[dict]:
    """Feature extraction and cache: the tutorial's way (batches of 16, one float32 ``.npy``
    per image, read back one file at a time without prefetching) vs
    :func:`utils.features.extract_features` (float16 shards, batches of 32) and
    :meth:`utils.features.FeatureCache.dataset` (rows read where they lie, batched, prefetched)."""
    import tensorflow as tf

    from utils import features, images

    backbone = features.get_backbone(mode.backbone)
    model = features.build_backbone(backbone.name, weights=None)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as temporary:
        root = pathlib.Path(temporary)
        (root / "images").mkdir()
        paths = _write_images(root / "images", mode.extract_images, np.random.default_rng(3))
        keys = [pathlib.Path(path).stem for path in paths]
        model.predict_on_batch(np.zeros((16, backbone.input_size, backbone.input_size, 3),
                                        np.uint8))
        model.predict_on_batch(np.zeros((32, backbone.input_size, backbone.input_size, 3),
                                        np.uint8))
        runs = {"npy": 0, "cache": 0}

        def tutorial_extract():
            folder = root / f"npy{runs['npy']}"
            folder.mkdir()
            runs["npy"] += 1
            for start in range(0, len(paths), 16):
                pixels, _, _ = images.read_images(paths[start : start + 16], backbone.input_size)
                batch = np.asarray(model.predict_on_batch(pixels), np.float32)
                for key, row in zip(keys[start : start + 16], batch, strict=True):
                    np.save(folder / f"{key}.npy", row)
            return folder

        def cache_extract():
            folder = root / f"cache{runs['cache']}"
            runs["cache"] += 1
            return features.extract_features(backbone.name, paths, keys, folder, batch_size=32,
                                             weights=None, model=model, progress=False)

        times = alternate({"npy": tutorial_extract, "cache": cache_extract}, 2)
        npy_folder = root / "npy0"
        cache = features.FeatureCache(root / "cache0", backbone.name)
        npy_bytes = sum(path.stat().st_size for path in npy_folder.glob("*.npy")) / len(keys)
        cache_bytes = cache.disk_bytes / len(cache)
        np.testing.assert_allclose(np.load(npy_folder / f"{keys[0]}.npy"),
                                   cache.get(keys[0]).astype(np.float32), rtol=1e-2, atol=1e-2)

        # Each side reads the cached set ``epochs`` times through one pipeline, built once.
        epochs = max(1, 2048 // len(keys))  # long enough that page-fault noise averages out
        files = [str(npy_folder / f"{key}.npy") for key in keys] * epochs
        load = lambda path: np.load(path.decode())  # noqa: E731
        npy_data = tf.data.Dataset.from_tensor_slices(files).map(
            lambda path: tf.numpy_function(load, [path], tf.float32)).batch(64)
        cache_data = cache.dataset(keys * epochs, batch_size=64)

        def read(data):
            return lambda: [batch.numpy() for batch in data]

        read_times = alternate({"npy": read(npy_data), "cache": read(cache_data)}, mode.repeats)
    count = len(keys)
    common = dict(group="features", sizes=f"{backbone.name} {backbone.regions}x{backbone.channels}")
    return [
        record("feature extraction (random-weight backbone, JPEG decode included)", "images/s",
               count / median(times["npy"]), count / median(times["cache"]), **common,
               images=count),
        record("feature cache size: float32 .npy per image vs float16 shards", "bytes/image",
               npy_bytes, cache_bytes, better="lower", goal=2.0, **common),
        record("reading cached features: one .npy at a time vs rows of float16 shards",
               "images/s", epochs * count / median(read_times["npy"]),
               epochs * count / median(read_times["cache"]), **common),
    ]


def bench_pipeline(mode: Mode) -> list[dict]:
    """Does training wait for data? Shapes cpu sizes, the fast training step fed three ways:
    batches already in memory (pure compute), :func:`utils.train.training_pipeline` (decoded
    pixels in memory, parallel map, prefetch) and the tutorial's pipeline (read and decode each
    PNG file every epoch, no parallelism, no prefetch)."""
    import tensorflow as tf
    from PIL import Image

    from utils import datasets, train

    sizes = SIZES[mode.pipeline_sizes]
    rng = np.random.default_rng(4)
    count = sizes.batch * mode.pipeline_steps
    pixels = random_inputs(sizes, rng, count)
    captions = random_captions(sizes, rng, count * 5).reshape(count, 5, -1)
    split = datasets.EncodedSplit("bench", pixels, captions, [[""]] * count, None)
    model = build_fast(sizes)
    step = fast_train_step(model)
    steps = mode.pipeline_steps
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as temporary:
        files = []
        for index, image in enumerate(pixels):
            path = pathlib.Path(temporary) / f"{index:05d}.png"
            Image.fromarray(image).save(path)
            files.append(str(path))

        def load(path, caption):
            return tf.io.decode_png(tf.io.read_file(path), channels=3), caption

        tutorial_data = tf.data.Dataset.from_tensor_slices((files, captions[:, 0])).shuffle(
            count, seed=0).map(load).batch(sizes.batch, drop_remainder=True)
        book_data = train.training_pipeline(split, sizes.batch, 0,
                                            steps_per_epoch=steps).take(steps)
        in_memory = [(tf.constant(x), tf.constant(c)) for x, c in book_data]

        def feed(batches):
            def go():
                for x, c in batches:
                    step(x, c).numpy()
            return go

        for x, c in in_memory:  # trace every shape the pipelines will produce
            step(x, c).numpy()
        times = alternate({"compute": feed(in_memory), "tutorial": feed(tutorial_data),
                           "book": feed(book_data)}, mode.repeats)
    compute, tutorial, book = (median(times[k]) / steps for k in ("compute", "tutorial", "book"))
    common = dict(group="pipeline", sizes=sizes.name)
    waiting = {name: max(0.0, (value - compute) / value)
               for name, value in (("tutorial", tutorial), ("book", book))}
    return [record("training step fed by the input pipeline", "ms/step", 1e3 * tutorial,
                   1e3 * book, better="lower", compute_only_ms=1e3 * compute, **common),
            record("share of the step spent waiting for data", "fraction", waiting["tutorial"],
                   waiting["book"], better="lower", ratio=False, **common)]


def bench_quality(mode: Mode) -> list[dict]:
    """Shapes exact-caption rate on 300 validation images after ``quality_minutes`` of training
    (the clock stops while scoring), reference vs fast path, same data order, Adam 3e-3."""
    import keras

    from utils import evaluation, profile as profiles, train

    profile = profiles.get_profile("cpu")
    vocabulary, splits = train.prepare_shapes(profile)
    val = splits["val"]
    count, words = 300, profile.max_caption_tokens + 1
    sizes = SIZES["shapes-cpu"]
    assert sizes.vocab == len(vocabulary), (sizes.vocab, len(vocabulary))
    results = {}
    for name in ("reference", "fast"):
        keras.utils.set_random_seed(0)
        if name == "fast":
            model = build_fast(sizes, learning_rate=profile.learning_rate)
            step = fast_train_step(model)

            def caption(pixels, model=model):
                return train.caption_images(model, pixels, vocabulary, words)[0]
        else:
            model = build_reference(sizes, learning_rate=profile.learning_rate)
            step = model.train_on

            def caption(pixels, model=model):
                return [vocabulary.decode(row) for row in model.greedy_batch(pixels, words)]
        # random batches, as fit gives the CNN encoder (train.groups_by_length)
        batches = iter(train.training_pipeline(splits["train"], profile.batch_size, 0,
                                               group_by_length=False))
        rates, trained, done = [], 0.0, 0
        for minutes in mode.quality_minutes:
            while trained < 60 * minutes:
                x, c = next(batches)
                c = c.numpy()
                started = time.perf_counter()
                step(x, c).numpy()
                trained += time.perf_counter() - started
                done += 1
            captions = caption(val.pixels[:count])
            rates.append(evaluation.caption_rates(captions, val.scenes[:count])["all"]["exact"])
            print(f"  {name}: {minutes:g} min, {done} steps, exact {rates[-1]:.3f}", flush=True)
        results[name] = (rates, done)
    return [record(f"Shapes exact-caption rate after {minutes:g} min of training", "exact rate",
                   results["reference"][0][i], results["fast"][0][i], group="quality",
                   sizes="shapes-cpu")
            for i, minutes in enumerate(mode.quality_minutes)] + [
            record(f"training steps done in {mode.quality_minutes[-1]:g} min", "steps",
                   results["reference"][1], results["fast"][1], group="quality",
                   sizes="shapes-cpu")]


# --- running and reporting ------------------------------------------------------------------------


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def machine_info() -> dict:
    import keras
    import tensorflow as tf

    info = {"platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        info["gpu"] = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return info


def training_variants(mode: Mode, gpu: bool, sizes: Sizes) -> dict[str, dict]:
    """The fast-path settings timed against the reference: as ``fit`` runs it, without XLA, and
    in the full run with the other batching (random batches where fit groups them by length,
    grouped where it does not); on a GPU also with mixed precision."""
    if mode.name == "smoke":  # proves the code runs: XLA's compile would cost most of it
        return {"fast": {"jit": False}}
    variants = {"fast": {"jit": True}, "fast, no XLA": {"jit": False}}
    if mode.name == "full":
        other = "fast, random batches" if fit_groups(sizes) else "fast, grouped by length"
        variants[other] = {"jit": True, "grouped": not fit_groups(sizes)}
    if gpu:
        variants["fast, mixed precision"] = {"jit": True, "mixed_precision": True}
        variants["fast, mixed precision, no XLA"] = {"jit": False, "mixed_precision": True}
    return variants


def run_suite(mode: Mode, groups=GROUPS, log=print) -> dict:
    """Run ``groups`` of the suite in ``mode``; return ``{"run": ..., "records": [...]}``."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    started, load_start = time.time(), os.getloadavg()
    gpu = gpu_visible()
    # the machine's speed at the start of every run, whichever groups it holds: a lent machine
    # can be half as fast one day as another, and only this tells two runs' figures apart
    machine_gflops = matmul_gflops(mode.matmul_size, 3)
    records = []
    for group in groups:
        if group == "quality" and not mode.quality_minutes:
            log("quality: skipped (full mode only)")
            continue
        group_started = time.perf_counter()
        if group in ("training", "decoding"):
            for size in (mode.training_sizes if group == "training" else mode.decoding_sizes):
                if group == "training":
                    records += bench_training(SIZES[size], mode,
                                              training_variants(mode, gpu, SIZES[size]))
                else:
                    records += bench_decoding(SIZES[size], mode)
        else:
            records += globals()[f"bench_{group}"](mode)
        log(f"{group}: {time.perf_counter() - group_started:.0f} s")
    run = {"mode": mode.name, "device": "gpu" if gpu else "cpu",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "seconds": round(time.time() - started, 1),
           "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()],
           "matmul_gflops": round(machine_gflops, 1), "machine": machine_info(),
           "sizes": {name: SIZES[name].describe()
                     for name in sorted({*mode.training_sizes, *mode.decoding_sizes})}}
    return {"run": run, "records": records}


def to_json_list(result: dict) -> list[dict]:
    """The file format: a JSON list of records, each carrying the run's description."""
    return [{**item, "run": result["run"]} for item in result["records"]]


REQUIRED = {"name": str, "unit": str, "baseline": (int, float), "fast": (int, float),
            "ratio": (int, float, type(None))}


def check_records(records) -> None:
    """Raise ``ValueError`` unless ``records`` is a non-empty list of valid records."""
    if not isinstance(records, list) or not records:
        raise ValueError("results must be a non-empty JSON list of records")
    for item in records:
        for key, kind in REQUIRED.items():
            if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                raise ValueError(f"record {item.get('name')!r}: {key} must be {kind}")
        if item["ratio"] is not None and item["ratio"] < 0:
            raise ValueError(f"record {item['name']!r}: negative ratio")
        if "run" not in item or "machine" not in item["run"] or "date" not in item["run"]:
            raise ValueError(f"record {item['name']!r}: no run description (machine, date)")


def _number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and abs(value) < 1 and value != 0:
        return f"{value:.3f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def render_table(paths) -> str:
    """The README's tables, one per stored results file (sorted by name)."""
    blocks = []
    for path in sorted(pathlib.Path(p) for p in paths):
        records = json.loads(path.read_text())
        check_records(records)
        records.sort(key=lambda item: GROUPS.index(item["group"]))  # stable: order within groups
        runs = list({json.dumps(item["run"], sort_keys=True): item["run"] for item in records}
                    .values())
        lines = []
        for run in runs:
            machine = run["machine"]
            device = machine.get("gpu") or f"{machine['cpus']} CPU cores ({machine['processor']})"
            groups = sorted({item["group"] for item in records if item["run"] == run})
            lines.append(f"`results/{path.name}` ({', '.join(groups)}): {run['mode']} mode on "
                         f"{device}, TensorFlow {machine['tensorflow']}, {run['date'][:10]}, "
                         f"{run['seconds'] / 60:.1f} min; load average "
                         f"{run['load_average_start'][0]:.1f} at the start, "
                         f"{run['load_average_end'][0]:.1f} at the end"
                         + (f"; dense matmul at the start {run['matmul_gflops']:.0f} GFLOP/s."
                            if "matmul_gflops" in run else "."))
            lines.append("")
        lines += ["| benchmark | sizes | unit | baseline | fast path | ratio | goal |",
                 "|---|---|---|---|---|---|---|"]
        for item in records:
            goal = ""
            if "goal" in item:
                target = (f"{item['goal']:g}x" if item.get("goal_of", "ratio") == "ratio"
                          else f"fast path >= {item['goal']:g}")
                goal = f"{target}: " + ("met" if item["met"] else
                                        f"**missed** ({_shortfall(item)})")
            ratio = "—" if item["ratio"] is None else f"{item['ratio']:.2f}x"
            if item["group"] == "peak":
                ratio = ""
            lines.append(f"| {item['name']} | {item['sizes']} | {item['unit']} | "
                         f"{_number(item['baseline'])} | {_number(item['fast'])} | {ratio} | "
                         f"{goal} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _shortfall(item: dict) -> str:
    """How far a missed goal is: what was reached (the ratio, or the fast path's value) as a
    share of the goal."""
    reached = item["ratio"] if item.get("goal_of", "ratio") == "ratio" else item["fast"]
    if reached is None:
        return "no ratio"
    return f"{reached / item['goal']:.1%} of the goal"


TABLE_START = "<!-- suite table: generated by `python -m benchmarks --update-readme` -->"
TABLE_END = "<!-- end of suite table -->"


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the two table markers replaced by ``table``."""
    from .results_table import readme_with_table as with_block

    return with_block(readme, f"\n{table}\n", TABLE_START, TABLE_END)


# --- what the results say (benchmarks/README.md) --------------------------------------------------

FINDINGS_START = "<!-- suite findings: generated by `python -m benchmarks --update-readme` -->"
FINDINGS_END = "<!-- end of suite findings -->"


def _goal(item: dict) -> str:
    if "goal" not in item:
        return ""
    target = (f"at least {item['goal']:g}x" if item.get("goal_of", "ratio") == "ratio"
              else f"at least {item['goal']:g} of the peak")
    return f"{target}: " + ("met" if item["met"] else f"**missed** ({_shortfall(item)})")


def findings(records: list[dict]) -> str:
    """The README's reading of a full run's records: every figure in it is taken from them."""
    by_name = {(item["sizes"], item["name"]): item for item in records}

    def find(sizes: str, name: str) -> dict | None:
        return by_name.get((sizes, name))

    lines = []
    vs_tutorial = "vs the tutorial's train_step"
    grouped = find("tutorial", f"training step {vs_tutorial}: time")
    if grouped:
        random = find("tutorial", f"training step (fast, random batches) {vs_tutorial}: time")
        no_xla = find("tutorial", f"training step (fast, no XLA) {vs_tutorial}: time")
        spent = find("tutorial", f"training step {vs_tutorial}: achieved FLOP/s over matmul peak")
        useful = find("tutorial", f"training step {vs_tutorial}: useful FLOP/s over matmul peak")
        d_time, d_spent, d_useful = grouped["detail"], spent["detail"], useful["detail"]
        text = (f"- **Training, the tutorial's `train_step` against the book's step as `fit` runs "
                f"it: {grouped['ratio']:.2f}x** ({_goal(grouped)}")
        if no_xla:
            text += f"; {no_xla['ratio']:.2f}x without XLA"
        text += (f"). The tutorial's step spends {d_spent['gflop_per_step_baseline']:.0f} GFLOP, "
                 f"the book's {d_spent['gflop_per_step_fast']:.0f}: the tutorial projects the 64 "
                 f"regions again at each of its {d_time['positions_baseline'] - 1:.0f} steps and "
                 f"runs every step of captions padded to {d_time['positions_baseline']:.0f} "
                 "positions, where the book projects them once, applies the output layer once "
                 f"to all positions, and cuts each grouped batch after its longest caption "
                 f"({d_time['positions_fast']:.1f} positions on average). The two compute at "
                 f"{spent['baseline']:.2f} and {spent['fast']:.2f} of the machine's matrix-"
                 "multiply speed, so the gain is work avoided, not faster arithmetic.")
        lines.append(text)
        if random:
            r_spent = find("tutorial", "training step (fast, random batches) "
                           f"{vs_tutorial}: achieved FLOP/s over matmul peak")
            bound = (r_spent["detail"]["gflop_per_step_baseline"]
                     / r_spent["detail"]["gflop_per_step_fast"])
            lines.append(
                f"- **With random batches the same step is {random['ratio']:.2f}x the "
                f"tutorial's.** A random batch of 64 nearly always holds one long caption, so "
                f"it is not trimmed ({random['detail']['positions_fast']:.0f} positions); what "
                "is left of the gain is the keys projected once and the output layer applied "
                f"once. The FLOP counts bound it: the tutorial spends {bound:.1f}x the FLOPs of "
                "an untrimmed step of the book's, so even at equal efficiency random batches "
                + ("could not reach 3x." if bound < 3 else "could reach 3x only at the "
                   "tutorial's efficiency or better."))
        lines.append(
            f"- **Useful work, with grouping: {useful['fast']:.3f} of the peak** "
            f"({_goal(useful)}; the tutorial: {useful['baseline']:.3f}). "
            f"{d_useful['useful_share_of_spent_fast']:.0%} of the FLOPs the book's step spends "
            "are needed by real tokens (the rest is the padding left inside each trimmed batch, "
            "whose length is rounded up to a multiple of 4 so that few graphs are compiled; "
            "multiples of 2 would about halve that padding and double the graphs), "
            f"against {d_useful['useful_share_of_spent_baseline']:.0%} for the tutorial. The "
            f"step computes at {spent['fast']:.2f} of the peak; what it does not spend in large "
            "matrix products goes to work that is not one (the softmax over 5000 words and its "
            "gradient, the LSTM's gates, the attention's tanh and softmax, Adam's update of "
            "every weight) and to the per-step products, whose 64 rows are too few to reach "
            "the matrix-multiply speed.")
    for sizes in ("tutorial", "shapes-cpu"):
        batch = SIZES[sizes].batch
        eager = find(sizes, f"batched greedy ({batch} images) vs the tutorial's eager evaluate")
        beam_eager = find(sizes,
                          f"batched beam 3 ({batch} images) vs the tutorial's eager evaluate")
        compiled = find(sizes, f"batched greedy ({batch} images) vs one compiled image step "
                               "at a time")
        beam = find(sizes, f"batched beam 3 ({batch} images) vs one compiled image step at "
                           "a time")
        if not compiled:
            continue
        text = f"- **Decoding at the {sizes} sizes:** batched greedy is "
        if eager:
            text += (f"{eager['ratio']:.0f}x the tutorial's eager `evaluate` "
                     f"({_goal(eager)}) and beam 3 {beam_eager['ratio']:.1f}x "
                     f"({_goal(beam_eager)}); against one compiled image step at a time, "
                     f"{compiled['ratio']:.1f}x ({_goal(compiled)}) and "
                     f"{beam['ratio']:.1f}x ({_goal(beam)}). Compiling the one-image step "
                     f"alone is worth {compiled['baseline'] / eager['baseline']:.1f}x: eager "
                     "mode sends every operation of every step from Python, and the tutorial "
                     "draws each word and looks it up as text along the way.")
        else:
            text += (f"{compiled['ratio']:.1f}x one compiled image step at a time "
                     f"({_goal(compiled)}) and beam 3 {beam['ratio']:.1f}x ({_goal(beam)}).")
        lines.append(text)
    size = next((item for item in records if item["name"].startswith("feature cache size")),
                None)
    reading = next((item for item in records
                    if item["name"].startswith("reading cached features")), None)
    if size and reading:
        lines.append(f"- **Feature cache**: float16 shards take {size['ratio']:.2f}x fewer bytes "
                     f"than one float32 `.npy` per image ({_goal(size)}), and read back "
                     f"{reading['ratio']:.1f}x faster ({reading['sizes']}).")
    waiting = next((item for item in records
                    if item["name"] == "share of the step spent waiting for data"), None)
    if waiting:
        lines.append(f"- **Input pipeline** at the {waiting['sizes']} sizes: training waits for "
                     f"data {waiting['fast']:.0%} of a step with the book's pipeline and "
                     f"{waiting['baseline']:.0%} with the tutorial-style one: decoding a batch "
                     "of small PNG files takes milliseconds beside a step on a CPU; it matters "
                     "where steps are short (a GPU) or images are large photographs.")
    quality = [item for item in records if item["group"] == "quality"
               and item["unit"] == "exact rate"]
    if quality:
        rates = ", ".join(f"{item['baseline']:.2f} and {item['fast']:.2f}" for item in quality)
        run, peak = quality[0]["run"], next((item for item in records
                                             if item["group"] == "peak"), None)
        speed = ""
        if "matmul_gflops" in run and peak and peak["run"] != run:
            speed = (f"; its machine multiplied matrices at {run['matmul_gflops']:.0f} GFLOP/s, "
                     f"the peak group's at {peak['fast']:.0f}, so minutes are not comparable "
                     "across the two runs")
        lines.append(f"- **Quality per minute** on Shapes (run of {run['date'][:10]}{speed}"
                     f"): the compiled reference and the book's model reach exact-caption rates "
                     f"of {rates} after the times in the table: at the `cpu` sizes the CNN "
                     "encoder, which no decoder fix touches, is most of a step.")
    return "\n".join(lines) + "\n"


def with_findings(readme: str, paths) -> str:
    """``readme`` with the findings block rewritten from the first full-mode CPU results file."""
    full = [pathlib.Path(p) for p in paths if pathlib.Path(p).name.endswith("-full.json")
            and "cpu" in pathlib.Path(p).name]
    from .results_table import readme_with_table as with_block

    block = (findings(json.loads(full[0].read_text())) if full
             else "No full run is stored: run `make bench`.\n")
    return with_block(readme, f"\n{block}\n", FINDINGS_START, FINDINGS_END)
