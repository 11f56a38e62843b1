import random

import pytest

from utils.metrics import corpus_bleu


def test_perfect_match_scores_one():
    refs = {0: ["a red circle left of a blue square"], 1: ["two green stars"]}
    scores = corpus_bleu(refs, {0: "a red circle left of a blue square", 1: "two green stars"})
    assert scores == pytest.approx([1.0] * 4, abs=1e-6)


def test_hand_computed_bleu():
    # candidate "a red circle": unigram 3/3, bigram 2/2; reference length 5 -> BP = e^(1-5/3)
    scores = corpus_bleu({0: ["a red circle and square"]}, {0: "a red circle"}, max_n=2)
    penalty = 2.718281828459045 ** (1 - 5 / 3)
    assert scores[0] == pytest.approx(penalty, rel=1e-6)
    assert scores[1] == pytest.approx(penalty, rel=1e-6)


def test_metric_is_on_words_not_case_or_punctuation():
    assert corpus_bleu({0: ["A red circle."]}, {0: "a red circle"})[0] == pytest.approx(1.0)


def test_matches_coco_caption_toolkit_on_random_corpora():
    bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    rng = random.Random(0)
    words = "a red blue circle square left of and two the above".split()
    for _ in range(30):
        refs = {i: [" ".join(rng.choices(words, k=rng.randint(2, 9))) for _ in range(rng.randint(1, 5))]
                for i in range(rng.randint(1, 15))}
        cands = {i: " ".join(rng.choices(words, k=rng.randint(1, 9))) for i in refs}
        theirs, _ = bleu.Bleu(4).compute_score(refs, {i: [c] for i, c in cands.items()}, verbose=0)
        assert corpus_bleu(refs, cands) == pytest.approx(theirs, abs=1e-9)


def test_candidate_without_reference_is_an_error():
    with pytest.raises(KeyError):
        corpus_bleu({0: ["a"]}, {1: "a"})
