"""Training plumbing on a tiny Shapes set: pipeline, scoring, best-epoch saving, resume."""
import pathlib
from typing import NamedTuple

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils import datasets, decoding, shapes, text, train  # noqa: E402
from utils.backbones import make_optimizer  # noqa: E402, F401
from utils.captioner import (build_captioner, caption_log_likelihood,  # noqa: E402
                             captioner_from_profile, greedy_decode)
from utils.profile import get_profile  # noqa: E402


#: Caption positions of the tiny set: long enough that caption lengths vary (the grouping tests).
LENGTH = 18
#: What the training tests train: the smoke profile cut to a few steps of a tiny model on
#: captions of at most six words (``SHORT_LENGTH`` positions), so that the graphs traced for
#: every ``fit`` stay small. XLA would take longer to compile than these steps take to run.
SHORT_LENGTH = 8
TINY_SIZES = dict(epochs=2, steps_per_epoch=2, batch_size=4, eval_images=4, jit_compile=False,
                  max_caption_tokens=SHORT_LENGTH - 2, cnn_filters=(8, 8, 16), embed_dim=8,
                  units=16, attention_units=8)


class Tiny(NamedTuple):
    encoded: dict  # "train", "val": 40 images' captions at LENGTH positions
    short: dict  # the same at SHORT_LENGTH positions, for training
    vocab: text.Vocabulary
    profile: object  # utils.profile.Profile with TINY_SIZES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    root = tmp_path_factory.mktemp("shapes")
    records = datasets.load_karpathy(shapes.write_dataset(root / "data", 40, seed=3))
    vocab = text.Vocabulary.from_captions(c for r in datasets.split(records, "train") for c in r.captions)

    def encoded(length):
        return {name: datasets.encode_split(datasets.split(records, name), vocab, length, name)
                for name in ("train", "val")}

    return Tiny(encoded(LENGTH), encoded(SHORT_LENGTH), vocab,
                get_profile("smoke").replace(**TINY_SIZES))


