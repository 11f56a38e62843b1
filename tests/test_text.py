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
    with pytest.raises(ValueError, match=r"^length must leave room for <start> and <end>, got 1$"):
        vocab.encode(["a"], 1)


def test_save_and_load(tmp_path):
    vocab = Vocabulary.from_captions([["x", "y", "y"]])
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words


def test_decode_skips_start_stops_at_end_or_padding_and_names_unknown_ids():
    vocab = Vocabulary(["a", "dog"])
    assert len(vocab) == 6 and vocab.words[4:] == ["a", "dog"]
    assert vocab.decode([2, 4, 5, 3, 4]) == "a dog"  # nothing after <end>
    assert vocab.decode([4, 2, 5, 0, 5]) == "a dog"  # <start> anywhere is skipped; 0 stops
    assert vocab.decode([4, 1, 6, -1, 99]) == "a <unk> <unk> <unk> <unk>"
    assert vocab.decode([]) == ""
    assert vocab.decode(np.array([4, 5], np.int64)) == "a dog"


def test_encode_fits_start_and_end_into_two_positions():
    vocab = Vocabulary(["a"])
    assert vocab.encode(["a", "a"], 2) == [2, 3]
    assert vocab.encode([], 3) == [2, 3, 0]
    assert vocab.encode(["b"], 4) == [2, 1, 3, 0]


def test_specials_are_not_repeated_when_given():
    assert Vocabulary(["<pad>", "<unk>", "<start>", "<end>", "x"]).words[4:] == ["x"]
    assert Vocabulary(["x", "<end>", "y"]).words == ["<pad>", "<unk>", "<start>", "<end>", "x", "y"]


def test_saved_vocabulary_is_readable_utf8(tmp_path):
    vocab = Vocabulary.from_captions([["café", "猫", "café"]])
    vocab.save(tmp_path / "vocab.json")
    text = (tmp_path / "vocab.json").read_text(encoding="utf-8")
    assert '"café"' in text and '"猫"' in text  # the words themselves, not \\u escapes
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words == [
        "<pad>", "<unk>", "<start>", "<end>", "café", "猫"]


def test_a_special_entry_listed_twice_keeps_its_one_id():
    vocabulary = Vocabulary(["<pad>", "<unk>", "<start>", "<end>", "a", "<unk>"])
    assert vocabulary.words == ["<pad>", "<unk>", "<start>", "<end>", "a"]
    assert vocabulary.encode(["<unk>", "a"], 4) == [2, 1, 4, 3]


def test_saved_vocabulary_has_one_word_per_line_and_no_indent(tmp_path):
    Vocabulary(["x", "y"]).save(tmp_path / "vocab.json")
    lines = (tmp_path / "vocab.json").read_text(encoding="utf-8").split("\n")
    assert lines == ["{", '"words": [', '"<pad>",', '"<unk>",', '"<start>",', '"<end>",', '"x",',
                     '"y"', "]", "}"]


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
    # one string of words joined by single spaces, like " ".join(standardize(...))
    assert tf_standardize(tf.constant(" A,  red\t\tcircle! ")).numpy().decode() == "a red circle"


def test_text_vectorization_encodes_like_the_vocabulary():
    tf = pytest.importorskip("tensorflow")
    captions = ["A red circle left of a blue square.", "two green stars", "a café",
                "a red circle a red circle a red circle a red circle a red circle", "unknown words here",
                "a café—red circle"]  # a dash that Keras' own standardisation would keep
    vocab = Vocabulary.from_captions(standardize(c) for c in captions[:3])
    layer = vocab.text_vectorization(10)
    ids = layer(tf.constant(captions)).numpy()
    assert ids.shape == (6, 10)
    for caption, row in zip(captions, ids):
        assert row.tolist() == vocab.encode(standardize(caption), 10), caption
    assert ids[3, -1] == vocab.end_id  # a long caption keeps its <end>
    # and it works inside a tf.data pipeline
    data = tf.data.Dataset.from_tensor_slices(captions).batch(2).map(layer)
    assert np.concatenate([b.numpy() for b in data]).tolist() == ids.tolist()
