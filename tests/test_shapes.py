"""Tests of the Shapes dataset: scenes, rendering, reference captions, the checker, the files."""
from __future__ import annotations

import collections
import itertools
import json
import pathlib

import numpy as np
import pytest

from utils import shapes

SCENE_COUNT = 2000


@pytest.fixture(scope="module")
def examples() -> list[tuple[dict, list[str]]]:
    """(scene, references) for many random scenes, some of them forced to use held-out pairs."""
    rng = np.random.default_rng(1234)
    pairs = []
    for index in range(SCENE_COUNT):
        require = shapes.HELDOUT_PAIRS if index % 10 == 0 else None
        scene = shapes.generate_scene(rng, require_any=require)
        pairs.append((scene, shapes.reference_captions(scene, rng)))
    return pairs


def _one_object_scene(colour="red", shape="circle", size="large") -> dict:
    return {"image_size": 64, "objects": [_obj(colour, shape, size, [10, 10, 32, 32])]}


def _obj(colour: str, shape: str, size: str, bbox: list[int]) -> dict:
    return {"colour": colour, "shape": shape, "size": size, "bbox": bbox}


# --------------------------------------------------------------------------- scenes


def test_scenes_are_json_ready_and_well_formed(examples):
    for scene, _ in examples[:200]:
        assert json.loads(json.dumps(scene)) == scene
        assert 1 <= len(scene["objects"]) <= shapes.MAX_OBJECTS
        for obj in scene["objects"]:
            assert obj["colour"] in shapes.COLOURS and obj["shape"] in shapes.SHAPES
            assert obj["size"] in shapes.SIZES
            assert all(isinstance(v, int) for v in obj["bbox"])


@pytest.mark.parametrize("image_size", [shapes.MIN_IMAGE_SIZE, 64, 100])
def test_objects_never_overlap_and_stay_inside(image_size):
    rng = np.random.default_rng(image_size)
    for _ in range(300):
        objects = shapes.generate_scene(rng, image_size, min_objects=3)["objects"]
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 < x0 < x1 < image_size and 0 < y0 < y1 < image_size
            assert x1 - x0 == shapes.object_side(obj["size"], image_size) == y1 - y0
        for a, b in itertools.combinations(objects, 2):
            assert shapes._boxes_apart(a["bbox"], b["bbox"])


