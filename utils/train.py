"""Training: the input pipeline, the optimiser, and a callback that scores real captions.

Validation by teacher-forced loss alone can mislead: the model is asked to caption, so after each
epoch :class:`CaptionScore` decodes validation images greedily and scores the captions (BLEU-4,
and on Shapes the exact-caption rate). The best epoch by that score is kept.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import json
import os
import pathlib
import shutil
import sys
import time

import keras
import numpy as np
from keras import ops

try:  # tf.data, distribution strategies and TPUs; the JAX and PyTorch backends go without
    import tensorflow as tf
except ImportError:
    tf = None

from . import datasets
from .datasets import EncodedSplit
from .decoding import caption_images  # noqa: F401  (the chapters call train.caption_images)
from .text import Vocabulary

RUN_INFO = "run.json"

#: Chapter 6 trains the Show and Tell and hard-attention decoders of chapter 5 for this many
#: epochs (as ``06_<decoder>``) and compares them with the soft model at this epoch.
COMPARISON_EPOCHS = 3


#: With ``group_by_length``, examples are sorted by caption length within chunks of this many
#: batches: long enough that each chunk holds every length, short enough to stay random.
LENGTH_GROUP_BATCHES = 16


def training_pipeline(split: EncodedSplit, batch_size: int, seed: int = 0, *,
                      steps_per_epoch: int | None = None, first_epoch: int = 0,
                      group_by_length: bool = False) -> tf.data.Dataset:
    """Endless ``(images, captions)`` batches, ``steps_per_epoch`` of them per epoch (default:
    one pass), starting at epoch ``first_epoch``.

    Epoch ``e`` visits the images in an order, and picks for each image one of its reference
    captions, that depend only on ``(seed, e)``. So a run resumed at epoch ``e`` sees exactly the
    batches the uninterrupted run saw, and ends with the same weights.

    With ``group_by_length`` each batch holds captions of about one length: the shuffled
    examples are sorted by length within chunks of :data:`LENGTH_GROUP_BATCHES` batches, cut
    into batches, and the batches shuffled. Training trims every batch to its longest caption
    (``FastCaptioner.train_step``), so little time is spent on padding. ``fit`` decides with
    :func:`groups_by_length`.

    ``split.pixels`` in memory become one constant of the pipeline. Cached features on disk
    (:class:`utils.features.CachedFeatures`) are read batch by batch instead, while earlier
    batches train (``prefetch``): only the order, 4 bytes per image, is held for a whole epoch,
    so memory does not grow with the number of images, and the shuffle is over the whole split,
    not within a buffer.
    """
    count, references = len(split), split.captions.shape[1]
    steps = steps_per_epoch or count // batch_size
    examples = steps * batch_size
    captions = tf.constant(split.captions)
    if isinstance(split.pixels, np.ndarray):
        pixels = tf.constant(split.pixels)
        read_rows = functools.partial(tf.gather, pixels)
    else:  # features on disk (utils.features.CachedFeatures): read as each batch needs them
        read_rows = split.pixels.read_tensor

    def epoch_batches(epoch):
        seeds = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=seeds)
        picks = tf.random.stateless_uniform([count], seed=seeds + [1, 0], maxval=references,
                                            dtype=tf.int32)
        # More steps than one pass: the same order again, as Dataset.repeat() would give.
        repeats = -(-examples // count)
        order, picks = tf.tile(order, [repeats])[:examples], tf.tile(picks, [repeats])[:examples]
        if group_by_length:
            picked = tf.gather_nd(captions, tf.stack([order, picks], axis=-1))
            lengths = tf.reduce_sum(tf.cast(picked != 0, tf.int32), axis=1)
            chunk = tf.range(examples) // (batch_size * LENGTH_GROUP_BATCHES)
            by_length = tf.argsort(chunk * (captions.shape[-1] + 1) + lengths, stable=True)
            order, picks = tf.gather(order, by_length), tf.gather(picks, by_length)
        order = tf.reshape(order, [steps, batch_size])
        picks = tf.reshape(picks, [steps, batch_size])
        if group_by_length:
            shuffled = tf.random.experimental.stateless_shuffle(tf.range(steps),
                                                                seed=seeds + [2, 0])
            order, picks = tf.gather(order, shuffled), tf.gather(picks, shuffled)
        return tf.data.Dataset.from_tensor_slices((order, picks))

    def gather(rows, picks):
        return read_rows(rows), tf.gather_nd(captions, tf.stack([rows, picks], axis=-1))

    batches = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_batches)
    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)


class CaptionBatches(keras.utils.PyDataset):
    """The batches of :func:`training_pipeline` without TensorFlow, for the JAX and PyTorch
    backends: ``(images, captions)`` NumPy batches, ``steps_per_epoch`` per epoch, starting at
    ``first_epoch``.

    The same guarantee: epoch ``e``'s order, and the reference picked for each image, depend
    only on ``(seed, e)`` (NumPy's generator seeded with both), so a resumed run sees the batches
    the uninterrupted run saw. (The orders are not those of the ``tf.data`` pipeline, whose
    random ops NumPy does not reproduce.) Keras calls :meth:`on_epoch_end` after each epoch.
    Rows of features on disk (:class:`utils.features.CachedFeatures`) are read batch by batch.
    """

    def __init__(self, split: EncodedSplit, batch_size: int, seed: int = 0, *,
                 steps_per_epoch: int | None = None, first_epoch: int = 0):
        super().__init__()
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.steps = steps_per_epoch or len(split) // batch_size
        self.epoch = first_epoch
        self._order = self._epoch_order(first_epoch)

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s ``(rows, picks)``, ``int[steps, batch_size]`` each."""
        count, references = len(self.split), self.split.captions.shape[1]
        generator = np.random.default_rng([self.seed, epoch])
        order = generator.permutation(count)
        picks = generator.integers(references, size=count)
        examples = self.steps * self.batch_size
        repeats = -(-examples // count)  # more steps than one pass: the same order again
        shape = (self.steps, self.batch_size)
        return (np.tile(order, repeats)[:examples].reshape(shape),
                np.tile(picks, repeats)[:examples].reshape(shape))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows, picks = self._order[0][index], self._order[1][index]
        return np.asarray(self.split.pixels[rows]), self.split.captions[rows, picks]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._epoch_order(self.epoch)


class ValidationBatches(keras.utils.PyDataset):
    """:func:`validation_pipeline` without TensorFlow: every image once, in order, with its
    first reference."""

    def __init__(self, split: EncodedSplit, batch_size: int):
        super().__init__()
        self.split, self.batch_size = split, batch_size

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return np.asarray(self.split.pixels[rows]), self.split.captions[rows, 0]


def groups_by_length(model, profile) -> bool:
    """Whether ``fit`` groups ``model``'s training batches by caption length: as
    ``profile.group_by_length`` says, and when that is ``None``, unless the encoder trains batch
    normalisation (the small CNN does; cached features and backbones, whose batch
    normalisation runs in inference mode, do not).

    Batch normalisation normalises with the statistics of the batch it is in. Grouped by length,
    a batch holds captions of one length, and on Shapes that means scenes with one number of
    objects, so those statistics tell the network what kind of scene the batch holds, a hint
    that is gone at test time, where the running averages over all scenes are used. Measured on
    the ``cpu`` profile (``benchmarks/grouping.py``): grouped, the validation loss rises after a
    few epochs and the exact-caption rate ends well below that of random batches.
    """
    if profile.group_by_length is not None:
        return profile.group_by_length
    return not getattr(model.encoder, "trains_batch_norm", False)


def _resumed_epoch(backup_dir: pathlib.Path) -> int:
    """The epoch a run continues from: what BackupAndRestore recorded, else 0."""
    try:
        return int(json.loads((backup_dir / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def validation_pipeline(split: EncodedSplit, batch_size: int) -> tf.data.Dataset:
    """Every image once, with its first reference, for the teacher-forced validation loss."""
    if isinstance(split.pixels, np.ndarray):
        data = (split.pixels, split.captions[:, 0])
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size).prefetch(
            tf.data.AUTOTUNE)
    first = tf.constant(split.captions[:, 0])  # features on disk: read batch by batch

    def read(rows):
        return split.pixels.read_tensor(rows), tf.gather(first, rows)

    batches = tf.data.Dataset.range(len(split)).batch(batch_size)
    return batches.map(read, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)


def prepare_with_features(records, profile, *, backbone: str = "inception_v3",
                          weights: str | None = "imagenet", min_count: int = 5, model=None,
                          cache_dir: str | pathlib.Path | None = None, in_memory: bool = False,
                          ) -> tuple[Vocabulary, dict[str, EncodedSplit]]:
    """A real dataset (``records``: a :class:`utils.datasets.CaptionDataset`, e.g. from
    ``load_dataset("flickr8k")``) ready for a captioner with ``encoder="features"``.

    Every image goes through ``backbone`` once; its ``[R, C]`` features are cached as float16
    under ``cache_dir`` (default ``data_root()/features/<dataset>``), so a second call, or one
    after an interruption, computes only what is missing. Words seen fewer than ``min_count``
    times in the training captions become ``<unk>``. Returns the vocabulary and the
    ``train``/``val``/``test`` splits with features in place of pixels: on disk
    (:class:`utils.features.CachedFeatures`, read batch by batch as training and captioning
    need them), or loaded into memory with ``in_memory`` (faster only where they fit twice:
    ``benchmarks/streaming.py`` measures both).
    """
    from . import features

    cache_dir = cache_dir or datasets.data_root() / "features" / records.name
    cache = features.extract_features(backbone, [r.path for r in records],
                                      [r.path.name for r in records], cache_dir,
                                      weights=weights, model=model)
    training = records.split("train")
    vocabulary = Vocabulary.from_captions((c for r in training for c in r.captions),
                                          min_count=min_count)
    length = profile.max_caption_tokens + 2
    splits = {}
    for name in ("train", "val", "test"):
        chosen = records.split(name)
        rows = features.CachedFeatures(cache, [record.path.name for record in chosen])
        splits[name] = datasets.encode_split(chosen, vocabulary, length, name,
                                             pixels=np.asarray(rows) if in_memory else rows)
    return vocabulary, splits


def relation_preference(model, split: EncodedSplit, vocabulary, batch_size: int = 250) -> dict:
    """How often the model finds a true relation caption more likely than its mirror image
    (:func:`utils.evaluation.relation_pairs`: "left of" swapped for "right of", "above" for
    "below"), scored by teacher-forced log-likelihood. 0.5 is what a model blind to where
    things are would get. Returns ``{"pairs": count, "preference": share, "margin": mean
    log-likelihood difference}``. Shapes only (it needs the true scenes)."""
    from .captioner import caption_log_likelihood
    from .evaluation import relation_pairs

    pairs = relation_pairs(split.references, split.scenes)
    if not pairs:
        return {"pairs": 0, "preference": float("nan"), "margin": float("nan")}
    length = split.captions.shape[-1]
    rows = np.array([index for index, _, _ in pairs])
    encoded = {side: np.array([vocabulary.encode(pair[side].split(), length) for pair in pairs],
                              np.int32) for side in (1, 2)}
    differences = []
    for start in range(0, len(pairs), batch_size):
        chunk = slice(start, start + batch_size)
        images = split.pixels[rows[chunk]]
        true, swapped = (
            ops.convert_to_numpy(caption_log_likelihood(model, images, encoded[side][chunk]))
            for side in (1, 2))
        differences.append(true - swapped)
    differences = np.concatenate(differences)
    return {"pairs": len(pairs), "preference": float(np.mean(differences > 0)),
            "margin": float(np.mean(differences))}


class CaptionScore(keras.callbacks.Callback):
    """After each epoch: caption ``count`` validation images and log ``val_bleu4``,
    ``val_cider`` (CIDEr-D) and, on Shapes, ``val_exact``; save the weights whenever the score
    that picks the model (``val_exact`` on Shapes, else ``val_cider``) is the best so far.

    With ``patience``, training stops once that many epochs have passed without a new best
    (early stopping). The best score and its epoch are stored beside the weights, so a resumed
    run keeps counting from where the interrupted one was.
    """

    def __init__(self, split: EncodedSplit, vocabulary, max_length: int, count: int,
                 best_path: str | pathlib.Path, patience: int | None = None):
        super().__init__()
        self.split, self.vocabulary, self.max_length = split, vocabulary, max_length
        self.count = min(count, len(split))
        self.best_path = pathlib.Path(best_path)
        self.key = "val_exact" if split.scenes is not None else "val_cider"
        self.patience = patience
        self.state_path = self.best_path.with_suffix(".json")
        state = (json.loads(self.state_path.read_text()) if self.state_path.exists()
                 else {"best": -1.0, "epoch": 0})
        self.best, self.best_epoch = state["best"], state["epoch"]
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        from .evaluation import score_split

        scores = score_split(self.model, self.split, self.vocabulary, self.max_length,
                             count=self.count, metrics=["Bleu_4", "CIDEr"]).report
        logs = logs if logs is not None else {}
        logs["val_bleu4"], logs["val_cider"] = scores["Bleu_4"], scores["CIDEr"]
        if "exact" in scores:
            logs["val_exact"] = scores["exact"]
        if logs[self.key] > self.best:
            self.best, self.best_epoch = logs[self.key], epoch + 1
            # Weights first, then the score: a crash in between leaves an older score, never a
            # score that claims weights which were not written.
            self.model.save_weights(self.best_path)
            self.state_path.write_text(json.dumps({"best": self.best, "epoch": self.best_epoch}))
        print(f" - {self.key}: {logs[self.key]:.3f} (best {self.best:.3f} at epoch {self.best_epoch})")
        if self.patience is not None and epoch + 1 - self.best_epoch >= self.patience:
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True
            print(f" - early stop: no better {self.key} for {self.patience} epochs")


class RandomStateBackup(keras.callbacks.Callback):
    """Saves and restores the random-number state of dropout layers beside BackupAndRestore.

    Keras' weight files leave out the ``SeedGenerator`` states that drive dropout, so a resumed
    run would draw other dropout masks and end with other weights. The states are kept with the
    epoch they belong to and restored only when BackupAndRestore resumes that same epoch. On the
    PyTorch backend, dropout layers made without a seed of their own draw from PyTorch's global
    generators instead, so their states are kept too.
    """

    def __init__(self, backup_dir: str | pathlib.Path):
        super().__init__()
        self.path = pathlib.Path(backup_dir) / "random_state.npz"
        self._torch_pending = None  # PyTorch's generator states, set at the first batch

    def _states(self):
        weights = {id(w) for w in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    @staticmethod
    def _torch_generators() -> dict[str, np.ndarray]:
        if keras.backend.backend() != "torch":
            return {}
        import torch

        states = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            states |= {f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        return {name: state.numpy() for name, state in states.items()}

    def on_train_begin(self, logs=None):
        resumed = _resumed_epoch(self.path.parent)
        if resumed and self.path.exists():
            with np.load(self.path, allow_pickle=False) as saved:
                if int(saved["epoch"]) == resumed:
                    for variable, value in zip(self._states(), saved["states"], strict=True):
                        variable.assign(value)
                    self._torch_pending = {name: saved[name] for name in saved.files
                                           if name.startswith("torch_")}

    def on_train_batch_begin(self, batch, logs=None):
        # Set at the first batch, not at on_train_begin: Keras' PyTorch data loader draws its own
        # seed from the global generator when its iterator is made at the start of ``fit``.
        if self._torch_pending:
            import torch

            for name, state in self._torch_pending.items():
                if name == "torch_cpu":
                    torch.set_rng_state(torch.from_numpy(state))
                else:
                    torch.cuda.set_rng_state(torch.from_numpy(state), int(name.rsplit("_", 1)[1]))
            self._torch_pending = None

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        variables = self._states()
        states = (np.stack([ops.convert_to_numpy(v) for v in variables]) if variables
                  else np.zeros((0,)))
        partial = self.path.with_name("random_state.partial.npz")
        np.savez(partial, epoch=epoch + 1, states=states, **self._torch_generators())
        partial.replace(self.path)


def distribution_strategy() -> tf.distribute.Strategy:
    """The strategy to build and train under: the TPU on a Colab TPU runtime, all GPUs with
    ``MirroredStrategy`` when there are several, else TensorFlow's default (one device).

    Create the model and compile it inside ``strategy.scope()``; ``fit`` then splits every batch
    across the replicas and sums their gradients. A TPU that is found but cannot be started is
    reported with a ``warning:`` line, and training goes on without it.
    """
    tpu = tpu_resolver()
    if tpu is not None:
        try:
            tf.config.experimental_connect_to_cluster(tpu)
            tf.tpu.experimental.initialize_tpu_system(tpu)
            return tf.distribute.TPUStrategy(tpu)
        except (tf.errors.OpError, ValueError, RuntimeError) as error:
            problem = " ".join(str(error).split())[:300]
            _warn(f"a TPU was found but could not be started ({problem}); training without it")
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


#: Where a TPU VM's chips appear: ``/dev/accel<n>`` (TPU v2 to v4) and ``/dev/vfio/<n>`` (v5e
#: and later). Current Colab TPU runtimes are TPU VMs.
TPU_DEVICE_FILES = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def tpu_resolver():
    """A ``TPUClusterResolver`` for this machine's TPU, or ``None`` when it has none.

    On a TPU VM (current Colab TPU runtimes, Cloud TPU VMs), whose chips are attached to this
    machine, TensorFlow's TPU guide connects with ``TPUClusterResolver(tpu="local")``. Older
    runtimes that reach a TPU over the network name it in ``TPU_NAME`` (Kaggle; the resolver
    reads it itself) or ``COLAB_TPU_ADDR`` (Colab's retired TPU nodes; passed as its address).
    """
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver
    if os.environ.get("TPU_NAME"):
        return resolver()
    if os.environ.get("COLAB_TPU_ADDR"):
        return resolver(tpu=f"grpc://{os.environ['COLAB_TPU_ADDR']}")
    if any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES):
        return resolver(tpu="local")
    return None


def compile_for_training(model, profile, steps_per_epoch: int) -> None:
    """The model's Adam (:func:`utils.backbones.make_optimizer`) with a cosine-decayed learning
    rate and gradient-norm clipping."""
    from .backbones import make_optimizer

    total_steps = max(profile.epochs * steps_per_epoch, 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        profile.learning_rate, decay_steps=total_steps,
        alpha=profile.final_learning_rate / profile.learning_rate)
    model.compile(optimizer=make_optimizer(model, schedule, clipnorm=5.0))


HISTORY = "history.csv"


def fit(model, train: EncodedSplit, val: EncodedSplit, vocabulary, profile,
        run_dir: str | pathlib.Path, seed: int = 0, verbose: int | str = "auto",
        callbacks: list | tuple = ()):
    """Train ``model`` as the profile says, then load the best epoch's weights.

    ``run_dir`` keeps the best weights, a backup of the latest epoch and the per-epoch logs
    (``history.csv``): a run that was killed continues from its last finished epoch when the
    same call is made again, and the returned ``History`` holds every epoch, those before the
    interruption included. An unreadable checkpoint is reported with a ``warning:`` line on
    stderr, and what is done instead is said there too (see :func:`_check_checkpoints`).
    ``callbacks`` are added to the book's own (e.g. TensorBoard).
    """
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not model.built:  # BackupAndRestore needs the weights to exist before fit
        model((train.pixels[:1], train.captions[:1, 0, :-1]))
    steps = profile.steps_per_epoch or len(train) // profile.batch_size
    # tf.data pipelines on TensorFlow; NumPy batches on JAX and PyTorch, where FastCaptioner does
    # not trim batches, the reason to group them.
    on_tensorflow = keras.backend.backend() == "tensorflow"
    grouped = groups_by_length(model, profile) and on_tensorflow
    model.trim_batches = grouped  # see FastCaptioner.trim_batches
    compile_for_training(model, profile, steps)
    best_path = run_dir / "best.weights.h5"
    if (run_dir / "backup").exists():
        _check_checkpoints(run_dir)  # may fall back to an earlier backup, or drop it
    if not (run_dir / "backup").exists():
        # A fresh run: the best weights and logs of an earlier, finished run must not count.
        for stale in (best_path, best_path.with_suffix(".json"), run_dir / HISTORY):
            stale.unlink(missing_ok=True)
    first_epoch = _resumed_epoch(run_dir / "backup")
    callbacks = [
        # double_checkpoint keeps the previous backup until the new one is complete, so a crash
        # while saving leaves a usable checkpoint.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        RandomStateBackup(run_dir / "backup"),
        CaptionScore(val, vocabulary, max_length=profile.max_caption_tokens + 1,
                     count=profile.eval_images, best_path=best_path, patience=profile.patience),
        # after CaptionScore, so the validation scores are in the logs it writes
        keras.callbacks.CSVLogger(str(run_dir / HISTORY), append=True),
        *callbacks,
    ]
    if on_tensorflow:
        batches = training_pipeline(train, profile.batch_size, seed, steps_per_epoch=steps,
                                    first_epoch=first_epoch, group_by_length=grouped)
        validation = validation_pipeline(val, profile.batch_size)
    else:
        batches = CaptionBatches(train, profile.batch_size, seed, steps_per_epoch=steps,
                                 first_epoch=first_epoch)
        validation = ValidationBatches(val, profile.batch_size)
    history = model.fit(
        batches, steps_per_epoch=steps, epochs=profile.epochs,
        shuffle=False,  # the batches are shuffled already
        validation_data=validation, callbacks=callbacks, verbose=verbose)
    history.history = read_history(run_dir)
    model.load_weights(best_path)
    # Written last: its presence says the run finished and which settings and words it used.
    info = {"profile": dataclasses.asdict(profile), "words": vocabulary.words}
    (run_dir / RUN_INFO).write_text(json.dumps(info))
    return history


def _check_checkpoints(run_dir: pathlib.Path) -> None:
    """Make the files a run continues from agree, saying on stderr what is changed and why.

    An unreadable ``backup/latest.weights.h5`` (cut short by a full disk, say) is replaced by
    the previous backup that BackupAndRestore keeps beside it, or the backup is dropped when that
    one is unreadable too (the run then starts over). Best weights that are unreadable, or that
    belong to an epoch that runs again, are dropped (the best epoch is then chosen among the
    epochs still to run), and so are the ``history.csv`` rows of epochs that run again.
    """
    backup_dir = run_dir / "backup"
    latest = backup_dir / "latest.weights.h5"
    problem = _weights_problem(latest)
    if problem is not None:
        _fall_back(backup_dir, latest, problem)
        if not backup_dir.exists():
            return  # starting over: fit drops the best weights and history of the old run
    resumed = _resumed_epoch(backup_dir)
    _check_best_weights(run_dir / "best.weights.h5", resumed)
    _drop_history_from(run_dir / HISTORY, resumed)


def _fall_back(backup_dir: pathlib.Path, latest: pathlib.Path, problem: str) -> None:
    """Replace the unreadable ``latest`` checkpoint by the one before it, else drop the backup."""
    metadata = backup_dir / "training_metadata.json"
    previous, previous_metadata = (p.with_name(p.name + ".bkp") for p in (latest, metadata))
    if previous_metadata.is_file() and _weights_problem(previous) is None:
        os.replace(previous, latest)
        os.replace(previous_metadata, metadata)
        _warn(f"{latest} is unreadable ({problem}); resuming after epoch "
              f"{_resumed_epoch(backup_dir)} from the backup before it instead")
    else:
        shutil.rmtree(backup_dir)
        _warn(f"{latest} is unreadable ({problem}) and no earlier backup is readable; starting "
              "the run over from epoch 1 instead")


def _check_best_weights(best_path: pathlib.Path, resumed: int) -> None:
    """Drop the best weights (and their score) when they cannot be loaded at the end of the run
    or belong to an epoch after ``resumed``, which runs again."""
    if not best_path.exists():
        return
    state_path = best_path.with_suffix(".json")
    try:
        best_epoch = int(json.loads(state_path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        best_epoch = None
    problem = _weights_problem(best_path)
    if problem is not None:
        reason = f"{best_path} is unreadable ({problem})"
    elif best_epoch is None:
        reason = f"{state_path}, the score of {best_path.name}, is missing or unreadable"
    elif best_epoch > resumed:
        reason = f"{best_path} holds epoch {best_epoch}, which runs again"
    else:
        return
    best_path.unlink()
    state_path.unlink(missing_ok=True)
    _warn(f"{reason}; the best epoch is chosen again from epoch {resumed + 1} on")


def _drop_history_from(history_path: pathlib.Path, epoch: int) -> None:
    """Remove the rows of epochs ``epoch`` (0-based, as CSVLogger counts) and later, which run
    again and will be logged again."""
    if not history_path.exists():
        return
    with history_path.open(newline="") as file:
        table = list(csv.reader(file))
    kept = table[:1] + [row for row in table[1:] if row and int(row[0]) < epoch]
    if len(kept) < len(table):
        partial = history_path.with_name(f".{history_path.name}.partial")
        with partial.open("w", newline="") as file:
            csv.writer(file).writerows(kept)
        os.replace(partial, history_path)


def _weights_problem(path: pathlib.Path) -> str | None:
    """Why the Keras weights file ``path`` cannot be read back, or None. Every array is read,
    since a file cut short may still open."""
    import h5py

    def read(name, item):
        if isinstance(item, h5py.Dataset):
            item[()]

    try:
        with h5py.File(path, "r") as weights:
            weights.visititems(read)
    except FileNotFoundError:
        return "it is missing"
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        return " ".join(str(error).split())
    return None


def _warn(message: str) -> None:
    """One ``warning:`` line on stderr, as the command line reports what it does instead."""
    print(f"warning: {message}", file=sys.stderr)


def read_history(run_dir: str | pathlib.Path) -> dict[str, list[float]]:
    """Every finished epoch's logs of the run in ``run_dir``, as ``History.history`` holds them
    (``{"loss": [...], "val_exact": [...], ...}``); empty before the first epoch ends."""
    path = pathlib.Path(run_dir) / HISTORY
    if not path.exists():
        return {}
    import csv

    with path.open(newline="") as rows:
        table = list(csv.DictReader(rows))
    return {key: [float(row[key]) for row in table] for key in (table[0] if table else {})
            if key != "epoch"}


SPLITS = ("train", "val", "test", "test_novel")


def prepare_shapes(profile, seed: int = 0) -> tuple[Vocabulary, dict[str, EncodedSplit]]:
    """Generate (or reuse) the Shapes dataset of ``profile``; return the vocabulary built from
    the training captions and every split encoded, as chapter 5 does step by step."""
    records = datasets.load_karpathy(datasets.shapes_dataset(profile, seed=seed))
    training = datasets.split(records, "train")
    vocabulary = Vocabulary.from_captions(c for r in training for c in r.captions)
    length = profile.max_caption_tokens + 2
    return vocabulary, {name: datasets.encode_split(datasets.split(records, name), vocabulary,
                                                    length, name) for name in SPLITS}


def load_finished_run(run_dir: str | pathlib.Path, profile, vocabulary: Vocabulary, **options):
    """The captioner a finished :func:`fit` left in ``run_dir``, or ``None`` when there is none
    or it was trained with other settings or another vocabulary. ``options`` are the
    :func:`utils.captioner.captioner_from_profile` options it was built with
    (``decoder="hard"``, ...)."""
    from .captioner import captioner_from_profile

    run_dir = pathlib.Path(run_dir)
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
    except (OSError, ValueError):
        return None
    settings = json.loads(json.dumps(dataclasses.asdict(profile)))  # tuples become lists, as stored
    if info.get("profile") != settings or info.get("words") != vocabulary.words:
        return None
    model = captioner_from_profile(profile, len(vocabulary), **options)
    size = profile.image_size
    model((np.zeros((1, size, size, 3), np.uint8), np.zeros((1, 1), np.int32)))
    try:
        model.load_weights(run_dir / "best.weights.h5")
    except (OSError, ValueError) as error:
        _warn(f"{run_dir / 'best.weights.h5'} is unreadable ({' '.join(str(error).split())}); "
              f"the finished run in {run_dir} cannot be loaded and is trained again from scratch")
        return None
    return model


def run_path(run_name: str, profile) -> pathlib.Path:
    """Where :func:`train_or_load` keeps the run ``run_name`` of ``profile``:
    ``runs/<run_name>-<profile>`` under the data folder."""
    return datasets.data_root() / "runs" / f"{run_name}-{profile.name}"


def train_or_load(profile, run_name: str = "05_implementation", seed: int = 0,
                  verbose: int | str = 2, **options):
    """A trained Shapes captioner for ``profile``: the one chapter 5 left behind in
    ``runs/<run_name>-<profile>`` if it matches, else a new one trained now. ``options`` go to
    :func:`utils.captioner.captioner_from_profile` (chapter 6 also trains ``decoder="show_and_tell"`` and
    ``"hard"`` as ``06_<decoder>`` for :data:`COMPARISON_EPOCHS` epochs). Returns ``(model, vocabulary, splits)``."""
    from .captioner import captioner_from_profile

    profile = profile.replace(dataset="shapes")  # as chapter 5 trains it, whatever BOOK_DATASET
    vocabulary, splits = prepare_shapes(profile, seed)
    run_dir = run_path(run_name, profile)
    model = load_finished_run(run_dir, profile, vocabulary, **options)
    if model is None:
        print(f"no finished run in {run_dir.name}: training one now")
        model = captioner_from_profile(profile, len(vocabulary), **options)
        fit(model, splits["train"], splits["val"], vocabulary, profile, run_dir, seed, verbose)
    else:
        print(f"loaded the captioner trained in {run_dir.name}")
    return model, vocabulary, splits


class StepTimes(keras.callbacks.Callback):
    """Wall-clock seconds of every training step of a ``fit``, to compare training steps. The
    first steps trace (and maybe compile) the step and are much slower: see :meth:`per_step`."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)

    def per_step(self, skip: int = 3) -> float:
        """The median seconds of a step, the first ``skip`` steps left out."""
        return float(np.median(self.seconds[skip:]))


def seconds_per_step(model, batches: tf.data.Dataset, steps: int = 20, skip: int = 3) -> float:
    """Train the compiled ``model`` for ``skip + steps`` steps on ``batches`` and return the
    median seconds of a step, the ``skip`` warm-up steps (tracing, compiling) left out. The
    model's weights change: time a copy, not a model you want to keep."""
    timer = StepTimes()
    model.fit(batches, steps_per_epoch=skip + steps, epochs=1, shuffle=False, verbose=0,
              callbacks=[timer])
    return timer.per_step(skip)
