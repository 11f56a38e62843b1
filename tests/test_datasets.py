"""The caption-dataset readers, on small files written here in exactly the real formats."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from utils import datasets, shapes, text
from utils.datasets import CaptionDataset, DatasetNotFoundError, DatasetWarning

FLICKR_CAPTIONS = {
    "1000268201_693b08cb0e.jpg": [
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "A girl going into a wooden building ."],
    "1001773457_577c3a7d70.jpg": ["A black dog and a spotted dog are fighting"],
    "1002674143_1b742ab4b8.jpg": ["A little girl covered in paint sits in front of a rainbow ."],
    "1003163366_44323f5815.jpg": ["A man lays on a bench while his dog sits by him ."],
    "1007129816_e794419615.jpg": ["A man in an orange hat starring at something ."],  # unsplit
}
SPLIT_LISTS = {
    "Flickr_8k.trainImages.txt": ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"],
    "Flickr_8k.devImages.txt": ["1002674143_1b742ab4b8.jpg"],
    "Flickr_8k.testImages.txt": ["1003163366_44323f5815.jpg"],
}


def write_image(path: pathlib.Path, value: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 100, 200)).save(path)


def write_flickr8k(root: pathlib.Path) -> pathlib.Path:
    """Flickr8k's own layout: the token file (with the bogus entry), split lists, JPEG images."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for filename, captions in FLICKR_CAPTIONS.items():
        lines += [f"{filename}#{n}\t{caption}" for n, caption in enumerate(captions)]
        write_image(root / "Flicker8k_Dataset" / filename)
    lines[2:2] = [f"2258277193_586949ec62.jpg.1#{n}\tA man is standing ." for n in range(5)]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for list_name, filenames in SPLIT_LISTS.items():
        (root / list_name).write_text("\n".join(filenames) + "\n", encoding="utf-8")
    return root


def karpathy_entry(filename, split, raws, imgid, **extra):
    sentences = [{"raw": raw, "tokens": text.standardize(raw), "imgid": imgid} for raw in raws]
    return {"filename": filename, "split": split, "sentences": sentences, "imgid": imgid, **extra}


def write_karpathy_coco(root: pathlib.Path) -> pathlib.Path:
    """COCO's Karpathy file: filepath per image, cocoid, and all four splits incl. restval."""
    entries = [
        karpathy_entry("COCO_val2014_000000000042.jpg", "test", ["A dog on a couch."], 0,
                       filepath="val2014", cocoid=42),
        karpathy_entry("COCO_val2014_000000000073.jpg", "restval", ["Two motorcycles, parked."], 1,
                       filepath="val2014", cocoid=73),
        karpathy_entry("COCO_train2014_000000000009.jpg", "train", ["A plate of food."], 2,
                       filepath="train2014", cocoid=9),
        karpathy_entry("COCO_val2014_000000000074.jpg", "val", ["A Café with tables."], 3,
                       filepath="val2014", cocoid=74),
    ]
    for entry in entries:
        write_image(root / entry["filepath"] / entry["filename"])
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}), encoding="utf-8")
    return path


def write_coco_captions(root: pathlib.Path) -> pathlib.Path:
    """COCO's own captions file in ``annotations/``, images in ``train2014/`` beside it."""
    data = {
        "info": {"year": 2014}, "licenses": [],
        "images": [{"id": n, "file_name": f"COCO_train2014_{n:012d}.jpg", "height": 8, "width": 8}
                   for n in (9, 25, 30)],
        "annotations": [{"image_id": 9, "id": 1, "caption": "A plate with food.\n"},
                        {"image_id": 25, "id": 2, "caption": "A giraffe eating leaves "},
                        {"image_id": 9, "id": 3, "caption": "Closeup of a dish"}],
    }
    path = root / "annotations" / "captions_train2014.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- Flickr8k's own files ------------------------------------------------------------------

def test_flickr8k_files_give_captions_splits_and_warnings(tmp_path):
    root = write_flickr8k(tmp_path / "flickr8k")
    with pytest.warns(DatasetWarning) as caught:
        data = datasets.read_flickr8k(root)
    messages = [str(w.message) for w in caught]
    assert any("2258277193_586949ec62.jpg.1" in m and "5 captions" in m for m in messages)
    assert any("1 images of Flickr8k.token.txt are in no split list" in m for m in messages)
    assert data.splits == {"train": 2, "val": 1, "test": 1}
    first = data[0]
    assert first.path == root / "Flicker8k_Dataset" / "1000268201_693b08cb0e.jpg"
    assert first.path.is_file() and first.split == "train"
    assert first.image_id == "1000268201_693b08cb0e"
    assert first.raw_captions == tuple(FLICKR_CAPTIONS["1000268201_693b08cb0e.jpg"])
    assert first.captions[1] == ["a", "girl", "going", "into", "a", "wooden", "building"]
    assert [image.path.name for image in data.split("val")] == ["1002674143_1b742ab4b8.jpg"]