def test_counts_and_duplicates_occur(examples):
    sizes = collections.Counter(len(scene["objects"]) for scene, _ in examples)
    assert set(sizes) == {1, 2, 3}
    multi = [scene for scene, _ in examples if len(scene["objects"]) > 1]
    repeated = [s for s in multi if len(shapes._clusters(s["objects"])) < len(s["objects"])]
    # a multi-object scene repeats a pair with DUPLICATE_PROBABILITY: a binomial share, here
    # within four standard deviations of it
    p, n = shapes.DUPLICATE_PROBABILITY, len(multi)
    assert abs(len(repeated) / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_allowed_and_require_any_are_respected():
    rng = np.random.default_rng(0)
    allowed = [("red", "circle"), ("blue", "square"), ("green", "star")]
    for _ in range(200):
        scene = shapes.generate_scene(rng, allowed=allowed, require_any=[("green", "star")])
        pairs = {(obj["colour"], obj["shape"]) for obj in scene["objects"]}
        assert pairs <= set(allowed) and ("green", "star") in pairs


@pytest.mark.parametrize("image_size", [0, 16, shapes.MIN_IMAGE_SIZE - 1, 5000])
def test_unusable_image_sizes_are_refused(image_size):
    with pytest.raises(ValueError, match="image size"):
        shapes.generate_scene(np.random.default_rng(0), image_size)


def test_describe_lists_objects_left_to_right():
    scene = {
        "image_size": 64,
        "objects": [
            _obj("red", "circle", "large", [40, 5, 62, 27]),
            _obj("blue", "star", "small", [2, 30, 15, 43]),
        ],
    }
    assert shapes.describe(scene) == "small blue star, large red circle"


# --------------------------------------------------------------------------- rendering


def test_render_shape_dtype_and_colours(examples):
    rng = np.random.default_rng(7)
    for scene, _ in examples[:100]:
        pixels = shapes.render_scene(scene, rng)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        for obj in scene["objects"]:
            # Every shape covers the middle of its box, so the paint shows there.
            x0, y0, x1, y1 = obj["bbox"]
            middle = pixels[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
            assert np.abs(middle - shapes.COLOUR_RGB[obj["colour"]]).max() < 45


def test_render_is_deterministic_given_the_generator():
    scene = shapes.generate_scene(np.random.default_rng(3))
    first = shapes.render_scene(scene, np.random.default_rng(9))
    again = shapes.render_scene(scene, np.random.default_rng(9))
    assert np.array_equal(first, again)


# --------------------------------------------------------------------------- references


def test_every_reference_is_exact(examples):
    for scene, references in examples:
        assert len(references) == shapes.REFERENCES_PER_IMAGE
        for caption in references:
            assert shapes.check_caption(caption, scene).exact, (caption, scene)


def test_references_are_short_and_mostly_distinct(examples):
    lengths = [len(shapes.tokenize(c)) for _, refs in examples for c in refs]
    assert max(lengths) <= shapes.MAX_REFERENCE_TOKENS
    distinct = [len(set(refs)) == len(refs) for _, refs in examples]
    assert np.mean(distinct) > 0.97


def test_reference_mix_covers_the_grammar(examples):
    words = collections.Counter(t for _, refs in examples for c in refs for t in shapes.tokenize(c))
    for word in [*shapes.COUNT_WORDS, *shapes.SIZES, "left", "right", "above", "below", "to"]:
        assert words[word] > 0, word
    for prefix in shapes.PREFIXES:
        assert any(c.startswith(prefix) for _, refs in examples for c in refs), prefix


@pytest.mark.parametrize("num_objects, low", [(1, 0.0), (2, 0.25), (3, 0.1)])
def test_relation_share_follows_the_template_mix(examples, num_objects, low):
    """Each image gets round(5 * RELATION_SHARE) relation captions when its scene allows one
    (objects far enough apart, in different groups), so the share is at most that; scenes that
    allow none pull it down, to no less than ``low`` for these 2000 scenes."""
    relation_words = {"left", "right", "above", "below"}
    per_image = [sum(bool(relation_words & set(shapes.tokenize(c))) for c in rs)
                 for scene, rs in examples if len(scene["objects"]) == num_objects]
    most = int(shapes.REFERENCES_PER_IMAGE * shapes.RELATION_SHARE[num_objects] + 0.5)
    assert max(per_image) == most
    share = np.mean(per_image) / shapes.REFERENCES_PER_IMAGE
    assert low <= share <= most / shapes.REFERENCES_PER_IMAGE


# --------------------------------------------------------------------------- relations


def test_relation_holds_needs_a_clear_margin():
    left = _obj("red", "circle", "small", [0, 20, 12, 32])
    near = _obj("blue", "star", "small", [14, 20, 26, 32])  # centres 14 apart: clear
    close = _obj("blue", "star", "small", [6, 36, 18, 48])  # 6 apart in x: too close
    assert shapes.relation_holds(left, near, "left of", 64)
    assert shapes.relation_holds(near, left, "right of", 64)
    assert not shapes.relation_holds(left, close, "left of", 64)
    assert shapes.relation_holds(left, close, "above", 64)
    assert shapes.relation_holds(close, left, "below", 64)
    with pytest.raises(ValueError, match=r"^unknown relation 'next to'; choose one of \('left of', "
                                         r"'right of', 'above', 'below'\)$"):
        shapes.relation_holds(left, near, "next to", 64)


def test_relation_margin_is_an_eighth_of_the_image_inclusive():
    # centres exactly 64 / 8 = 8 pixels apart hold; 7 apart do not (x and y alike)
    here = _obj("red", "circle", "small", [10, 10, 20, 20])  # centre (15, 15)
    eight = _obj("blue", "star", "small", [18, 18, 28, 28])  # centre (23, 23)
    seven = _obj("blue", "star", "small", [17, 17, 27, 27])  # centre (22, 22)
    for relation, a, b in (("left of", here, eight), ("right of", eight, here),
                           ("above", here, eight), ("below", eight, here)):
        assert shapes.relation_holds(a, b, relation, 64), relation
    for relation, a, b in (("left of", here, seven), ("right of", seven, here),
                           ("above", here, seven), ("below", seven, here)):
        assert not shapes.relation_holds(a, b, relation, 64), relation
    assert shapes.relation_holds(here, seven, "left of", 56)  # 56 / 8 = 7


def test_relation_reads_the_centre_of_a_box_that_is_not_square():
    # bbox is [x0, y0, x1, y1]: the centre of a wide, flat box at the top is (30, 5), so it is
    # above a box centred at (5, 45), though its right edge (60) lies further down the page
    wide = _obj("red", "circle", "large", [0, 0, 60, 10])
    low = _obj("blue", "star", "small", [0, 40, 10, 50])
    assert shapes.relation_holds(wide, low, "above", 64)
    assert shapes.relation_holds(low, wide, "below", 64)
    assert shapes.relation_holds(low, wide, "left of", 64)  # 30 - 5 = 25 apart in x


# --------------------------------------------------------------------------- the checker

_FLIPPED_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _group_spans(tokens: list[str]) -> list[tuple[int, int]]:
    """(start, end) of every ``det [size] colour noun`` group in a grammatical token list."""
    spans = []
    for i, token in enumerate(tokens[:-2]):
        if token in shapes.COUNT_WORDS and tokens[i + 1] in (*shapes.SIZES, *shapes.COLOURS):
            spans.append((i, i + (4 if tokens[i + 1] in shapes.SIZES else 3)))
    return spans


def _noun(shape: str, count: int) -> str:
    return shapes.PLURALS[shape] if count > 1 else shape


def _shape_of(noun: str) -> str:
    return next(s for s in shapes.SHAPES if noun in (s, shapes.PLURALS[s]))


def _mutations(tokens: list[str], scene: dict):
    """Yield (kind, mutated tokens) for one-word changes that make the caption false."""
    objects = scene["objects"]
    colours_present = {obj["colour"] for obj in objects}
    shapes_present = {obj["shape"] for obj in objects}
    for start, end in _group_spans(tokens):
        det, *size, colour, noun = tokens[start:end]
        count = shapes.COUNT_WORDS[det]
        for new_colour in sorted(set(shapes.COLOURS) - colours_present)[:1]:
            yield "colour", tokens[: end - 2] + [new_colour] + tokens[end - 1 :]
        for new_shape in sorted(set(shapes.SHAPES) - shapes_present)[:1]:
            yield "shape", tokens[: end - 1] + [_noun(new_shape, count)] + tokens[end:]
        if size:
            other = next(s for s in shapes.SIZES if s != size[0])
            matching = [
                o for o in objects
                if (o["colour"], o["shape"], o["size"]) == (colour, _shape_of(noun), other)
            ]  # fmt: skip
            if len(matching) != count:  # otherwise the flipped caption is still true
                yield "size", tokens[: start + 1] + [other] + tokens[start + 2 :]
        new_count = {1: 2, 2: 3, 3: 2}[count]
        new_det = {2: "two", 3: "three"}[new_count]
        changed = tokens[:start] + [new_det] + tokens[start + 1 : end - 1]
        changed += [_noun(_shape_of(noun), new_count)] + tokens[end:]
        if changed[:2] == ["there", "is"] and start == 2:
            changed[1] = "are"  # keep the prefix grammatical, so only the count is wrong
        yield "count", changed
    for i, token in enumerate(tokens):
        if token in _FLIPPED_RELATION:
            yield "relation", tokens[:i] + [_FLIPPED_RELATION[token]] + tokens[i + 1 :]


def test_one_wrong_word_makes_a_caption_incorrect(examples):
    tried = collections.Counter()
    for scene, references in examples[:600]:
        for caption in references:
            for kind, mutated in _mutations(shapes.tokenize(caption), scene):
                verdict = shapes.check_caption(" ".join(mutated), scene)
                assert verdict.parsed, (kind, mutated)
                assert not verdict.correct and not verdict.exact, (kind, caption, mutated, scene)
                tried[kind] += 1
    for kind in ("colour", "shape", "size", "count", "relation"):
        assert tried[kind] >= 50, tried


def test_a_single_group_claims_an_exact_count():
    scene = {
        "image_size": 64,
        "objects": [
            _obj("red", "circle", "small", [2, 2, 15, 15]),
            _obj("red", "circle", "large", [30, 30, 53, 53]),
        ],
    }
    assert not shapes.check_caption("a red circle", scene).correct
    assert shapes.check_caption("two red circles", scene).exact
    assert shapes.check_caption("a small red circle", scene).correct
    assert not shapes.check_caption("a small red circle", scene).complete
    assert shapes.check_caption("a small red circle above a large red circle", scene).exact
    assert not shapes.check_caption("two small red circles", scene).correct


def test_leaving_out_an_object_is_correct_but_incomplete(examples):
    checked = 0
    for scene, _ in examples:
        clusters = shapes._clusters(scene["objects"])
        if len(clusters) < 2:
            continue
        kept = list(clusters.items())[1:]
        phrases = [
            f"{['a', 'two', 'three'][len(members) - 1]} {colour} {_noun(shape, len(members))}"
            for (colour, shape), members in kept
        ]
        caption = " and ".join(phrases)
        verdict = shapes.check_caption(caption, scene)
        assert verdict.parsed and verdict.correct, caption
        assert not verdict.complete and not verdict.exact, caption
        checked += 1
    assert checked > 500


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "red circle",
        "a red",
        "a circle",
        "a circle red",
        "a red circles",
        "two red circle",
        "a large small red circle",
        "a huge red circle",
        "a red circle and",
        "and a red circle",
        "a red circle a blue square",
        "a red circle and a blue square and a green star",
        "a red circle left of",
        "a red circle left a blue square",
        "a red circle next to a blue square",
        "there are a red circle",
        "there is two red circles",
        "there a red circle",
        "a picture a red circle",
        "four red circles",
        "<start> <end>",
    ],
)
def test_ungrammatical_captions_are_not_parsed(caption):
    assert shapes.check_caption(caption, _one_object_scene()) == shapes.CaptionCheck(
        parsed=False, correct=False, complete=False
    )


