"""Exporting a captioner: round trip, mismatched pieces, crash-safe saving, new image files."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils import export  # noqa: E402
from utils.captioner import FastCaptioner, build_captioner  # noqa: E402
from utils.text import Vocabulary  # noqa: E402

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "and"]


def tiny_captioner(vocab_size, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_captioner(vocab_size, filters=(8, 8, 16), embed_dim=8, units=16, attention_units=8,
                      jit_decoder=False)
    model((np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 1), np.int32)))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    vocabulary = Vocabulary(WORDS)
    model = tiny_captioner(len(vocabulary))
    rng = np.random.default_rng(0)
    files = []
    for index, (height, width, suffix) in enumerate([(64, 64, "png"), (90, 120, "png"),
                                                     (48, 40, "jpg")]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        files.append(folder / f"image{index}.{suffix}")
        Image.fromarray(pixels).save(files[-1])
    path = export.save_captioner(model, vocabulary, folder / "captioner", image_size=64,
                                 max_length=7, profile="smoke", extra={"seed": 3})
    return model, vocabulary, path, files


def test_layout_and_metadata(saved):
    _, vocabulary, path, _ = saved
    assert sorted(p.name for p in path.iterdir()) == ["export.json", "model.keras",
                                                      "vocabulary.json"]
    metadata = json.loads((path / "export.json").read_text())
    assert metadata["image_size"] == 64 and metadata["max_length"] == 7
    assert metadata["profile"] == "smoke" and metadata["extra"] == {"seed": 3}
    assert metadata["vocabulary_size"] == len(vocabulary) == 12
    assert metadata["vocabulary_sha256"] == export.vocabulary_hash(vocabulary.words)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_round_trip_gives_identical_captions_and_attention(saved):
    model, vocabulary, path, files = saved
    loaded = export.load_captioner(path.parent / "captioner")
    assert isinstance(loaded.model, FastCaptioner) and loaded.vocabulary.words == vocabulary.words
    from utils.images import load_rgb
    from utils.train import caption_images

    pixels = np.stack([load_rgb(f, 64) for f in files])
    expected, expected_attention = caption_images(model, pixels, vocabulary, 7, beam_size=2)
    results = export.caption(loaded, files, beam_size=2)
    assert [text for text, _ in results] == expected
    for (text, attention), full in zip(results, expected_attention):
        rows = min(len(text.split()) + 1, 7)
        assert attention.shape == (rows, 64)
        np.testing.assert_array_equal(attention, full[:rows])
    # a path works as well as a loaded captioner, and a run folder as well as the export
    again = export.caption(path.parent, files[:1], beam_size=2)
    assert again[0][0] == expected[0]


def test_images_of_other_sizes_and_formats_are_resized(saved):
    _, _, path, files = saved
    results = export.caption(path, files[1:])  # a 120x90 PNG and a 40x48 JPEG
    assert len(results) == 2
    for text, attention in results:
        assert isinstance(text, str) and attention.shape[1] == 64
        np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)


def copy_of(path, tmp_path):
    target = tmp_path / "captioner"
    shutil.copytree(path, target)
    return target


def test_a_different_vocabulary_is_refused_naming_what_differs(saved, tmp_path):
    _, vocabulary, path, _ = saved
    copy = copy_of(path, tmp_path)
    Vocabulary(WORDS[:-1]).save(copy / "vocabulary.json")
    with pytest.raises(export.ExportMismatchError, match="vocabulary.json.*11 words.*12"):
        export.load_captioner(copy)
    Vocabulary(list(reversed(WORDS))).save(copy / "vocabulary.json")  # same size, other ids
    with pytest.raises(export.ExportMismatchError, match="vocabulary.json.*words differ"):
        export.load_captioner(copy)
    with pytest.raises(export.ExportMismatchError, match="predicts 12 words.*vocabulary has 11"):
        export.save_captioner(saved[0], Vocabulary(WORDS[:-1]), tmp_path / "x", image_size=64)


def test_a_model_file_from_another_export_is_refused(saved, tmp_path):
    _, vocabulary, path, _ = saved
    other = export.save_captioner(tiny_captioner(len(vocabulary), seed=1), vocabulary,
                                  tmp_path / "other", image_size=64)
    copy = copy_of(path, tmp_path)
    shutil.copy(other / "model.keras", copy / "model.keras")
    with pytest.raises(export.ExportMismatchError, match="model.keras is not the model"):
        export.load_captioner(copy)
    with pytest.raises(FileNotFoundError, match="no captioner export"):
        export.load_captioner(tmp_path / "missing")


def test_a_crash_while_saving_leaves_the_previous_export_usable(saved, tmp_path, monkeypatch):
    model, vocabulary, path, files = saved
    target = copy_of(path, tmp_path)
    before = export.caption(target, files[:1])[0][0]
    other = tiny_captioner(len(vocabulary), seed=2)

    # 1. the crash comes while the new files are being written
    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(Vocabulary, "save", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        export.save_captioner(other, vocabulary, target, image_size=64, max_length=7)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioner"]  # no staging left
    assert export.caption(target, files[:1])[0][0] == before

    # 2. the crash comes between moving the old export aside and moving the new one in
    real_replace = export.os.replace
    calls = []

    def replace_then_crash(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(source, destination)

    monkeypatch.setattr(export.os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="power cut"):
        export.save_captioner(other, vocabulary, target, image_size=64, max_length=7)
    monkeypatch.undo()
    assert not target.exists()
    assert export.caption(target, files[:1])[0][0] == before  # found where it was moved aside

    # 3. the next save completes and replaces it
    export.save_captioner(other, vocabulary, target, image_size=64, max_length=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioner"]
    assert export.load_captioner(target).metadata["model_sha256"] != json.loads(
        (path / "export.json").read_text())["model_sha256"]


def test_a_folder_that_is_not_an_export_is_never_replaced(saved, tmp_path):
    model, vocabulary, _, _ = saved
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a captioner export"):
        export.save_captioner(model, vocabulary, tmp_path / "notes", image_size=64)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["thesis.tex"]


def test_an_unreadable_image_names_the_file(saved, tmp_path):
    from utils.images import ImageError

    _, _, path, files = saved
    (tmp_path / "page.jpg").write_text("<html>not found</html>")
    with pytest.raises(ImageError, match="page.jpg"):
        export.caption(path, [files[0], tmp_path / "page.jpg"])


def test_lazy_hook_for_utils_load_captioner():
    assert export.lazy_attribute("load_captioner") is export.load_captioner
    with pytest.raises(AttributeError, match="module 'utils' has no attribute 'nothing'"):
        export.lazy_attribute("nothing")
    import utils

    if "lazy_attribute" in utils.__getattr__.__code__.co_names:  # once utils/__init__ is wired
        assert utils.load_captioner is export.load_captioner
        with pytest.raises(AttributeError, match="no attribute 'nothing'"):
            utils.nothing  # noqa: B018
