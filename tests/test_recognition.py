"""Tests of utils.recognition: labels, scores, mirrored scenes, relation questions, the CNN."""
from __future__ import annotations

import numpy as np
import pytest

from utils import recognition, shapes


def _scene(*objects: tuple[str, str, list[int]]) -> dict:
    return {"image_size": 64, "objects": [{"colour": c, "shape": s, "size": "small", "bbox": b}
                                          for c, s, b in objects]}


TWO_APART = _scene(("red", "circle", [4, 20, 17, 33]), ("blue", "square", [40, 20, 53, 33]))


@pytest.fixture(scope="module")
def two_object_scenes() -> list[dict]:
    rng = np.random.default_rng(7)
    return [shapes.generate_scene(rng, 64, 2, 2, allowed=shapes.SEEN_PAIRS) for _ in range(400)]


def test_labels_are_a_set_in_label_order():
    scene = _scene(("red", "circle", [0, 0, 10, 10]), ("red", "circle", [20, 0, 30, 10]),
                   ("blue", "square", [40, 0, 50, 10]))
    labels = recognition.scene_labels(scene)
    assert labels.dtype == np.float32 and labels.shape == (len(recognition.LABEL_PAIRS),)
    names = recognition.label_names()
    assert sorted(np.array(names)[labels == 1]) == ["blue square", "red circle"]
    assert recognition.label_matrix([scene, TWO_APART]).shape == (2, len(names))


def test_unknown_pair_is_refused():
    held_out = _scene((*shapes.HELDOUT_PAIRS[0], [0, 0, 10, 10]))
    with pytest.raises(ValueError, match="not one of"):
        recognition.scene_labels(held_out)


def test_label_scores_by_hand():
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    guess = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    scores = recognition.label_scores(truth, guess)
    # label 0: tp 1, fn 1 -> f1 2/3; label 1: tp 2, fp 1 -> f1 4/5; label 2 never occurs -> 0
    np.testing.assert_allclose(scores["f1"], [2 / 3, 4 / 5, 0])
    np.testing.assert_allclose(scores["precision"], [1, 2 / 3, 0])
    np.testing.assert_allclose(scores["recall"], [1 / 2, 1, 0])
    np.testing.assert_allclose(scores["micro_f1"], 2 * 3 / (2 * 3 + 1 + 1))
    np.testing.assert_allclose(scores["macro_f1"], (2 / 3 + 4 / 5) / 2)
    np.testing.assert_allclose(scores["accuracy"], 7 / 9)
    np.testing.assert_allclose(scores["exact_set"], 1 / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        recognition.label_scores(truth, guess[:2])


def test_mirror_keeps_labels_and_flips_left_and_right(two_object_scenes):
    for scene in two_object_scenes:
        mirrored = recognition.mirror_scene(scene)
        np.testing.assert_array_equal(recognition.scene_labels(mirrored),
                                      recognition.scene_labels(scene))
        assert recognition.mirror_scene(mirrored) == scene
        a, b = scene["objects"]
        ma, mb = mirrored["objects"]
        for left, right in (("left of", "right of"), ("above", "above"), ("below", "below")):
            assert shapes.relation_holds(a, b, left, 64) == shapes.relation_holds(ma, mb, right, 64)


def test_mirrored_scene_renders_as_the_mirror_image(two_object_scenes):
    for scene in two_object_scenes[:20]:
        original = shapes._coverage(scene)
        mirrored = shapes._coverage(recognition.mirror_scene(scene))
        assert np.abs(mirrored - original[:, ::-1]).mean() < 0.01


def test_relation_question():
    question = recognition.relation_question(TWO_APART)
    # "blue square" sorts before "red circle", so the question is about the blue square
    assert question.text == "is the blue square left of the red circle?"
    assert question.answer is False
    assert recognition.relation_question(recognition.mirror_scene(TWO_APART)).answer is True
    same_pair = _scene(("red", "circle", [4, 20, 17, 33]), ("red", "circle", [40, 20, 53, 33]))
    stacked = _scene(("red", "circle", [20, 4, 33, 17]), ("blue", "square", [22, 40, 35, 53]))
    assert recognition.relation_question(same_pair) is None
    assert recognition.relation_question(stacked) is None
    assert recognition.relation_question(_scene(("red", "circle", [0, 0, 9, 9]))) is None


def test_label_only_answerer_is_at_chance_on_mirrored_pairs(two_object_scenes):
    questions = recognition.relation_questions(two_object_scenes)
    assert len(questions) > 100
    answer = recognition.fit_label_only_answerer(q for _, q in questions)
    right = 0
    for index, question in questions:
        mirrored = recognition.relation_question(recognition.mirror_scene(two_object_scenes[index]))
        assert (mirrored.subject, mirrored.landmark) == (question.subject, question.landmark)
        assert mirrored.answer != question.answer
        right += answer(question.subject, question.landmark) == question.answer
        right += answer(mirrored.subject, mirrored.landmark) == mirrored.answer
    assert right == len(questions)  # exactly one of each mirrored pair


def test_label_only_answerer_learns_majorities():
    yes = recognition.RelationQuestion(("red", "circle"), ("blue", "square"), True)
    no = recognition.RelationQuestion(("red", "circle"), ("blue", "square"), False)
    answer = recognition.fit_label_only_answerer([yes, yes, no])
    assert answer(("red", "circle"), ("blue", "square")) is True
    assert answer(("green", "star"), ("blue", "square")) is True  # unseen: overall majority
    assert recognition.fit_label_only_answerer([no, no, yes])(yes.subject, yes.landmark) is False


def test_recogniser_outputs_probabilities():
    model = recognition.build_recogniser(filters=(8, 8, 8))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    probabilities = np.asarray(model(pixels, training=False))
    assert probabilities.shape == (2, len(recognition.LABEL_PAIRS))
    assert ((probabilities > 0) & (probabilities < 1)).all()
    # the flip layer is active only while training: inference is deterministic
    np.testing.assert_array_equal(probabilities, np.asarray(model(pixels, training=False)))


def test_recogniser_outputs_float32_under_mixed_precision():
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = recognition.build_recogniser(filters=(8, 8, 8), flip_augment=False)
        output = model(np.zeros((1, 64, 64, 3), np.uint8), training=False)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert output.dtype == "float32"
