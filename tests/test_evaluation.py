import numpy as np
import pytest

from utils import shapes
from utils.evaluation import (attention_grounding, caption_rates, informativeness,
                              relation_pairs, relation_summary)

SCENE = {"image_size": 64, "objects": [
    {"shape": "circle", "colour": "red", "size": "small", "bbox": [2, 2, 15, 15]},
    {"shape": "square", "colour": "blue", "size": "large", "bbox": [30, 30, 53, 53]},
]}


def one_hot(rows_cols, steps=8, grid=8):
    weights = np.zeros((steps, grid * grid))
    for step, (row, col) in rows_cols.items():
        weights[step, row * grid + col] = 1.0
    return weights


def test_grounding_hits_when_the_peak_is_on_the_named_object():
    caption = "a red circle and a blue square"  # nouns at positions 2 and 6
    on_target = one_hot({2: (1, 1), 6: (5, 5)})  # cell (1,1) = pixels 8-16: on the circle
    off_target = one_hot({2: (7, 7), 6: (0, 0)})
    result = attention_grounding([caption, caption], np.stack([on_target, off_target]), [SCENE] * 2)
    assert result == {"grounding": 0.5, "nouns": 4}


def test_grounding_ignores_nouns_without_objects_and_unparsable_captions():
    weights = np.stack([one_hot({2: (1, 1)})] * 2)
    result = attention_grounding(["a green star", "star green a"], weights, [SCENE] * 2)
    assert result["nouns"] == 0 and np.isnan(result["grounding"])


def test_caption_rates_by_group():
    one = {"image_size": 64, "objects": SCENE["objects"][:1]}
    rates = caption_rates(["a red circle left of a blue square", "a red circle", "a blue circle"],
                          [SCENE, one, one])
    assert rates["all"]["exact"] == pytest.approx(2 / 3)
    assert rates["1 object"] == {"count": 2, "parsed": 1.0, "correct": 0.5, "complete": 0.5,
                                 "exact": 0.5}
    assert rates["with relation"]["count"] == 1 and rates["with relation"]["exact"] == 1.0
    assert "3 objects" not in rates
    # a relation word in a caption outside the grammar states no relation
    garbled = caption_rates(["left of a red circle"], [one])
    assert "with relation" not in garbled and garbled["without relation"]["count"] == 1


def test_stated_relations_are_judged_one_by_one():
    assert shapes.stated_relations("a red circle left of a blue square", SCENE) == [True]
    assert shapes.stated_relations("a red circle below a blue square", SCENE) == [False]
    # a relation between objects the scene lacks is not true
    assert shapes.stated_relations("a green star left of a blue square", SCENE) == [False]
    assert shapes.stated_relations("a red circle and a blue square", SCENE) == []
    assert shapes.stated_relations("circle circle circle", SCENE) is None


def test_informativeness_counts_relations_by_scene_size():
    three = {"image_size": 64, "objects": SCENE["objects"] + [
        {"shape": "star", "colour": "green", "size": "small", "bbox": [2, 45, 15, 58]}]}
    one = {"image_size": 64, "objects": SCENE["objects"][:1]}
    captions = ["a red circle left of a blue square",  # true relation, exact
                "a blue square left of a red circle",  # false relation
                "a red circle and a blue square",  # no relation
                "a red circle above a green star and a blue square",  # true, exact
                "a red circle"]  # one object: no relation possible
    references = [["a red circle and a blue square"] * 4 + ["a red circle above a blue square"],
                  ["a red circle and a blue square"] * 5,
                  ["a red circle and a blue square"] * 5,
                  ["a blue square and a red circle and a green star"] * 5,
                  ["a red circle"] * 5]
    report = informativeness(captions, [SCENE, SCENE, SCENE, three, one], references)
    assert report["2 objects"] == {"count": 3, "captions with a relation": 2 / 3,
                                   "references with a relation": 1 / 15}
    assert report["3 objects"] == {"count": 1, "captions with a relation": 1.0,
                                   "references with a relation": 0.0}
    assert report["relations"] == {"stated": 3, "true": 2 / 3, "exact when stating one": 2 / 3}


def test_informativeness_of_nothing_is_nan():
    report = informativeness(["circle circle"], [SCENE], [["a red circle and a blue square"]])
    assert report["2 objects"]["captions with a relation"] == 0.0
    assert report["relations"]["stated"] == 0
    assert np.isnan(report["relations"]["true"])
    assert np.isnan(report["relations"]["exact when stating one"])


def test_relation_pairs_mirror_true_relations_only():
    references = [["a red circle left of a blue square", "a blue square to the right of a red circle",
                   "a red circle and a blue square", "a red circle right of a blue square"]]
    pairs = relation_pairs(references, [SCENE])
    assert pairs == [
        (0, "a red circle left of a blue square", "a red circle right of a blue square"),
        (0, "a blue square to the right of a red circle", "a blue square to the left of a red circle"),
    ]  # the caption without a relation and the false one are skipped


def test_attribute_confusions_compare_what_was_said_with_what_was_looked_at():
    from utils.evaluation import attribute_confusions

    # "a green circle and two blue squares": the first noun looks at the red circle, the
    # second at the blue square; "two ... squares" is read as the shape "square"
    caption = "a green circle and two blue squares"
    weights = one_hot({2: (1, 1), 6: (5, 5), 3: (7, 0)})
    rows = attribute_confusions([caption], weights[None], [SCENE])
    assert rows == [
        {"true colour": "red", "said colour": "green", "true shape": "circle", "said shape": "circle"},
        {"true colour": "blue", "said colour": "blue", "true shape": "square", "said shape": "square"},
    ]
    # a peak on empty background is skipped
    assert attribute_confusions(["a red circle"], one_hot({2: (0, 7)})[None], [SCENE]) == []


def test_relation_summary_flattens_an_informativeness_report():
    one = {"image_size": 64, "objects": SCENE["objects"][:1]}
    report = informativeness(["a red circle left of a blue square", "a red circle"],
                             [SCENE, one], [["a red circle and a blue square"], ["a red circle"]])
    summary = relation_summary(report)
    assert list(summary) == ["relation, 2 objects", "relation, 3 objects", "relations true"]
    assert summary["relation, 2 objects"] == 1.0 and summary["relations true"] == 1.0
    assert np.isnan(summary["relation, 3 objects"])  # no scene of three objects
