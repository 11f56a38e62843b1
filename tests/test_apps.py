"""Tests of utils.apps: scenes drawn by hand, uploads, out-of-distribution inputs, phantoms."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils import apps, shapes


def test_compose_scene_places_objects_and_checks_captions():
    scene = apps.compose_scene([("large", "yellow", "star", 6, 8), ("small", "red", "circle", 44, 40)])
    assert [o["bbox"] for o in scene["objects"]] == [[6, 8, 29, 31], [44, 40, 57, 53]]
    assert shapes.check_caption("a yellow star above a red circle", scene).exact
    assert not shapes.check_caption("a red star and a red circle", scene).correct


@pytest.mark.parametrize("objects, problem", [
    ([("huge", "red", "star", 0, 0)], "unknown object"),
    ([("large", "red", "star", 50, 0)], "leaves"),
    ([("small", "red", "star", 10, 10), ("small", "blue", "circle", 20, 10)], "touches"),
])
def test_compose_scene_refuses_bad_objects(objects, problem):
    with pytest.raises(ValueError, match=problem):
        apps.compose_scene(objects)


def test_save_png_round_trips(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    path = apps.save_png(pixels, tmp_path / "sub" / "image.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)


def test_uploaded_image_reads_widget_and_colab_layouts(tmp_path):
    assert apps.uploaded_image((), tmp_path) is None
    assert apps.uploaded_image({}, tmp_path) is None
    version8 = ({"name": "../../cat photo.png", "content": memoryview(b"abc")},)
    path = apps.uploaded_image(version8, tmp_path)
    assert path == tmp_path / "cat_photo.png" and path.read_bytes() == b"abc"
    version7 = {"dog.jpg": {"content": b"xyz"}}
    assert apps.uploaded_image(version7, tmp_path).read_bytes() == b"xyz"
    colab = {"bird.png": b"png bytes"}
    assert apps.uploaded_image(colab, tmp_path).read_bytes() == b"png bytes"


def test_four_object_scenes_are_valid_and_seen_pairs_only():
    scenes = apps.four_object_scenes(np.random.default_rng(1), 20)
    for scene in scenes:
        assert len(scene["objects"]) == 4
        pairs = {(o["colour"], o["shape"]) for o in scene["objects"]}
        assert len(pairs) == 4 and pairs <= set(shapes.SEEN_PAIRS)
        groups = [f"a {o['colour']} {o['shape']}" for o in scene["objects"]]
        listed = " ".join(groups[:-1]) + " and " + groups[-1]
        assert shapes.check_caption(listed, scene).exact, listed


def test_photo_like_images_are_deterministic_pictures():
    first = apps.photo_like_images(np.random.default_rng(2), 3)
    again = apps.photo_like_images(np.random.default_rng(2), 3)
    assert first.shape == (3, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert first.std() > 20  # not a flat colour


def test_phantoms_and_search():
    scene = apps.compose_scene([("small", "red", "circle", 4, 4), ("large", "blue", "star", 30, 30)])
    assert apps.phantom_objects("a red circle and a blue star", scene) == 0
    assert apps.phantom_objects("a red circle and a green cross", scene) == 1
    assert apps.phantom_objects("red red red", scene) is None
    empty = {"image_size": 64, "objects": []}
    assert apps.phantom_rate(["a red circle", "circle circle"], [scene, empty]) == 0.0
    assert apps.phantom_rate(["a red circle"], [empty]) == 1.0
    captions = ["two red circles", "a small red circle and a blue star", "a blue circle"]
    assert apps.search_captions(captions, "red", "circle") == [0, 1]
    assert apps.holds(scene, "blue", "star") and not apps.holds(scene, "blue", "circle")