@pytest.mark.parametrize(
    "caption",
    [
        "<start> A Large RED circle. <end>",
        "<START> there is a red circle <END>",
        "  The image shows:   a red   CIRCLE!! ",
        "a picture of one large red circle.",
    ],
)
def test_case_punctuation_and_markers_are_tolerated(caption):
    assert shapes.check_caption(caption, _one_object_scene()).exact


def test_comma_lists_parse_like_plain_lists():
    scene = {
        "image_size": 64,
        "objects": [
            _obj("red", "circle", "small", [2, 2, 15, 15]),
            _obj("blue", "square", "large", [30, 2, 53, 25]),
            _obj("green", "star", "small", [2, 40, 15, 53]),
        ],
    }
    for caption in (
        "a red circle, a blue square and a green star",
        "a red circle a blue square , and a green star",
        "a green star and a red circle to the left of a large blue square",
    ):
        assert shapes.check_caption(caption, scene).exact, caption
    wrong = "a red circle right of a blue square and a green star"
    assert not shapes.check_caption(wrong, scene).correct


def test_tokenize_and_check_result():
    assert shapes.tokenize("<start> Two RED circles, and a star! <end>") == [
        "two", "red", "circles", "and", "a", "star",
    ]  # fmt: skip
    verdict = shapes.CaptionCheck(parsed=True, correct=True, complete=False)
    assert not verdict.exact
    with pytest.raises(AttributeError):
        verdict.correct = False  # frozen: verdicts cannot be edited by accident


