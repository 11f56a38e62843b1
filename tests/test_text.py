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