def test_pipeline_draws_one_reference_per_image_deterministically(tiny):
    encoded = tiny.encoded
    first = [b[1].numpy() for b in train.training_pipeline(encoded["train"], 4, seed=5).take(3)]
    again = [b[1].numpy() for b in train.training_pipeline(encoded["train"], 4, seed=5).take(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    images, captions = next(iter(train.training_pipeline(encoded["train"], 4)))
    assert images.shape == (4, 64, 64, 3) and images.dtype == tf.uint8
    assert captions.shape == (4, LENGTH) and (captions[:, 0].numpy() == 2).all()
    # every drawn caption is one of that image's references
    pixels = encoded["train"].pixels.reshape(len(encoded["train"]), -1)
    for image, caption in zip(images.numpy(), captions.numpy()):
        row = int(np.flatnonzero((pixels == image.reshape(-1)).all(axis=1))[0])
        assert any((caption == ref).all() for ref in encoded["train"].captions[row])


def _rows(split, images) -> list[int]:
    pixels = split.pixels.reshape(len(split), -1)
    return [int(np.flatnonzero((pixels == image.reshape(-1)).all(axis=1))[0]) for image in images]


def test_numpy_batches_give_each_epoch_an_order_of_its_own_that_a_resume_repeats(tiny):
    """CaptionBatches (JAX, PyTorch) keeps the guarantee of the tf.data pipeline: an epoch's
    batches depend only on the seed and the epoch, so a run resumed at epoch 2 sees what the
    uninterrupted run saw there; each epoch takes every image once, with one of its references;
    ValidationBatches gives every image once, in order, with its first reference."""
    split = tiny.encoded["train"]
    count = len(split)

    def epoch(batches):
        return [batches[i] for i in range(len(batches))]

    running = train.CaptionBatches(split, 4, seed=5, steps_per_epoch=count // 4)
    epochs = []
    for _ in range(3):
        epochs.append(epoch(running))
        running.on_epoch_end()  # as Keras calls it after each epoch
    resumed = epoch(train.CaptionBatches(split, 4, seed=5, steps_per_epoch=count // 4,
                                         first_epoch=2))
    for (x_run, y_run), (x_resumed, y_resumed) in zip(epochs[2], resumed, strict=True):
        np.testing.assert_array_equal(x_run, x_resumed)
        np.testing.assert_array_equal(y_run, y_resumed)
    orders = []
    for batches in epochs:
        rows = [row for images, _ in batches for row in _rows(split, images)]
        assert len(set(rows)) == len(rows) == count // 4 * 4  # no image twice
        for (images, captions), start in zip(batches, range(0, count, 4)):
            assert images.shape == (4, 64, 64, 3) and captions.shape == (4, LENGTH)
            for row, caption in zip(rows[start:start + 4], captions):
                assert any((caption == ref).all() for ref in split.captions[row])
        orders.append(rows)
    assert orders[0] != orders[1] != orders[2]
    other_seed = train.CaptionBatches(split, 4, seed=6, steps_per_epoch=count // 4)
    assert _rows(split, other_seed[0][0]) != orders[0][:4]
    # more steps than one pass over the images: the epoch's order again
    long = train.CaptionBatches(split, 4, seed=5, steps_per_epoch=count // 2)
    rows = [row for images, _ in epoch(long) for row in _rows(split, images)]
    assert sorted(rows[:count]) == list(range(count)) and rows[count:] == rows[:len(rows) - count]
    validation = train.ValidationBatches(split, 16)
    assert len(validation) == -(-count // 16)
    images = np.concatenate([validation[i][0] for i in range(len(validation))])
    captions = np.concatenate([validation[i][1] for i in range(len(validation))])
    np.testing.assert_array_equal(images, split.pixels)
    np.testing.assert_array_equal(captions, split.captions[:, 0])


def test_grouping_by_length_reorders_an_epoch_without_changing_it(tiny):
    encoded = tiny.encoded
    split = encoded["train"]
    steps = len(split) // 4

    def epoch(grouped):
        pipeline = train.training_pipeline(split, 4, seed=2, group_by_length=grouped)
        return [c.numpy() for _, c in pipeline.take(steps)]

    grouped, plain = epoch(True), epoch(False)
    assert sorted(map(bytes, np.concatenate(grouped))) == sorted(map(bytes, np.concatenate(plain)))
    # one chunk here (16 batches > one epoch): batches are runs of the length-sorted examples
    spans = sorted(((c != 0).sum(1).min(), (c != 0).sum(1).max()) for c in grouped)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))
    # and padding falls: the mean longest caption per batch is lower than with random batches
    assert (np.mean([(c != 0).sum(1).max() for c in grouped])
            < np.mean([(c != 0).sum(1).max() for c in plain]))
    # the batch order is still shuffled, and still the same for the same seed
    assert [b.tobytes() for b in grouped] == [b.tobytes() for b in epoch(True)]
    assert spans != [((c != 0).sum(1).min(), (c != 0).sum(1).max()) for c in grouped]


def test_fit_groups_by_length_only_where_no_batch_norm_trains(tiny):
    profile = tiny.profile
    cnn = build_captioner(12, filters=(8, 8, 16), embed_dim=8, units=16, attention_units=8)
    features = build_captioner(12, encoder="features", region_dim=8, embed_dim=8, units=16,
                         attention_units=8)
    assert profile.group_by_length is None  # automatic
    assert not train.groups_by_length(cnn, profile)
    assert train.groups_by_length(features, profile)
    assert train.groups_by_length(cnn, profile.replace(group_by_length=True))
    assert not train.groups_by_length(features, profile.replace(group_by_length=False))


def _features_on_disk(split, folder, regions=16, channels=8):
    """``split`` with random features in place of its pixels, as cached features on disk (shards
    of 8 images) and the same loaded in memory."""
    import dataclasses

    from utils import features

    settings = {"backbone": "shapes_cnn", "input_size": 64, "feature_shape": [regions, channels],
                "dtype": "float16", "weights": "random (test)"}
    cache = features.FeatureCache._create(folder / "shapes_cnn", settings)
    keys = [f"image_{i}.png" for i in range(len(split))]
    rows = np.random.default_rng(0).random((len(split), regions, channels)).astype(np.float16)
    for start in range(0, len(keys), 8):
        cache._append_shard(keys[start : start + 8], rows[start : start + 8])
    on_disk = features.CachedFeatures(features.FeatureCache(folder, "shapes_cnn"), keys)
    return (dataclasses.replace(split, pixels=on_disk),
            dataclasses.replace(split, pixels=np.asarray(on_disk)))


def test_training_streams_cached_features_exactly_as_from_memory(tiny, tmp_path):
    """Features read from disk batch by batch make the very batches (and so a resumed run's
    weights) and captions of the same features in memory. (Training one epoch from a cache on
    disk: ``test_fit_on_cached_backbone_features``.)"""
    train_disk, train_memory = _features_on_disk(tiny.short["train"], tmp_path / "train")
    val_disk, val_memory = _features_on_disk(tiny.short["val"], tmp_path / "val")
    assert not isinstance(train_disk.pixels, np.ndarray)
    for grouped in (False, True):
        streamed, loaded = (list(train.training_pipeline(split, 4, seed=1, first_epoch=1,
                                                         group_by_length=grouped).take(12))
                            for split in (train_disk, train_memory))
        for (x_disk, y_disk), (x_memory, y_memory) in zip(streamed, loaded, strict=True):
            assert x_disk.shape == (4, 16, 8) and x_disk.dtype == tf.float16
            np.testing.assert_array_equal(x_disk.numpy(), x_memory.numpy())
            np.testing.assert_array_equal(y_disk.numpy(), y_memory.numpy())
    for (x_disk, y_disk), (x_memory, y_memory) in zip(
            train.validation_pipeline(val_disk, 3), train.validation_pipeline(val_memory, 3),
            strict=True):
        np.testing.assert_array_equal(x_disk.numpy(), x_memory.numpy())
        np.testing.assert_array_equal(y_disk.numpy(), y_memory.numpy())

    keras.utils.set_random_seed(0)
    model = captioner_from_profile(tiny.profile, len(tiny.vocab), encoder="features",
                                   region_dim=8)
    model((val_memory.pixels[:1], np.full((1, 1), 2, np.int32)))  # its weights, before decoding
    # the same batch shapes on both sides: an untrained model's near-ties must round alike
    from_disk = decoding.caption_images(model, val_disk.pixels, tiny.vocab, 6, batch_size=2,
                                        count=3)
    in_memory = decoding.caption_images(model, val_memory.pixels[:3], tiny.vocab, 6,
                                        batch_size=2)
    assert from_disk[0] == in_memory[0] and len(from_disk[0]) == 3
    np.testing.assert_allclose(from_disk[1], in_memory[1], atol=1e-6)


def _decoded(captions):
    """A stand-in for decoding.caption_images that "decodes" the given captions, looking evenly
    at 64 regions."""
    def caption_images(model, pixels, *args, count=None, **kwargs):
        count = len(pixels) if count is None else min(count, len(pixels))
        return captions[:count], np.full((count, 7, 64), 1 / 64, np.float32)
    return caption_images


def test_scores_of_the_references_themselves_are_perfect(tiny, monkeypatch):
    from utils import evaluation

    val = tiny.encoded["val"]
    monkeypatch.setattr(decoding, "caption_images", _decoded([refs[0] for refs in val.references]))
    report = evaluation.score_split(None, val, tiny.vocab, 6,
                                    metrics=["Bleu_4", "CIDEr"]).report
    assert report["exact"] == 1.0 and report["Bleu_4"] == pytest.approx(1.0)
    assert report["by_scene"]["all"]["count"] == len(val)
    assert set(report) >= {"CIDEr", "correct", "complete", "informativeness", "grounding"}
    first = evaluation.score_split(None, val, tiny.vocab, 6, count=3, metrics=["CIDEr"])
    assert len(first.captions) == 3 and first.report["by_scene"]["all"]["count"] == 3


def _model(vocab, profile):
    keras.utils.set_random_seed(0)
    return captioner_from_profile(profile, len(vocab))


class _Interrupt(keras.callbacks.Callback):
    """Kills a run (as ^C would) at the end of its first epoch."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


class _FinalWeights(keras.callbacks.Callback):
    """Keeps the weights at the end of the last epoch (fit then loads the best epoch's)."""

    epochs_run = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run += 1

    def on_train_end(self, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]


def _fit_with(monkeypatch, extra_callbacks):
    original_fit = keras.Model.fit

    def fit(self, *args, callbacks=(), **kwargs):
        return original_fit(self, *args, callbacks=[*callbacks, *extra_callbacks], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)


@pytest.mark.slow
def test_a_killed_run_resumes_at_the_right_epoch_with_identical_weights(tiny, tmp_path, monkeypatch):
    profile = tiny.profile.replace(dropout=0.3)  # the dropout masks must repeat too
    args = (tiny.short["train"], tiny.short["val"], tiny.vocab, profile)

    whole = _FinalWeights()
    _fit_with(monkeypatch, [whole])
    model = _model(tiny.vocab, profile)
    history = train.fit(model, *args, tmp_path / "whole", verbose=0)
    assert len(history.history["loss"]) == 2 and "val_exact" in history.history
    assert (tmp_path / "whole" / "best.weights.h5").exists()
    assert not model.trim_batches  # the CNN trains batch norm: random batches, not trimmed
    monkeypatch.undo()

    # the same run killed after its first epoch, then started again with the same call
    _fit_with(monkeypatch, [_Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        train.fit(_model(tiny.vocab, profile), *args, tmp_path / "killed", verbose=0)
    monkeypatch.undo()
    resumed = _FinalWeights()
    _fit_with(monkeypatch, [resumed])
    history = train.fit(_model(tiny.vocab, profile), *args, tmp_path / "killed", verbose=0)
    assert resumed.epochs_run == 1  # only the second epoch was left to run
    assert len(history.history["loss"]) == 2  # and the history still holds both
    for ours, theirs in zip(resumed.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_finished_run_is_loaded_and_a_mismatched_one_is_not(smoke_run, tmp_path):
    """The session's smoke run (conftest.py) is reloaded from its training folder with the
    weights that were exported, and refused for other settings or another vocabulary."""
    from utils import export

    exported = export.load_captioner(smoke_run.export)
    profile = get_profile("smoke", dataset="shapes")
    vocab = exported.vocabulary
    loaded = train.load_finished_run(smoke_run.training, profile, vocab)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    for ours, theirs in zip(loaded.get_weights(), exported.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(greedy_decode(loaded, pixels, 6)[0].numpy(),
                                  greedy_decode(exported.model, pixels, 6)[0].numpy())
    assert train.load_finished_run(smoke_run.training, profile.replace(units=8), vocab) is None
    other_words = text.Vocabulary([*vocab.words[:-1], "zebra"])
    assert train.load_finished_run(smoke_run.training, profile, other_words) is None
    assert train.load_finished_run(tmp_path / "nothing", profile, vocab) is None


class _StubModel:
    """Just enough of a model for CaptionScore: it records saves and stop requests."""

    def __init__(self):
        self.saved, self.stop_training = 0, False

    def save_weights(self, path):
        self.saved += 1
        pathlib.Path(path).write_bytes(b"weights")


def test_caption_score_logs_cider_and_stops_early_across_a_resume(tiny, tmp_path, monkeypatch):
    encoded, vocab = tiny.encoded, tiny.vocab
    val = encoded["val"]
    right = [refs[0] for refs in val.references]
    wrong = ["a small purple star"] * len(val)
    epochs = iter([right, wrong, wrong, wrong])
    monkeypatch.setattr(decoding, "caption_images",
                        lambda *args, **kwargs: _decoded(next(epochs))(*args, **kwargs))

    def callback():
        score = train.CaptionScore(val, vocab, 6, len(val), tmp_path / "best.weights.h5",
                                   patience=2)
        score.set_model(model)
        return score

    model = _StubModel()
    first = callback()
    logs = {}
    first.on_epoch_end(0, logs)
    assert logs["val_exact"] == 1.0 and logs["val_cider"] > 1.0 and model.saved == 1
    first.on_epoch_end(1, logs)
    assert logs["val_exact"] < 1.0 and not model.stop_training
    # the run is killed here; the restarted one remembers the best epoch and stops on time
    second = callback()
    assert (second.best, second.best_epoch) == (1.0, 1)
    second.on_epoch_end(2, logs)
    assert model.stop_training and second.stopped_epoch == 3 and model.saved == 1


def _caption_log_likelihoods(model, pixels, captions) -> np.ndarray:
    """log p(caption | image) from the teacher-forced logits, summed here in NumPy: the words
    and <end>, not the padding."""
    logits = model((pixels, captions[:, :-1])).logits
    log_probs = tf.nn.log_softmax(logits).numpy()
    targets = captions[:, 1:]
    return np.array([sum(log_probs[i, t, targets[i, t]] for t in range(targets.shape[1])
                         if targets[i, t]) for i in range(len(captions))])


def test_log_likelihood_and_relation_preference(tiny):
    from utils.evaluation import relation_pairs

    model = _model(tiny.vocab, tiny.profile)
    # 40 images: the only split with many two-object scenes; whole captions, so that the
    # relation words are in
    test = tiny.encoded["train"]
    model((test.pixels[:1], test.captions[:1, 0, :-1]))
    # Larger random decoder weights than the initial ones: peaked word distributions, so that a
    # caption and its mirror image get clearly different likelihoods.
    rng = np.random.default_rng(1)
    for weight in model.decoder.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    captions = test.captions[:4, 0]
    np.testing.assert_allclose(caption_log_likelihood(model, test.pixels[:4], captions),
                               _caption_log_likelihoods(model, test.pixels[:4], captions),
                               rtol=1e-5)
    # every true relation caption against its mirror image, scored independently
    pairs = relation_pairs(test.references, test.scenes)
    pixels = test.pixels[[index for index, _, _ in pairs]]
    true, swapped = (_caption_log_likelihoods(model, pixels, np.array(
        [tiny.vocab.encode(pair[side].split(), LENGTH) for pair in pairs], np.int32))
        for side in (1, 2))
    result = train.relation_preference(model, test, tiny.vocab)
    assert result["pairs"] == len(pairs) > 0
    assert np.abs(true - swapped).min() > 1e-3  # no pair so close that rounding could flip it
    assert result["preference"] == np.mean(true > swapped)
    assert result["margin"] == pytest.approx(np.mean(true - swapped), abs=1e-4)


@pytest.mark.slow
def test_fit_on_cached_backbone_features(tiny, tmp_path):
    """The real-data path end to end on Shapes files: extract and cache features (with a
    randomly initialised backbone: no internet here), train with fit, caption the features."""
    from utils import features

    profile = tiny.profile.replace(epochs=1)
    records = datasets.load_dataset("shapes", shapes.write_dataset(tmp_path / "data", 40, seed=3).parent)
    backbone = features.build_backbone("shapes_cnn", weights=None)
    vocab, splits = train.prepare_with_features(records, profile, backbone="shapes_cnn",
                                                weights=None, model=backbone, min_count=1,
                                                cache_dir=tmp_path / "features")
    assert splits["train"].pixels.shape[1:] == (64, 128) and splits["train"].pixels.dtype == np.float16
    assert isinstance(splits["train"].pixels, features.CachedFeatures)  # on disk: fit streams it
    assert splits["val"].captions.shape[1:] == (5, profile.max_caption_tokens + 2)
    keras.utils.set_random_seed(0)
    model = captioner_from_profile(profile, len(vocab), encoder="features", region_dim=32)
    history = train.fit(model, splits["train"], splits["val"], vocab, profile, tmp_path / "run",
                        verbose=0)
    assert {"val_exact", "val_cider"} <= set(history.history)
    assert model.trim_batches  # cached features: grouped by length and trimmed
    captions, attention = train.caption_images(model, splits["val"].pixels, vocab, 6)
    assert len(captions) == len(splits["val"]) and attention.shape[-1] == 64
    # a second call finds every feature cached and computes nothing
    again = train.prepare_with_features(records, profile, backbone="shapes_cnn", weights=None,
                                        min_count=1, cache_dir=tmp_path / "features")[1]
    np.testing.assert_array_equal(again["val"].pixels, splits["val"].pixels)
    loaded = train.prepare_with_features(records, profile, backbone="shapes_cnn", weights=None,
                                         min_count=1, cache_dir=tmp_path / "features",
                                         in_memory=True)[1]
    assert isinstance(loaded["val"].pixels, np.ndarray)
    np.testing.assert_array_equal(loaded["val"].pixels, splits["val"].pixels)
