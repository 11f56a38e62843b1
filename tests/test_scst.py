"""Self-critical sequence training (utils.scst): the reward, one step, and a stage that is
interrupted and continued."""
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils import datasets, scst, shapes, text  # noqa: E402
from utils.captioner import build_captioner  # noqa: E402

LENGTH = 10  # caption positions: <start>, 8 words, <end>
SETTINGS = scst.SelfCriticalSettings(steps=4, batch_size=4, samples=2, learning_rate=1e-3,
                                     eval_every=2, eval_images=4)


def _object(colour, shape, bbox):
    return {"shape": shape, "colour": colour, "size": "small", "bbox": bbox}


#: A red circle on the left, a blue square on the right, level with each other.
SCENE = {"image_size": 64, "objects": [_object("red", "circle", [4, 26, 16, 38]),
                                       _object("blue", "square", [44, 26, 56, 38])]}
LIST = "a red circle and a blue square"
WHERE = "a red circle left of a blue square"
FALSE = "a red circle right of a blue square"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    records = datasets.load_karpathy(shapes.write_dataset(root / "data", 40, seed=5))
    vocab = text.Vocabulary.from_captions(
        c for r in datasets.split(records, "train") for c in r.captions)
    splits = {name: datasets.encode_split(datasets.split(records, name), vocab, LENGTH, name)
              for name in ("train", "val")}
    return vocab, splits


def _model(vocab, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_captioner(len(vocab), filters=(8, 8, 16), embed_dim=8, units=16,
                            attention_units=8, jit_decoder=False)
    model((np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 1), np.int32)))
    return model


def test_half_turn_swaps_every_relation_and_keeps_the_objects():
    turned = scst.half_turn(SCENE)
    assert shapes.check_caption(WHERE, SCENE).exact
    assert not shapes.check_caption(WHERE, turned).correct
    assert shapes.check_caption(FALSE, turned).exact
    assert shapes.check_caption(LIST, turned).exact  # a list holds either way
    assert scst.half_turn(turned) == SCENE
    assert turned["objects"][0]["bbox"] == [48, 26, 60, 38]
    assert [o["colour"] for o in turned["objects"]] == ["red", "blue"]


def test_the_reward_adds_truth_and_discrimination_to_cider_d():
    # a second image, so that document frequencies mean something
    references = [[LIST, "a picture of a red circle and a blue square", WHERE,
                   "a blue square and a red circle", "a red circle and one blue square"],
                  ["a green star"] * 5]
    reward = scst.CaptionReward(references, [SCENE, None], truth=2.0, discrimination=3.0)
    totals, parts = reward([LIST, WHERE, FALSE], [0, 0, 0])
    assert parts["exact"].tolist() == [1.0, 1.0, 0.0]
    assert parts["discriminative"].tolist() == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(totals, parts["cider"] + 2.0 * parts["exact"]
                               + 3.0 * parts["discriminative"])
    assert parts["cider"][0] > parts["cider"][1] > 0  # the list shares more n-grams
    plain_totals, plain = scst.CaptionReward(references)([LIST, WHERE, FALSE], [0, 0, 0])
    np.testing.assert_allclose(plain_totals, parts["cider"])  # without scenes: CIDEr-D alone
    assert not plain["exact"].any() and not plain["discriminative"].any()


def test_a_constant_reward_leaves_the_model_as_it_was(tiny):
    """Every sample's advantage is 0 when the reward cannot tell captions apart: no gradient."""
    vocab, splits = tiny

    class Constant:
        truth = discrimination = 0.0

        def __call__(self, captions, images):
            return np.ones(len(captions)), {"cider": np.ones(len(captions))}

    model = _model(vocab)
    before = [w.copy() for w in model.get_weights()]
    stats = scst.self_critical_step(model, keras.optimizers.Adam(0.1), Constant(),
                                    splits["train"].pixels[:4], np.arange(4), vocab,
                                    max_length=LENGTH - 1, samples=3, seed=1)
    assert stats["loss"] == 0.0 and stats["reward"] == stats["greedy reward"] == 1.0
    for ours, theirs in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_the_step_raises_the_probability_of_what_the_reward_favours(tiny):
    """A reward for short captions: after a few steps the model's samples are shorter."""
    vocab, splits = tiny

    class Short:
        truth = discrimination = 0.0

        def __call__(self, captions, images):
            lengths = np.array([len(c.split()) for c in captions], float)
            return -lengths, {"cider": -lengths}

    model = _model(vocab)
    images, ids = splits["train"].pixels[:8], np.arange(8)
    optimizer = keras.optimizers.Adam(0.02)
    rewards = [scst.self_critical_step(model, optimizer, Short(), images, ids, vocab,
                                       max_length=LENGTH - 1, samples=4, seed=s)["reward"]
               for s in range(12)]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3])