# --------------------------------------------------------------------------- the dataset on disk


@pytest.mark.parametrize("num_images", [1, 3, 4, 5, 19, 20, 101, 10_000])
def test_split_sizes(num_images):
    sizes = shapes.split_sizes(num_images)
    assert list(sizes) == ["train", "val", "test", "test_novel"]
    assert sum(sizes.values()) == num_images and min(sizes.values()) >= 0
    if num_images >= 4:
        assert min(sizes.values()) >= 1
    if num_images == 10_000:
        assert sizes == {"train": 7500, "val": 1000, "test": 1000, "test_novel": 500}


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> pathlib.Path:
    """A small dataset written once for the tests that only read it."""
    return shapes.write_dataset(tmp_path_factory.mktemp("shapes") / "data", 200, seed=5)


def test_dataset_follows_the_karpathy_format(written):
    dataset = json.loads(written.read_text())
    assert dataset["dataset"] == "shapes" and dataset["seed"] == 5 and dataset["image_size"] == 64
    images = dataset["images"]
    assert [image["imgid"] for image in images] == list(range(200))
    splits = collections.Counter(image["split"] for image in images)
    assert splits == shapes.split_sizes(200)
    all_sentids = [s for image in images for s in image["sentids"]]
    assert len(set(all_sentids)) == len(all_sentids)
    for image in images:
        assert (written.parent / image["filepath"] / image["filename"]).is_file()
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
        for sentence in image["sentences"]:
            assert sentence["imgid"] == image["imgid"]
            assert sentence["tokens"] == shapes.tokenize(sentence["raw"])
            assert shapes.check_caption(sentence["raw"], image["scene"]).exact


def test_heldout_pairs_appear_only_in_test_novel(written):
    dataset = json.loads(written.read_text())
    heldout = {tuple(pair) for pair in dataset["heldout_pairs"]}
    assert heldout == set(shapes.HELDOUT_PAIRS)
    assert {c for c, _ in heldout} == set(shapes.COLOURS)
    assert {s for _, s in heldout} == set(shapes.SHAPES)
    for image in dataset["images"]:
        pairs = {(obj["colour"], obj["shape"]) for obj in image["scene"]["objects"]}
        if image["split"] == "test_novel":
            assert pairs & heldout
        else:
            assert not pairs & heldout


