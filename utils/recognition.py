"""Recognition without understanding: a multi-label recogniser for Shapes and relation questions.

Chapter 1 trains a small CNN that says *which* (colour, shape) pairs an image holds, then shows
what such a set of labels cannot say: where the objects are. This module holds the pieces that
chapter (and later ones) reuse:

- :func:`scene_labels` / :func:`label_matrix`: the multi-hot target of a scene;
- :func:`build_recogniser`: the CNN (TensorFlow is imported only here);
- :func:`label_scores`: precision, recall and F1 per label, micro and macro averages;
- :func:`mirror_scene`: the same objects, mirrored left to right;
- :func:`relation_questions`, :func:`fit_label_only_answerer`: "is the A left of the B?" and the
  best answer a model that only sees the labels can give.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from . import shapes

#: The labels, in output order: every (colour, shape) pair that train, val and test may use.
LABEL_PAIRS: tuple[tuple[str, str], ...] = shapes.SEEN_PAIRS
#: Training epochs of the recogniser by profile; ``cpu`` reaches a micro F1 near 0.99 on the
#: Shapes test split in about two minutes on two cores, ``smoke`` only proves the code runs.
EPOCHS = {"smoke": 2, "cpu": 5, "gpu": 5}
#: Its batch size by profile: the values those epochs were chosen with (the captioner's
#: profiles have their own, ``Profile.batch_size``).
BATCH_SIZE = {"smoke": 16, "cpu": 32, "gpu": 64}


def label_names(pairs: Sequence[tuple[str, str]] = LABEL_PAIRS) -> list[str]:
    """Readable names of the labels, e.g. ``"red circle"``."""
    return [f"{colour} {shape}" for colour, shape in pairs]


def scene_labels(scene: dict, pairs: Sequence[tuple[str, str]] = LABEL_PAIRS) -> np.ndarray:
    """``float32[K]``: 1 where the scene holds at least one object of pair ``k``, else 0.

    A set, not a count: two red circles give the same vector as one. A pair outside ``pairs``
    raises ValueError, since the vector could not represent it.
    """
    index = {pair: k for k, pair in enumerate(pairs)}
    labels = np.zeros(len(pairs), np.float32)
    for obj in scene["objects"]:
        pair = (obj["colour"], obj["shape"])
        if pair not in index:
            raise ValueError(f"{pair} is not one of the {len(pairs)} labels")
        labels[index[pair]] = 1.0
    return labels


def label_matrix(scenes: Iterable[dict],
                 pairs: Sequence[tuple[str, str]] = LABEL_PAIRS) -> np.ndarray:
    """``float32[N, K]``: :func:`scene_labels` of every scene."""
    return np.stack([scene_labels(scene, pairs) for scene in scenes])


def build_recogniser(num_labels: int = len(LABEL_PAIRS), filters: Sequence[int] = (32, 64, 128),
                     image_size: int = 64, flip_augment: bool = True, seed: int = 0):
    """A small CNN: ``uint8[B, S, S, 3]`` -> ``float[B, num_labels]`` probabilities (sigmoid).

    Convolutions find colour-shape patterns wherever they are; global max pooling then keeps,
    for each feature, only how strongly it fired *somewhere*, so the output is a set of labels
    and, by design, says nothing about positions. With ``flip_augment`` each training image is
    mirrored left to right at random (a mirrored image has the same labels); at inference the
    flip layer does nothing.
    """
    import keras
    from keras import layers

    stem, mid, top = filters

    def conv(width: int, size: int = 3, strides: int = 1) -> list:
        return [layers.Conv2D(width, size, strides=strides, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=0.9), layers.ReLU()]

    return keras.Sequential(
        [keras.Input((image_size, image_size, 3), dtype="uint8"),
         *([layers.RandomFlip("horizontal", seed=seed)] if flip_augment else []),
         layers.Rescaling(1 / 127.5, offset=-1.0),
         *conv(stem, 5, strides=2), *conv(stem), layers.MaxPooling2D(),
         *conv(mid), layers.MaxPooling2D(), *conv(top),
         layers.GlobalMaxPooling2D(),
         # float32 output even under a mixed_float16 policy, so probabilities near 0 and 1 and
         # the loss computed from them keep their precision
         layers.Dense(num_labels, activation="sigmoid", dtype="float32")],
        name="recogniser")


def label_scores(true_labels: np.ndarray, predicted_labels: np.ndarray) -> dict:
    """Precision, recall and F1 of 0/1 label matrices ``[N, K]``.

    Returns ``{"precision", "recall", "f1"}`` (each ``float[K]``, one per label; 0 where
    undefined), ``"micro_f1"`` (from counts pooled over all labels), ``"macro_f1"`` (mean over
    the labels that occur in ``true_labels``), ``"accuracy"`` (per entry) and ``"exact_set"`` (share
    of images whose whole label set is right).
    """
    truth, guess = np.asarray(true_labels) > 0.5, np.asarray(predicted_labels) > 0.5
    if truth.shape != guess.shape:
        raise ValueError(f"label matrices differ in shape: {truth.shape} vs {guess.shape}")
    true_pos = (truth & guess).sum(0)
    false_pos = (~truth & guess).sum(0)
    false_neg = (truth & ~guess).sum(0)
    precision = true_pos / np.maximum(true_pos + false_pos, 1)
    recall = true_pos / np.maximum(true_pos + false_neg, 1)
    f1 = 2 * true_pos / np.maximum(2 * true_pos + false_pos + false_neg, 1)
    pooled = 2 * true_pos.sum() + false_pos.sum() + false_neg.sum()
    present = truth.any(0)
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "micro_f1": float(2 * true_pos.sum() / max(pooled, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "accuracy": float((truth == guess).mean()),
        "exact_set": float((truth == guess).all(1).mean()),
    }


def mirror_scene(scene: dict) -> dict:
    """The scene mirrored left to right: same objects, x positions reflected.

    Every Shapes outline is symmetric about its vertical axis, so the mirrored scene renders as
    the mirror image of the original (``pixels[:, ::-1]``), up to noise.
    """
    size = scene["image_size"]
    objects = [{**obj, "bbox": [size - obj["bbox"][2], obj["bbox"][1],
                                size - obj["bbox"][0], obj["bbox"][3]]}
               for obj in scene["objects"]]
    return {**scene, "objects": objects}


@dataclasses.dataclass(frozen=True)
class RelationQuestion:
    """ "Is the <subject> left of the <landmark>?" about one scene, with the true answer."""

    subject: tuple[str, str]
    landmark: tuple[str, str]
    answer: bool

    @property
    def text(self) -> str:
        return f"is the {' '.join(self.subject)} left of the {' '.join(self.landmark)}?"


def relation_question(scene: dict) -> RelationQuestion | None:
    """The left/right question about a two-object scene, or None when it has no clear answer.

    The subject is the object whose (colour, shape) pair comes first in sorted order, so the
    question depends only on the labels, never on the layout. Scenes with other than two objects,
    two objects of the same pair, or centres too close horizontally for either "left of" or
    "right of" to hold (see :func:`utils.shapes.relation_holds`) get None.
    """
    objects = scene["objects"]
    if len(objects) != 2:
        return None
    first, second = sorted(objects, key=lambda obj: (obj["colour"], obj["shape"]))
    pair_of = lambda obj: (obj["colour"], obj["shape"])  # noqa: E731
    if pair_of(first) == pair_of(second):
        return None
    size = scene["image_size"]
    left = shapes.relation_holds(first, second, "left of", size)
    if not left and not shapes.relation_holds(first, second, "right of", size):
        return None
    return RelationQuestion(pair_of(first), pair_of(second), left)


def relation_questions(scenes: Iterable[dict]) -> list[tuple[int, RelationQuestion]]:
    """``(scene index, question)`` for every scene that has a clear left/right question."""
    found = ((index, relation_question(scene)) for index, scene in enumerate(scenes))
    return [(index, question) for index, question in found if question is not None]


def fit_label_only_answerer(questions: Iterable[RelationQuestion]):
    """The best answerer that sees only the labels: the majority answer for each label pair.

    Returns ``answer(subject, landmark) -> bool``; a pair never seen answers with the overall
    majority. Whatever it learns, it cannot do better than chance on a mirrored pair of scenes,
    because both have the same labels and opposite answers.
    """
    votes: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    overall: collections.Counter = collections.Counter()
    for question in questions:
        votes[question.subject, question.landmark][question.answer] += 1
        overall[question.answer] += 1
    fallback = overall[True] >= overall[False]

    def answer(subject: tuple[str, str], landmark: tuple[str, str]) -> bool:
        counts = votes.get((subject, landmark))
        if not counts or counts[True] == counts[False]:
            return fallback
        return counts[True] > counts[False]

    return answer