def test_flickr8k_malformed_line_is_named_by_file_and_line(tmp_path):
    root = write_flickr8k(tmp_path / "flickr8k")
    token_file = root / "Flickr8k.token.txt"
    lines = token_file.read_text().splitlines()
    lines[3] = "1001773457_577c3a7d70.jpg A black dog without a tab"
    token_file.write_text("\n".join(lines))
    expected = r"Flickr8k.token.txt, line 4: expected 'IMAGE.jpg#N<TAB>caption'"
    with pytest.raises(ValueError, match=expected):
        datasets.read_flickr8k(root)


@pytest.mark.filterwarnings("ignore::utils.datasets.DatasetWarning")
def test_flickr8k_missing_split_list_and_double_listed_image(tmp_path):
    root = write_flickr8k(tmp_path / "flickr8k")
    (root / "Flickr_8k.devImages.txt").write_text("1000268201_693b08cb0e.jpg\n")
    expected = r"devImages.txt, line 1: 1000268201_693b08cb0e.jpg is already in the 'train' split"
    with pytest.raises(ValueError, match=expected):
        datasets.read_flickr8k(root)
    (root / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Flickr_8k.devImages.txt not found"):
        datasets.read_flickr8k(root)


# --- Karpathy JSON -------------------------------------------------------------------------

def test_karpathy_flickr8k_json_with_image_root(tmp_path):
    entries = [karpathy_entry("1000268201_693b08cb0e.jpg", "train", ["A child climbing ."], 0),
               karpathy_entry("1002674143_1b742ab4b8.jpg", "test", ["A girl, in paint!"], 1)]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    data = datasets.read_karpathy(path, tmp_path / "Flicker8k_Dataset")
    assert data.name == "flickr8k" and data.splits == {"train": 1, "test": 1}
    assert data[1].path == tmp_path / "Flicker8k_Dataset" / "1002674143_1b742ab4b8.jpg"
    assert data[1].captions == [["a", "girl", "in", "paint"]]
    assert data[1].raw_captions == ("A girl, in paint!",) and data[1].image_id == 1


def test_karpathy_coco_filepath_ids_and_restval(tmp_path):
    path = write_karpathy_coco(tmp_path)
    folded = datasets.read_karpathy(path)
    assert folded.splits == {"train": 2, "val": 1, "test": 1}
    assert [image.image_id for image in folded.split("train")] == [73, 9]
    assert folded[0].path == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert folded[0].path.is_file() and folded[2].path.parent.name == "train2014"
    assert folded.split("val")[0].captions == [["a", "café", "with", "tables"]]  # non-ASCII kept
    kept = datasets.read_karpathy(path, fold_restval=False)
    assert kept.splits == {"train": 1, "val": 1, "test": 1, "restval": 1}


@pytest.mark.parametrize("content, problem", [
    ('{"images": [', "is not valid JSON: Expecting value: line 1 column 13"),
    ('[1, 2]', "is not a Karpathy-format caption file: it has no 'images' list"),
    ('{"images": [{"filename": "a.jpg", "split": "train"}]}', "image entry #0 lacks 'sentences'"),
    ('{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"imgid": 0}]}]}',
     r"image entry #0 \(a.jpg\): a sentence has neither 'raw' text nor a 'tokens' list"),
])
def test_karpathy_malformed_files_are_named_with_the_problem(tmp_path, content, problem):
    path = tmp_path / "dataset_coco.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as raised:
        datasets.read_karpathy(path)
    assert str(path) in str(raised.value)


def test_karpathy_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption file not found: .*dataset_flickr30k.json"):
        datasets.read_karpathy(tmp_path / "dataset_flickr30k.json")


# --- COCO captions JSON --------------------------------------------------------------------

def test_coco_captions_split_from_name_and_images_beside_annotations(tmp_path):
    path = write_coco_captions(tmp_path)
    with pytest.warns(DatasetWarning, match="1 images of captions_train2014.json have no caption"):
        data = datasets.read_coco_captions(path)
    assert data.splits == {"train": 2}
    food = data[0]
    assert food.image_id == 9
    assert food.path == tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
    assert food.raw_captions == ("A plate with food.", "Closeup of a dish")
    assert food.captions == [["a", "plate", "with", "food"], ["closeup", "of", "a", "dish"]]


def test_coco_captions_errors(tmp_path):
    path = write_coco_captions(tmp_path)
    renamed = path.rename(path.with_name("my_captions.json"))
    with pytest.raises(ValueError, match="cannot tell the split and image folder of my_capt"):
        datasets.read_coco_captions(renamed)
    data = json.loads(renamed.read_text())
    data["annotations"].append({"image_id": 99, "id": 4, "caption": "Nothing"})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotations entry #3 refers to image id 99"):
        datasets.read_coco_captions(path)
    path.write_text(json.dumps({"images": [], "annotations": {}}))
    with pytest.raises(ValueError, match="'annotations' should be a list, found dict"):
        datasets.read_coco_captions(path)


# --- the view ------------------------------------------------------------------------------

def test_caption_dataset_behaves_like_a_list_that_knows_its_splits(tmp_path):
    data = datasets.read_karpathy(write_karpathy_coco(tmp_path), fold_restval=False)
    assert len(data) == 4 and [i.image_id for i in data] == [42, 73, 9, 74]
    assert isinstance(data[1:], CaptionDataset) and len(data[1:]) == 3
    assert repr(data) == "CaptionDataset('coco', 4 images: train 1, val 1, test 1, restval 1)"
    assert data.split("restval").splits == {"restval": 1}
    expected = "coco has no split 'dev'; its splits are: train, val, test, restval"
    with pytest.raises(ValueError, match=expected):
        data.split("dev")


# --- load_dataset --------------------------------------------------------------------------

def test_load_dataset_reads_each_layout(tmp_path):
    with pytest.warns(DatasetWarning):
        flickr = datasets.load_dataset("flickr8k", write_flickr8k(tmp_path / "flickr8k"))
    assert flickr.splits == {"train": 2, "val": 1, "test": 1}
    write_karpathy_coco(tmp_path / "coco")
    coco = datasets.load_dataset("coco", tmp_path / "coco")
    assert coco.splits == {"train": 2, "val": 1, "test": 1}
    assert all(image.path.is_file() for image in coco)
    kept = datasets.load_dataset("coco", tmp_path / "coco", fold_restval=False)
    assert kept.splits["restval"] == 1
    root30k = tmp_path / "flickr30k"
    (root30k / "flickr30k-images").mkdir(parents=True)
    entries = [karpathy_entry("1000092795.jpg", "train", ["Two young guys with shaggy hair ."], 0)]
    (root30k / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    flickr30k = datasets.load_dataset("flickr30k", root30k)
    assert flickr30k[0].path == root30k / "flickr30k-images" / "1000092795.jpg"


def test_load_dataset_default_root_is_under_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_DATA", str(tmp_path))
    write_karpathy_coco(tmp_path / "coco")
    assert len(datasets.load_dataset("coco")) == 4


def test_missing_dataset_names_urls_files_and_folder(tmp_path):
    root = tmp_path / "flickr8k"
    with pytest.raises(DatasetNotFoundError) as raised:
        datasets.load_dataset("flickr8k", root)
    message = str(raised.value)
    assert message.startswith(f"Flickr8k was not found in {root}: missing Flickr8k.token.txt")
    assert "Flicker8k_Dataset/" in message and "load_dataset('flickr8k', download=True)" in message
    assert "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip" \
        in message
    assert f"  {root / 'Flickr_8k.devImages.txt'}\n" in message
    assert f"  {root / 'Flicker8k_Dataset'}/\n" in message
    expected = (r"(?s)missing dataset_coco.json, train2014/, val2014/.*"
                r"deepimagesent/caption_datasets.zip.*zips/train2014.zip")
    with pytest.raises(DatasetNotFoundError, match=expected):
        datasets.load_dataset("coco", tmp_path / "coco")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)flickr30k-images/.*request form"):
        datasets.load_dataset("flickr30k", tmp_path / "f30k", download=False)
    with pytest.raises(DatasetNotFoundError, match="python -m utils shapes --out"):
        datasets.load_dataset("shapes", tmp_path / "shapes", download=True)
    with pytest.raises(ValueError, match="unknown dataset 'flickr9k'; choose one of: shapes, flic"):
        datasets.load_dataset("flickr9k")


def test_load_dataset_download_fetches_the_missing_files(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(name, folder):  # stands in for the network: puts the files in place
        fetched.append((name, folder))
        write_karpathy_coco(folder)

    monkeypatch.setattr(datasets, "fetch", fake_fetch)
    data = datasets.load_dataset("coco", tmp_path / "coco", download=True)
    assert fetched == [("coco", tmp_path / "coco")] and len(data) == 4
    datasets.load_dataset("coco", tmp_path / "coco", download=True)
    assert len(fetched) == 1  # present files are not fetched again


# --- chapter 5's helpers on Shapes ---------------------------------------------------------

def test_chapter5_helpers_still_work_on_shapes(tmp_path):
    json_path = shapes.write_dataset(tmp_path / "shapes", 40, seed=0)
    records = datasets.load_karpathy(json_path)
    assert len(records) == 40 and all(r.scene for r in records)
    train = datasets.split(records, "train")
    assert train and all(r.split == "train" for r in train)
    stored = json.loads(json_path.read_text())["images"]
    assert records[0].captions == [s["tokens"] for s in stored[0]["sentences"]]
    pixels = datasets.load_pixels(train[:3])
    assert pixels.shape == (3, 64, 64, 3) and pixels.dtype == np.uint8
    vocabulary = text.Vocabulary.from_captions(c for r in train for c in r.captions)
    encoded = datasets.encode_split(train, vocabulary, 18, "train")
    assert encoded.captions.shape == (len(train), 5, 18) and encoded.scenes is not None
    view = datasets.load_dataset("shapes", json_path.parent)
    assert view.name == "shapes" and len(view) == 40
    from_view = datasets.encode_split(view.split("train"), vocabulary, 18, "train")
    np.testing.assert_array_equal(from_view.captions, encoded.captions)
    assert from_view.references == encoded.references
