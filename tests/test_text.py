import numpy as np
import pytest

from utils.text import Vocabulary, standardize


def test_standardize_lowercases_strips_punctuation_keeps_non_ascii():
    assert standardize("A Red circle, left of: a CAFÉ!") == ["a", "red", "circle", "left", "of", "a", "café"]
    assert standardize("<start> a dog <end>") == ["<start>", "a", "dog", "<end>"]
    assert standardize("  ") == []


def test_vocabulary_order_is_deterministic_and_specials_come_first():
    captions = [["b", "a"], ["a", "c"], ["c", "a"]]
    vocab = Vocabulary.from_captions(captions)
    assert vocab.words == ["<pad>", "<unk>", "<start>", "<end>", "a", "c", "b"]
    assert Vocabulary.from_captions(list(reversed(captions))).words == vocab.words


def test_min_count_sends_rare_words_to_unk():
    vocab = Vocabulary.from_captions([["a", "b"], ["a"]], min_count=2)
    assert vocab.encode(["a", "b"], 6) == [2, 4, 1, 3, 0, 0]


def test_encode_decode_round_trip_and_truncation_keeps_end():
    vocab = Vocabulary.from_captions([["a", "red", "circle"]])
    ids = vocab.encode(["a", "red", "circle"], 8)
    assert vocab.decode(ids) == "a red circle"
    short = vocab.encode(["a", "red", "circle"], 4)
    assert short[0] == vocab.start_id and short[-1] == vocab.end_id and len(short) == 4
    assert vocab.decode(short) == "a red"
    with pytest.raises(ValueError):
        vocab.encode(["a"], 1)


def test_save_and_load(tmp_path):
    vocab = Vocabulary.from_captions([["x", "y", "y"]])
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words


TRICKY = [
    "A red circle, left of: a CAFÉ!",
    "<start> a dog <end>",
    "Ein Hund läuft über die Straße — schnell.",
    "一只猫坐在垫子上。",
    "e\u0301te\u0301 (decomposed accents)",
    "emoji 🐶 and symbols $5 & #tags",
    "tabs\tand\nnewlines   and  spaces",
    "under_score stays; hyphen-ated splits",
]


def test_tensorflow_standardization_agrees_with_python():
    tf = pytest.importorskip("tensorflow")
    from utils.text import tf_standardize

    for caption in TRICKY:
        ours = standardize(caption)
        theirs = tf_standardize(tf.constant(caption)).numpy().decode("utf-8").split()
        assert theirs == ours, caption
    assert standardize(TRICKY[3]) == ["一只猫坐在垫子上"]


def test_text_vectorization_encodes_like_the_vocabulary():
    tf = pytest.importorskip("tensorflow")
    captions = ["A red circle left of a blue square.", "two green stars", "a café",
                "a red circle a red circle a red circle a red circle a red circle", "unknown words here"]
    vocab = Vocabulary.from_captions(standardize(c) for c in captions[:3])
    layer = vocab.text_vectorization(10)
    ids = layer(tf.constant(captions)).numpy()
    assert ids.shape == (5, 10)
    for caption, row in zip(captions, ids):
        assert row.tolist() == vocab.encode(standardize(caption), 10), caption
    assert ids[3, -1] == vocab.end_id  # a long caption keeps its <end>
    # and it works inside a tf.data pipeline
    data = tf.data.Dataset.from_tensor_slices(captions).batch(2).map(layer)
    assert np.concatenate([b.numpy() for b in data]).tolist() == ids.tolist()
