"""Training plumbing on a tiny Shapes set: pipeline, scoring, best-epoch saving, resume."""
import pathlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils import datasets, shapes, text, train  # noqa: E402
from utils.backbones import make_optimizer  # noqa: E402, F401
from utils.captioner import (build_captioner, caption_log_likelihood,  # noqa: E402
                             captioner_from_profile, greedy_decode)
from utils.profile import get_profile  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    records = datasets.load_karpathy(shapes.write_dataset(root / "data", 40, seed=3))
    vocab = text.Vocabulary.from_captions(c for r in datasets.split(records, "train") for c in r.captions)
    encoded = {name: datasets.encode_split(datasets.split(records, name), vocab, 18, name)
               for name in ("train", "val")}
    profile = get_profile("smoke").replace(epochs=3, steps_per_epoch=2, batch_size=4, eval_images=4,
                                           jit_compile=False)  # XLA compiling costs more than it saves here
    return encoded, vocab, profile


def test_pipeline_draws_one_reference_per_image_deterministically(tiny):
    encoded, _, _ = tiny
    first = [b[1].numpy() for b in train.training_pipeline(encoded["train"], 4, seed=5).take(3)]
    again = [b[1].numpy() for b in train.training_pipeline(encoded["train"], 4, seed=5).take(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    images, captions = next(iter(train.training_pipeline(encoded["train"], 4)))
    assert images.shape == (4, 64, 64, 3) and images.dtype == tf.uint8
    assert captions.shape == (4, 18) and (captions[:, 0].numpy() == 2).all()
    # every drawn caption is one of that image's references
    pixels = encoded["train"].pixels.reshape(len(encoded["train"]), -1)
    for image, caption in zip(images.numpy(), captions.numpy()):
        row = int(np.flatnonzero((pixels == image.reshape(-1)).all(axis=1))[0])
        assert any((caption == ref).all() for ref in encoded["train"].captions[row])


def test_grouping_by_length_reorders_an_epoch_without_changing_it(tiny):
    encoded, _, _ = tiny
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
    _, _, profile = tiny
    cnn = build_captioner(12, filters=(8, 8, 16), embed_dim=8, units=16, attention_units=8)
    features = build_captioner(12, encoder="features", region_dim=8, embed_dim=8, units=16,
                         attention_units=8)
    assert profile.group_by_length is None  # automatic
    assert not train.groups_by_length(cnn, profile)
    assert train.groups_by_length(features, profile)
    assert train.groups_by_length(cnn, profile.replace(group_by_length=True))
    assert not train.groups_by_length(features, profile.replace(group_by_length=False))


def test_scores_of_the_references_themselves_are_perfect(tiny):
    encoded, _, _ = tiny
    val = encoded["val"]
    scores = train.score_captions([refs[0] for refs in val.references], val)
    assert scores["exact"] == 1.0 and scores["bleu4"] == pytest.approx(1.0)


def _model(vocab, profile):
    keras.utils.set_random_seed(0)
    return captioner_from_profile(profile, len(vocab))


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
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


def test_a_killed_run_resumes_at_the_right_epoch_with_identical_weights(tiny, tmp_path, monkeypatch):
    encoded, vocab, profile = tiny
    profile = profile.replace(dropout=0.3)  # the dropout masks must repeat too
    args = (encoded["train"], encoded["val"], vocab, profile)

    whole = _FinalWeights()
    _fit_with(monkeypatch, [whole])
    history = train.fit(_model(vocab, profile), *args, tmp_path / "whole", verbose=0)
    assert len(history.history["loss"]) == 3 and "val_exact" in history.history
    assert (tmp_path / "whole" / "best.weights.h5").exists()
    monkeypatch.undo()

    # the same run killed after its second epoch, then started again with the same call
    _fit_with(monkeypatch, [_Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        train.fit(_model(vocab, profile), *args, tmp_path / "killed", verbose=0)
    monkeypatch.undo()
    resumed = _FinalWeights()
    _fit_with(monkeypatch, [resumed])
    history = train.fit(_model(vocab, profile), *args, tmp_path / "killed", verbose=0)
    assert resumed.epochs_run == 1  # only the third epoch was left to run
    assert len(history.history["loss"]) == 3  # and the history still holds all three
    for ours, theirs in zip(resumed.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_finished_run_is_loaded_and_a_mismatched_one_is_not(tiny, tmp_path):
    encoded, vocab, profile = tiny
    model = _model(vocab, profile)
    train.fit(model, encoded["train"], encoded["val"], vocab, profile, tmp_path / "run", verbose=0)
    assert not model.trim_batches  # the CNN: random batches, not trimmed
    loaded = train.load_finished_run(tmp_path / "run", profile, vocab)
    pixels = encoded["val"].pixels[:3]
    np.testing.assert_array_equal(greedy_decode(loaded, pixels, 6)[0].numpy(), greedy_decode(model, pixels, 6)[0].numpy())
    assert train.load_finished_run(tmp_path / "run", profile.replace(units=8), vocab) is None
    assert train.load_finished_run(tmp_path / "nothing", profile, vocab) is None


class _StubModel:
    """Just enough of a model for CaptionScore: it records saves and stop requests."""

    def __init__(self):
        self.saved, self.stop_training = 0, False

    def save_weights(self, path):
        self.saved += 1
        pathlib.Path(path).write_bytes(b"weights")


def test_caption_score_logs_cider_and_stops_early_across_a_resume(tiny, tmp_path, monkeypatch):
    encoded, vocab, _ = tiny
    val = encoded["val"]
    right = [refs[0] for refs in val.references]
    wrong = ["a small purple star"] * len(val)
    epochs = iter([right, wrong, wrong, wrong])
    monkeypatch.setattr(train, "caption_images", lambda *args, **kwargs: (next(epochs), None))

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


def test_log_likelihood_and_relation_preference(tiny):
    encoded, vocab, profile = tiny
    model = _model(vocab, profile)
    test = encoded["train"]  # 40 images: the only split with many two-object scenes
    captions = test.captions[:4, 0]
    logits, _ = model((test.pixels[:4], captions[:, :-1]))
    log_probs = tf.nn.log_softmax(logits).numpy()
    targets = captions[:, 1:]
    expected = [sum(log_probs[i, t, targets[i, t]] for t in range(targets.shape[1]) if targets[i, t])
                for i in range(4)]
    np.testing.assert_allclose(caption_log_likelihood(model, test.pixels[:4], captions), expected, rtol=1e-5)
    result = train.relation_preference(model, test, vocab)
    assert result["pairs"] > 0 and 0.0 <= result["preference"] <= 1.0


def test_fit_on_cached_backbone_features(tiny, tmp_path):
    """The real-data path end to end on Shapes files: extract and cache features (with a
    randomly initialised backbone: no internet here), train with fit, caption the features."""
    from utils import features

    _, _, profile = tiny
    records = datasets.load_dataset("shapes", shapes.write_dataset(tmp_path / "data", 40, seed=3).parent)
    backbone = features.build_backbone("shapes_cnn", weights=None)
    vocab, splits = train.prepare_with_features(records, profile, backbone="shapes_cnn",
                                                weights=None, model=backbone, min_count=1,
                                                cache_dir=tmp_path / "features")
    assert splits["train"].pixels.shape[1:] == (64, 128) and splits["train"].pixels.dtype == np.float16
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