def _stage(model, vocab, splits, run_dir):
    reward = scst.CaptionReward(splits["train"].references, splits["train"].scenes, 1.0, 1.0)
    return scst.train_self_critical(model, splits["train"], splits["val"], vocab, reward,
                                    SETTINGS, max_length=LENGTH - 1, run_dir=run_dir,
                                    verbose=False)


def test_an_interrupted_stage_continues_where_it_stopped(tiny, tmp_path, monkeypatch, capsys):
    vocab, splits = tiny
    whole_model = _model(vocab)
    whole = _stage(whole_model, vocab, splits, tmp_path / "whole")
    assert [row["step"] for row in whole] == [0, 2, 4]
    assert {"reward", "greedy reward", "val cider", "val exact", "relations true"} <= set(whole[-1])

    calls = []
    real_step = scst.self_critical_step

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # killed during the third step, after the first evaluation
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(scst, "self_critical_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _stage(_model(vocab), vocab, splits, tmp_path / "killed")
    monkeypatch.undo()
    assert json.loads((tmp_path / "killed" / scst.PROGRESS).read_text())["history"][-1]["step"] == 2

    resumed_model = _model(vocab)
    resumed = _stage(resumed_model, vocab, splits, tmp_path / "killed")
    assert "continuing from step 2" in capsys.readouterr().out
    assert len(resumed) == len(whole)
    for ours, theirs in zip(resumed, whole):
        assert ours.keys() == theirs.keys()
        for key in theirs.keys() - {"seconds"}:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, nan_ok=True), key
    for ours, theirs in zip(resumed_model.get_weights(), whole_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [
        scst.PROGRESS, "step-000004.optimizer.npz", "step-000004.weights.h5"]

    # A finished stage is loaded as it is: no step runs.
    monkeypatch.setattr(scst, "self_critical_step", None)
    again = _stage(_model(vocab), vocab, splits, tmp_path / "whole")
    assert [row["step"] for row in again] == [0, 2, 4]
    assert "whole: finished, loaded" in capsys.readouterr().out


def test_a_stored_stage_that_cannot_be_used_is_started_over(tiny, tmp_path, capsys):
    vocab, splits = tiny
    _stage(_model(vocab), vocab, splits, tmp_path / "run")
    capsys.readouterr()

    # another starting model: the stored stage is not continued
    other = _model(vocab, seed=1)
    before = [w.copy() for w in other.get_weights()]
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(other.trainable_variables)
    reward = scst.CaptionReward(splits["train"].references, splits["train"].scenes, 1.0, 1.0)
    identity = scst.run_identity(other, SETTINGS, reward)
    assert scst.load_progress(other, optimizer, tmp_path / "run", identity) == []
    assert "differs in start" in capsys.readouterr().out

    # its own starting model, but the weights file is damaged: said, and nothing is changed
    own = _model(vocab)
    identity = scst.run_identity(own, SETTINGS, reward)
    progress = json.loads((tmp_path / "run" / scst.PROGRESS).read_text())
    (tmp_path / "run" / progress["weights"]).write_bytes(b"not a weights file")
    own_before = [w.copy() for w in own.get_weights()]
    assert scst.load_progress(own, optimizer, tmp_path / "run", identity) == []
    assert "cannot be read" in capsys.readouterr().out
    for ours, theirs in zip(own.get_weights(), own_before, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(other.get_weights(), before, strict=True):
        np.testing.assert_array_equal(ours, theirs)