def test_same_arguments_give_identical_files_and_another_seed_differs(tmp_path):
    first = shapes.write_dataset(tmp_path / "a", 30, seed=11).parent
    second = shapes.write_dataset(tmp_path / "b", 30, seed=11).parent
    other = shapes.write_dataset(tmp_path / "c", 30, seed=12).parent
    assert _files(first) == _files(second)
    assert _files(first)["dataset_shapes.json"] != _files(other)["dataset_shapes.json"]
    assert _files(first)["images/shapes_000000.png"] != _files(other)["images/shapes_000000.png"]


def test_images_do_not_depend_on_how_many_are_written(tmp_path):
    small = shapes.write_dataset(tmp_path / "small", 8, seed=3).parent
    large = shapes.write_dataset(tmp_path / "large", 9, seed=3).parent
    # Image 0 is in train in both, so it is drawn from the same (seed, index) streams.
    name = "images/shapes_000000.png"
    assert _files(small)[name] == _files(large)[name]


def test_an_existing_dataset_is_reused(tmp_path, monkeypatch, capsys):
    json_path = shapes.write_dataset(tmp_path / "data", 12, seed=1)
    before = json_path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the dataset was generated again")

    monkeypatch.setattr(shapes, "_fill_folder", fail)
    assert shapes.write_dataset(tmp_path / "data", 12, seed=1) == json_path
    assert json_path.stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().out


def test_a_different_dataset_is_kept_unless_overwrite(tmp_path):
    json_path = shapes.write_dataset(tmp_path / "data", 12, seed=1)
    with pytest.raises(shapes.DatasetExistsError):
        shapes.write_dataset(tmp_path / "data", 12, seed=2)
    assert json.loads(json_path.read_text())["seed"] == 1
    shapes.write_dataset(tmp_path / "data", 12, seed=2, overwrite=True)
    assert json.loads(json_path.read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(shapes.DatasetExistsError):
        shapes.write_dataset(tmp_path / "notes", 12, seed=1, overwrite=True)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    real_render = shapes.render_scene
    calls = []

    def render_then_fail(scene, rng):
        calls.append(scene)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if the reader pressed ^C halfway
        return real_render(scene, rng)

    monkeypatch.setattr(shapes, "render_scene", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        shapes.write_dataset(tmp_path / "data", 12, seed=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arguments",
    [
        dict(num_images=0, seed=1),
        dict(num_images=5, seed=-1),
        dict(num_images=5, seed=1, image_size=8),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, arguments):
    with pytest.raises(ValueError):
        shapes.write_dataset(tmp_path / "data", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_mentioning_one_object_twice_is_not_correct():
    scene = {"image_size": 64, "objects": [
        {"shape": "circle", "colour": "red", "size": "small", "bbox": [2, 2, 15, 15]},
        {"shape": "square", "colour": "blue", "size": "large", "bbox": [30, 30, 53, 53]},
    ]}
    assert shapes.check_caption("a red circle and a blue square", scene).exact
    repeated = shapes.check_caption("a red circle , a red circle and a blue square", scene)
    assert repeated.parsed and not repeated.correct


def test_mentions_point_each_noun_at_its_objects():
    scene = {"image_size": 64, "objects": [
        {"shape": "circle", "colour": "red", "size": "small", "bbox": [2, 2, 15, 15]},
        {"shape": "square", "colour": "blue", "size": "large", "bbox": [30, 30, 53, 53]},
        {"shape": "square", "colour": "blue", "size": "small", "bbox": [40, 2, 53, 15]},
    ]}
    found = shapes.mentions("<start> the image shows a red circle left of two blue squares", scene)
    assert found == [(5, [0]), (10, [1, 2])]
    assert shapes.mentions("circle red a", scene) is None


def test_phrasings_are_distinct_true_complete_captions_of_the_kind_asked():
    rng = np.random.default_rng(4)
    scene = shapes.generate_scene(rng, 64, min_objects=2, max_objects=2)
    while not shapes.phrasings(scene, True, rng, draws=50):  # a scene where a relation holds
        scene = shapes.generate_scene(rng, 64, min_objects=2, max_objects=2)
    for relation in (False, True):
        found = shapes.phrasings(scene, relation, np.random.default_rng(0))
        assert found == sorted(set(found)) and len(found) > 3
        for caption in found:
            assert shapes.check_caption(caption, scene).exact
            assert bool(shapes.stated_relations(caption, scene)) == relation
    one = shapes.generate_scene(rng, 64, min_objects=1, max_objects=1)
    assert shapes.phrasings(one, True, rng) == []
    assert "a" in " ".join(shapes.phrasings(one, False, rng)).split()
