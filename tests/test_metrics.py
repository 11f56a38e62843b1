"""utils.metrics: hand-computed anchors for the book, and equality with the COCO caption toolkit.

The toolkit's Java programs (its PTBTokenizer, its METEOR wrapper) are the reference. Most tests
read their answers from golden files recorded from the real jars (``tests/golden/``, the
``java_replay`` fixture of conftest.py; ``BOOK_RECORD_GOLDEN=1`` records them again); tests
marked ``java`` run the jars themselves and are skipped without Java.
"""
import functools
import locale
import math
import os
import random
import re
import pathlib
import signal
import subprocess
import sys
import time
import types

import pytest

from utils import metrics
from utils.metrics import (CiderDScorer, bleu, bleu_counts, bleu_from_counts, cider_d, corpus_bleu,
                           evaluate_captions, lcs_length, ptb_tokenize, ptb_tokenize_batch, rouge_l)

TOOLKIT_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")

# --- caption-like text, with what makes tokenisation hard ---------------------------------------

WORDS = ("a an the man woman dog dogs cat is are sitting on red blue two of with in near next to "
         "it he she they people bus street riding horse table pizza white black young old group "
         "playing frisbee kite beach water boat train sign").split()
HARD = ["don't", "it's", "dog's", "they're", "we'll", "I'm", "can't", "won't", "isn't", "dogs'",
        "o'clock", "rock'n'roll", "'90s", "gonna", "cannot", "well-known", "t-shirt", "3-year-old",
        "x-ray", "1,000", "3.5", "12:30", "5 1/2", "50%", "$5", "#1", "Mr.", "Dr.", "U.S.", "a.m.",
        "etc.", "St.", "No. 5", "e.g.", "b.", "A", "I", "(red)", "[x]", "{y}", '"quoted"',
        "'single'", "it’s", "“curly”", "and/or", "&", "...", "--", "-", "!!", "?!", ";", ":",
        "café", "naïve", "the the the", "AT&T", ":)", "<b>", "½", "—"]
ATTACHED = [".", ",", "!", "?", ";", ":", "'s", "'", '"', ")", "...", "-", "n't"]
TRICKY = [
    "A man's dog. Don't they're?", "can't won't shan't ain't isn't aren't don'ts DON'T He'S",
    "dogs' toys James's hat 'em 'til 'cause '90s 90's ma'am goin' ol' rock'n'roll y'all o'neil",
    "it’s don’t ‘single’ “double” the dog’s ball",
    "well-known e-mail x-ray t-shirt 3-year-old 10-15",
    "- -- --- word- -word up-to-date re-enter anti- pro- a -b dog - cat a ----- b",
    "The end. Mr. Smith Mrs. Jones Dr. Who St. Louis Jr. etc. e.g. i.e. a.m. p.m. U.S. T.V. tv.",
    "3.5 ... .... . . . No. 5 fig. 3 ca. 1900 approx. 50 art. 2 no.",
    "a, b; c: d! e? f!! g?! h?. i , j .k l.m. end.", "\"word\" 'word' `word' ''word'' \"a\" 'a'",
    "( a ) [ b ] { c } < d > (e) [f] {g} <h> <a b='c'> <br/>",
    "1,000 3.5 1/2 5 1/2 12:30 2nd 1990s 10am 10:30pm 555-1234 50% $5 US$ £5 €5 -5 +5 .5 ¼ ½",
    "& + = * / \\ | ~ ^ @ _ a&b AT&T S&P-500 and/or black/white 24/7 w/ a_b",
    "café naïve façade jalapeño Über Straße 猫", "   leading and trailing spaces \t tab",
    "www.example.com http://x.com/a b@c.com @user #tag c++ c#",
    "cannot gonna gotta wanna lemme gimme 'tis 'twas Cannot GONNA",
    "A MAN RIDING A HORSE. A Man Riding A Horse.", "the letter b.", "A dog", "the letter c.",
    "a dog", "U.S.", "The end", "Inc. The cat", ":) :( ;) :-) :D ^_^ (^_^)", "photo.jpg 1.jpg 12.x",
    "", ".", "!?", "a", "A.", "'", "the the the the", "5 1/2 cups of 2 1/2 year old",
    "emoji 😀 here", "&amp; &AMP; caf&eacute; &#123;", "A‘\u00adñ x \u00ada’a so\u00adft",
    "e\u0301te\u0301",
]


def caption(rng: random.Random) -> str:
    if rng.random() < 0.04:
        return rng.choice(["", " ", ".", "!?", "a", "A.", "the", "..."])
    words = []
    for _ in range(rng.randint(1, 12)):
        word = rng.choice(HARD) if rng.random() < 0.25 else rng.choice(WORDS)
        case = rng.random()
        word = word.upper() if case < 0.05 else word.capitalize() if case < 0.15 else word
        words.append(word + rng.choice(ATTACHED) if rng.random() < 0.12 else word)
    text = words[0]
    for word in words[1:]:
        text += rng.choice([" "] * 12 + ["", "  "]) + word
    return text + rng.choice(["", "", ".", " .", "!"])


def corpus(seed: int, images: int) -> tuple[dict, dict]:
    """References (1-6 per image) and candidates: new captions, copies of a reference, and
    degenerate ones (empty, one word, a repeated word)."""
    rng = random.Random(seed)
    references = {f"im{i}": [caption(rng) for _ in range(rng.randint(1, 6))] for i in range(images)}
    candidates = {}
    for image, refs in references.items():
        kind = rng.random()
        if kind < 0.15:
            candidates[image] = rng.choice(refs)
        elif kind < 0.25:
            candidates[image] = rng.choice(["", "a", "dog", "the the the"])
        else:
            candidates[image] = caption(rng)
    return references, candidates


# --- the toolkit, for comparison -----------------------------------------------------------------

def java_tokenize(captions: list[str]) -> list[str]:
    """The toolkit's PTBTokenizer (Java) on a batch of captions, one line per caption: it
    tokenises them as one file, so a caption's last token may depend on the next one."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    lines = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [lines[i][0] for i in range(len(captions))]


@pytest.fixture
def toolkit_tokenize(java_replay):
    """:func:`java_tokenize`, answered from tests/golden/ptb_tokenizer.json."""
    pytest.importorskip("pycocoevalcap")
    golden = java_replay("ptb_tokenizer")
    return lambda captions: golden.call(list(captions), java_tokenize)


def toolkit_inputs(references: dict, candidates: dict, tokenize) -> tuple[dict, dict]:
    """References and candidates tokenised as the toolkit does (each dict as one file), in the
    order evaluate_captions uses: ``{image: [tokenised reference, ...]}``, ``{image: [one]}``."""
    images = list(candidates)
    flat = iter(tokenize([r for i in images for r in references[i]]))
    gts = {i: [next(flat) for _ in references[i]] for i in images}
    res = dict(zip(images, ([line] for line in tokenize([candidates[i] for i in images]))))
    return gts, res


def toolkit_scores(references: dict, candidates: dict, tokenize) -> dict:
    """{metric: (corpus score, [per-image scores])} from pycocoevalcap with its PTBTokenizer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = toolkit_inputs(references, candidates, tokenize)
    bleu_scores, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"Bleu_{n + 1}": (bleu_scores[n], bleu_each[n]) for n in range(4)}
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        value, each = scorer.compute_score(gts, res)
        scores[name] = (value, list(each))
    return scores


def java_meteor(inputs: dict) -> list:
    """The toolkit's own METEOR wrapper on ``{"gts": ..., "res": ...}``: [corpus, per-image]."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        value, each = scorer.compute_score(inputs["gts"], inputs["res"])
    finally:
        scorer.meteor_p.kill()  # its wrapper only stops Java when garbage-collected
    return [value, list(each)]


def assert_same_scores(ours: dict, theirs: dict, images: list) -> None:
    for name, (value, each) in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name
        assert [ours["per_image"][name][i] for i in images] == pytest.approx(each, abs=1e-9), name


# --- BLEU, by hand -------------------------------------------------------------------------------

def test_perfect_match_scores_one():
    refs = {0: ["a red circle left of a blue square"], 1: ["two green stars"]}
    scores = corpus_bleu(refs, {0: "a red circle left of a blue square", 1: "two green stars"})
    assert scores == pytest.approx([1.0] * 4, abs=1e-6)


def test_hand_computed_bleu():
    # candidate "a red circle": unigram 3/3, bigram 2/2; reference length 5 -> BP = e^(1-5/3)
    scores = corpus_bleu({0: ["a red circle and square"]}, {0: "a red circle"}, max_n=2)
    assert len(scores) == 2
    penalty = math.exp(1 - 5 / 3)
    assert scores[0] == pytest.approx(penalty, rel=1e-6)
    assert scores[1] == pytest.approx(penalty, rel=1e-6)


def test_bleu_clips_repeated_words_and_picks_the_closest_reference_length():
    # "the" occurs at most once in a reference, so "the the the" matches once: precision 1/3
    counts = bleu_counts("the the the".split(), ["the cat".split(), "a cat on the mat".split()])
    assert counts.matches == [1, 0, 0, 0] and counts.totals == [3, 2, 1, 0]
    assert counts.reference_length == 2  # |2 - 3| = 1 beats |5 - 3| = 2
    assert bleu_from_counts(counts)[0] == pytest.approx(1 / 3, rel=1e-6)  # no brevity penalty


def test_metric_is_on_words_not_case_or_punctuation():
    assert corpus_bleu({0: ["A red circle."]}, {0: "a red circle"})[0] == pytest.approx(1.0)


def test_matches_coco_caption_toolkit_on_random_corpora():
    bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    rng = random.Random(0)
    words = "a red blue circle square left of and two the above".split()
    for _ in range(30):
        refs = {i: [" ".join(rng.choices(words, k=rng.randint(2, 9)))
                    for _ in range(rng.randint(1, 5))] for i in range(rng.randint(1, 15))}
        cands = {i: " ".join(rng.choices(words, k=rng.randint(1, 9))) for i in refs}
        theirs, _ = bleu.Bleu(4).compute_score(refs, {i: [c] for i, c in cands.items()}, verbose=0)
        assert corpus_bleu(refs, cands) == pytest.approx(theirs, abs=1e-9)


def test_candidate_without_reference_is_an_error():
    with pytest.raises(KeyError, match=r"^\"candidates without references: \['1'\]\"$"):
        corpus_bleu({0: ["a"]}, {1: "a"})
    many = {i: "a" for i in range(1, 8)}  # seven without references: five are named
    with pytest.raises(KeyError, match=r"references: \['1', '2', '3', '4', '5'\]\"$"):
        corpus_bleu({0: ["a"]}, many)
    with pytest.raises(ValueError, match="^no candidates to evaluate$"):
        evaluate_captions({0: ["a"]}, {})


def test_bleu_gives_four_orders_unless_told():
    corpus, per_image = bleu(["a b c".split()], [["a b c".split()]])
    assert len(corpus) == 4 and [len(scores) for scores in per_image] == [4]
    corpus, per_image = bleu(["a b c".split()], [["a b c".split()]], max_n=2)
    assert len(corpus) == 2 and [len(scores) for scores in per_image] == [2]


# --- ROUGE-L and CIDEr-D, by hand ----------------------------------------------------------------

def test_lcs_by_hand():
    # "the cat on the mat" is a subsequence of "the cat sat on the mat": all 5 words
    assert lcs_length("the cat sat on the mat".split(), "the cat on the mat".split()) == 5
    # in both, in order: "the cat ... on ... mat" = 4 words
    assert lcs_length("the cat sat on the mat".split(), "the cat is on a mat".split()) == 4
    assert lcs_length("a b c".split(), "c b a".split()) == 1
    assert lcs_length([], "a b".split()) == 0


def test_rouge_l_by_hand():
    # LCS 5: precision 5/5, recall 5/6; F with beta = 1.2 weights recall more
    precision, recall = 1.0, 5 / 6
    expected = (1 + 1.2**2) * precision * recall / (recall + 1.2**2 * precision)
    score = rouge_l("the cat on the mat".split(), ["the cat sat on the mat".split()])
    assert score == pytest.approx(expected)
    assert rouge_l("a b".split(), ["c d".split()]) == 0.0


def test_rouge_l_with_empty_captions():
    assert rouge_l([], ["a b".split()]) == 0.0  # nothing said: no precision, no recall
    # an empty reference recalls nothing; the other reference decides: P = 1/2, R = 1/4
    expected = (1 + 1.2**2) * 0.5 * 0.25 / (0.25 + 1.2**2 * 0.5)
    assert rouge_l("a b".split(), [[], "a c d e".split()]) == pytest.approx(expected)


def test_rouge_l_takes_best_precision_and_recall_separately():
    # precision is best (4/4) against the 2nd reference, recall (2/2) against the 1st
    references = ["a b".split(), "a b c d e f g h".split()]
    assert rouge_l("a b c d".split(), references) == pytest.approx(1.0)


def test_cider_d_sanity_values():
    # Each caption equals its only reference and shares no n-gram with the other image: every
    # order n = 1..4 has cosine 1, so the score is 10 (CIDEr's scale).
    four_words = [["a red circle here".split()], ["two blue squares there".split()]]
    corpus_score, each = cider_d([refs[0] for refs in four_words], four_words)
    assert each == pytest.approx([10.0, 10.0]) and corpus_score == pytest.approx(10.0)
    # With two words only unigrams and bigrams exist: 2 of the 4 orders -> 5
    two_words = [["red circle".split()], ["blue square".split()]]
    assert cider_d([refs[0] for refs in two_words], two_words)[1] == pytest.approx([5.0, 5.0])
    # An n-gram in every image's references weighs log(images / images) = 0: one image scores 0
    assert cider_d(["a red circle".split()], [["a red circle".split()]])[0] == 0.0


def test_cider_d_by_hand():
    # Two images whose references share no n-gram: every n-gram weighs log(2) per occurrence, so
    # the cosines below are ratios of counts. A caption one word longer or shorter than its
    # reference loses a factor exp(-1 / (2 * 6^2)) to the length penalty.
    references = [["a red circle".split()], ["two blue squares".split()]]
    penalty = math.exp(-1 / 72)
    # "a red" against "a red circle": unigrams 2 / sqrt(2 * 3), bigrams 1 / sqrt(1 * 2)
    shorter = cider_d(["a red".split(), "two blue squares".split()], references)[1][0]
    assert shorter == pytest.approx((2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * 10 * penalty)
    # "a red circle circle": the 2nd "circle" is clipped to the reference's one, so unigrams give
    # 3 / (sqrt(6) sqrt(3)), not 4 / ...; bigrams 2 / sqrt(3 * 2); trigrams 1 / sqrt(2)
    longer = cider_d(["a red circle circle".split(), "two blue squares".split()], references)
    expected = (3 / math.sqrt(18) + 2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * 10 * penalty
    assert longer[1][0] == pytest.approx(expected)



def test_cider_d_scorer_fixes_the_corpus_and_matches_cider_d_on_it():
    references = [["a red circle".split(), "one red circle".split()],
                  ["a blue square left of a red star".split(), "a blue square".split()],
                  ["two green stars".split(), "green stars".split()]]
    candidates = ["a red circle".split(), "a blue square".split(), "stars green two".split()]
    scorer = CiderDScorer(references)
    _, each = cider_d(candidates, references)
    assert [scorer(c, i) for i, c in enumerate(candidates)] == pytest.approx(each, rel=1e-12)
    # the score of one image does not depend on which others are scored beside it
    assert scorer(candidates[1], 1) == pytest.approx(each[1])
    assert cider_d(candidates[:2], references[:2])[1][1] != pytest.approx(each[1])
    # max_n and sigma are those of cider_d
    short = CiderDScorer(references, max_n=2, sigma=1.0)
    assert short("a red".split(), 0) == pytest.approx(
        cider_d(["a red".split()] + candidates[1:], references, max_n=2, sigma=1.0)[1][0])
    with pytest.raises(ValueError, match="at least one image"):
        CiderDScorer([])

# --- PTB tokenisation ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, tokens", [
    ("A dog's toy, isn't it?", ["a", "dog", "'s", "toy", "is", "n't", "it"]),
    ("They're gonna eat (lots).", ["they", "'re", "gon", "na", "eat", "-lrb-", "lots", "-rrb-"]),
    ("We can't, you won't.", ["we", "ca", "n't", "you", "wo", "n't"]),
    ("The dogs' bowls", ["the", "dogs", "bowls"]),
    ("A well-known 3-year-old", ["a", "well-known", "3-year-old"]),
    ("Mr. Smith lives in the U.S.", ["mr.", "smith", "lives", "in", "the", "u.s."]),
    ("“Curly” quotes don’t matter", ["curly", "quotes", "do", "n't", "matter"]),
    ("Wow!! Really?!", ["wow", "!!", "really", "?!"]),
    ("a 5 1/2 year old", ["a", "5\u00a01/2", "year", "old"]),
    ("", []),
])
def test_ptb_tokenize_examples(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_a_caption_can_depend_on_the_next_one_as_in_the_toolkit():
    lines = ptb_tokenize_batch(["the letter b.", "A dog", "the letter b.", "a dog"])
    assert lines == [["the", "letter", "b"], ["a", "dog"], ["the", "letter", "b."], ["a", "dog"]]


def test_line_breaks_inside_a_caption_are_spaces():
    # the toolkit's file would start a new line there and misalign every later caption
    lines = ptb_tokenize_batch(["a\ndog", "two\r\ncats\rsit\u2028here", "x"])
    assert lines == [["a", "dog"], ["two", "cats", "sit", "here"], ["x"]]
    assert ptb_tokenize_batch([]) == []  # no captions, not one empty line


def tokenizer_corpus() -> list[str]:
    """Thousands of strings that make tokenisation hard: the tricky list, caption-like text and
    random characters (seeded, so the golden file's key stays the same)."""
    rng = random.Random(1)
    alphabet = list("aeinostAETSxyzdm0159 .,'\"-()!?;:&/$%#@*_`[]{}<>+=") + [
        "’", "“", "”", "—", "…", "é", "½", "\u00ad", "\u0301"]
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(1500)]
    return TRICKY + [caption(rng) for _ in range(4000)] + noise


def test_ptb_tokenize_matches_the_java_tokenizer(toolkit_tokenize):
    texts = tokenizer_corpus()
    ours = [" ".join(tokens) for tokens in ptb_tokenize_batch(texts)]
    theirs = toolkit_tokenize(texts)
    assert [(text, o, t) for text, o, t in zip(texts, ours, theirs) if o != t] == []


@pytest.mark.java
def test_ptb_tokenize_matches_the_running_java_tokenizer():
    """The golden answers come from this jar; a few hundred strings are checked against it live."""
    pytest.importorskip("pycocoevalcap")
    texts = TRICKY + tokenizer_corpus()[-300:]
    ours = [" ".join(tokens) for tokens in ptb_tokenize_batch(texts)]
    assert ours == java_tokenize(texts)


def test_alternatives_are_split_only_at_the_top_level():
    split = metrics._top_level_alternatives
    assert split("abc") == ["abc"]
    assert split("a|b(c|d)") == ["a", "b(c|d)"]
    assert split("(a|(b|c))|d|") == ["(a|(b|c))", "d", ""]
    assert split(r"a\|b|c") == [r"a\|b", "c"]  # an escaped bar is a character
    assert split(r"a\||b") == [r"a\|", "b"]  # and only the one character after the backslash
    assert split("X|Y") == ["X", "Y"]
    assert split("[a|b]|c") == ["[a|b]", "c"]  # so is a bar in a class
    assert split(r"[\]|(]|x") == [r"[\]|(]", "x"]  # and "]" or "(" escaped or in a class


def test_character_classes_stay_case_sensitive():
    wrap = metrics._case_sensitive_classes
    assert wrap("a[bc]d") == "a(?-i:[bc])d"
    assert wrap(r"\[x[y]") == r"\[x(?-i:[y])"
    assert wrap(r"[\]a]b[c]") == r"(?-i:[\]a])b(?-i:[c])"
    assert wrap("abc") == "abc"


@pytest.mark.parametrize("text, tokens", [
    ("the letter b. The end", ["the", "letter", "b", ".", "The", "end"]),
    ("'hello' world", ["`", "hello", "'", "world"]),
    ('say "hi" there', ["say", "``", "hi", "''", "there"]),
    ("(555) 123-4567 :( :) x", ["-LRB-555-RRB-\u00a0123-4567", ":-LRB-", ":-RRB-", "x"]),
    ("the dog&apos;s bone", ["the", "dog", "'s", "bone"]),
    ("the DOG&APOS;S bone", ["the", "DOG", "&APOS;S", "bone"]),
    ("say &quot;hi&quot; &QUOT;x&QUOT;", ["say", "``", "hi", "''", "&QUOT;", "x", "&QUOT;"]),
])
def test_lexer_tokens_before_lower_case_and_filtering(text, tokens):
    """The jar's own tokens (``PTBTokenizer -preserveLines``, without the toolkit's lower case
    and punctuation filter): which quote, which bracket name, the period after "b" read again."""
    assert metrics._lex(text) == tokens


def test_split_off_keeps_the_start_and_reads_the_end_again():
    # the rules are built when the module loads; built now, "gonna" gives "gon", then "na" again
    assert metrics._split_off(2)("gonna") == ("gon", 3)
    assert metrics._split_off(3)("cannot") == ("can", 3)


def test_rules_compiled_now_tokenise_like_the_java_tokenizer(monkeypatch, toolkit_tokenize):
    """The lexer's rules are compiled when the module loads; compiled again here, they still give
    the Java tokenizer's answers, one rule per top-level alternative, in the lexer's order."""
    rules = metrics._compile_rules()
    assert len(rules) == sum(len(metrics._top_level_alternatives(pattern))
                             for _, pattern, _, _ in metrics._RULES)
    assert [rule.name for rule in rules][:3] == ["programming language", "programming language",
                                                 "cannot, 'twas"]
    assert rules[0].regex.pattern == "(?P<token>c\\+\\+)"  # no trailing context, no group for it
    assert rules[0].regex.flags & re.IGNORECASE
    monkeypatch.setattr(metrics, "_LEXER_RULES", rules)
    texts = tokenizer_corpus()
    ours = [" ".join(tokens) for tokens in ptb_tokenize_batch(texts)]
    assert ours == toolkit_tokenize(texts)


# --- everything against the toolkit ------------------------------------------------------------

@pytest.mark.parametrize("seed, images", [(0, 1), (1, 2), (2, 7), (3, 30), (4, 60), (5, 150)])
def test_scores_equal_the_toolkit_on_generated_corpora(toolkit_tokenize, seed, images):
    references, candidates = corpus(seed, images)
    ours = evaluate_captions(references, candidates, TOOLKIT_METRICS, per_image=True)
    theirs = toolkit_scores(references, candidates, toolkit_tokenize)
    assert_same_scores(ours, theirs, list(candidates))


def test_scores_equal_the_toolkit_on_edge_cases(toolkit_tokenize):
    references = {
        "empty": ["", "."],  # captions that tokenise to nothing
        "one word": ["dog", "a dog"],
        "repeats": ["the the the the", "the cat"],
        "fraction": ["a 5 1/2 year old", "a child"],  # a token with a non-breaking space
        "many": [caption(random.Random(i)) for i in range(12)],
        "letter": ["the letter b.", "A dog"],
    }
    candidates = {"empty": "", "one word": "dog", "repeats": "the the the",
                  "fraction": "5 1/2 year", "many": "a man riding a horse",
                  "letter": "the letter b."}
    ours = evaluate_captions(references, candidates, TOOLKIT_METRICS, per_image=True)
    theirs = toolkit_scores(references, candidates, toolkit_tokenize)
    assert_same_scores(ours, theirs, list(candidates))


def meteor_corpus() -> tuple[dict, dict]:
    """Generated captions plus accents and METEOR's field separator "|||" inside captions."""
    references, candidates = corpus(4, 40)
    references["accents"], candidates["accents"] = ["un café noir", "a black coffee"], "café noir"
    references["bars"], candidates["bars"] = ["a | b ||| c"], "a ||| b"
    return references, candidates


@pytest.mark.java
@pytest.mark.slow
def test_meteor_equals_the_toolkits_meteor(toolkit_tokenize, java_replay):
    """Our METEOR runs the jar here; the toolkit's wrapper's answer for the same captions is the
    one recorded in tests/golden/toolkit_meteor.json."""
    references, candidates = meteor_corpus()
    ours = evaluate_captions(references, candidates, ["METEOR"], per_image=True)
    gts, res = toolkit_inputs(references, candidates, toolkit_tokenize)
    theirs, each = java_replay("toolkit_meteor").call({"gts": gts, "res": res}, java_meteor)
    assert ours["METEOR"] == pytest.approx(theirs, abs=1e-9)
    assert [ours["per_image"]["METEOR"][i] for i in candidates] == pytest.approx(each, abs=1e-9)


class ReplayedJar:
    """Stands in for ``metrics._JavaLineServer``: every ``ask`` is answered with what the METEOR
    jar answered to the same lines (tests/golden/meteor_jar.json); when recording, the jar runs."""

    golden = None  # the GoldenCalls of the jar, set by the test

    def __init__(self, command, cwd, seconds):
        self.start = (command, cwd, seconds)
        self.jar = None

    def ask(self, lines, answers):
        return self.golden.call({"lines": lines, "answers": answers}, self._ask_the_jar)

    def _ask_the_jar(self, request):
        if self.jar is None:
            self.jar = REAL_LINE_SERVER(*self.start).__enter__()
        return self.jar.ask(request["lines"], request["answers"])

    def running(self):
        return False  # never kept: the next call makes a new stand-in

    def close(self):
        if self.jar is not None:
            self.jar.close()


REAL_LINE_SERVER = metrics._JavaLineServer


def test_meteor_speaks_the_jars_protocol(monkeypatch, java_replay, toolkit_tokenize):
    """Our METEOR's requests and its reading of the answers, against the jar's recorded answers
    (no Java needed): the scores are the toolkit's."""
    monkeypatch.setattr(metrics, "_find_java", lambda: "java")
    monkeypatch.setattr(ReplayedJar, "golden", java_replay("meteor_jar"))
    monkeypatch.setattr(metrics, "_JavaLineServer", ReplayedJar)
    references, candidates = meteor_corpus()
    ours = evaluate_captions(references, candidates, ["METEOR"], per_image=True)
    gts, res = toolkit_inputs(references, candidates, toolkit_tokenize)
    theirs, each = java_replay("toolkit_meteor").call({"gts": gts, "res": res}, java_meteor)
    assert ours["METEOR"] == pytest.approx(theirs, abs=1e-9)
    assert [ours["per_image"]["METEOR"][i] for i in candidates] == pytest.approx(each, abs=1e-9)


def test_meteor_refuses_answers_that_are_not_scores(monkeypatch):
    class Confused(ReplayedJar):
        def ask(self, lines, answers):
            return ["not a number"] * answers

    monkeypatch.setattr(metrics, "_find_java", lambda: "java")
    monkeypatch.setattr(metrics, "_JavaLineServer", Confused)
    with pytest.raises(metrics.MetricUnavailableError) as raised:
        metrics.meteor(["a dog"] * 3, [["a dog"]] * 3)  # four answers, three quoted
    assert str(raised.value) == ("METEOR answered something that is not a score: "
                                 "['not a number', 'not a number', 'not a number']")


# --- the Java line server, on stand-in programs ------------------------------------------------


def stand_in(tmp_path, body: str) -> list[str]:
    """A command that runs ``body`` as a Python program and names "stand-in.jar" as its jar."""
    program = tmp_path / "program.py"
    program.write_text(f"import sys, time\n{body}\n")
    return [sys.executable, str(program), "-jar", str(tmp_path / "stand-in.jar")]


def test_line_server_answers_line_by_line(tmp_path):
    echo = stand_in(tmp_path, "for line in sys.stdin:\n"
                              "    print('  got ' + line.strip() + '  ', flush=True)")
    with metrics._JavaLineServer(echo, tmp_path, seconds=60) as server:
        assert server.ask(["a b", "c"], answers=2) == ["got a b", "got c"]
        assert server.ask(["ü"], answers=1) == ["got ü"]
        process = server._process
    assert process.poll() is not None  # killed on leaving the block


def test_line_server_reports_why_the_program_stopped(tmp_path):
    failing = stand_in(tmp_path, "print('starting', file=sys.stderr)\n"
                                 "print('loading', file=sys.stderr)\n"
                                 "print('Exception: no paraphrase table', file=sys.stderr)\n"
                                 "sys.exit(3)")
    with metrics._JavaLineServer(failing, tmp_path, seconds=60) as server:
        with pytest.raises(metrics.MetricUnavailableError,
                           match=r"^stand-in.jar stopped: Exception: no paraphrase table$"):
            server.ask(["x"], answers=1)
    # the only line, from its first byte, even where it is not UTF-8
    garbled = stand_in(tmp_path, "sys.stderr.buffer.write(b'Error: \\xff here\\n')")
    with metrics._JavaLineServer(garbled, tmp_path, seconds=60) as server:
        with pytest.raises(metrics.MetricUnavailableError,
                           match="^stand-in.jar stopped: Error: \ufffd here$"):
            server.ask(["x"], answers=1)
    silent = stand_in(tmp_path, "sys.exit(0)")
    with metrics._JavaLineServer(silent, tmp_path, seconds=60) as server:
        with pytest.raises(metrics.MetricUnavailableError, match="stopped: no message"):
            server.ask(["x"], answers=1)


def test_line_server_runs_the_program_in_the_jars_folder(tmp_path):
    where = stand_in(tmp_path, "import os\nsys.stdin.readline()\nprint(os.getcwd(), flush=True)")
    (tmp_path / "jar folder").mkdir()
    with metrics._JavaLineServer(where, tmp_path / "jar folder", seconds=60) as server:
        assert server.ask(["where?"], answers=1) == [str(tmp_path / "jar folder")]


def test_line_server_stops_a_program_that_does_not_answer_in_time(tmp_path):
    mute = stand_in(tmp_path, "time.sleep(60)")
    with metrics._JavaLineServer(mute, tmp_path, seconds=0.3) as server:
        started = time.monotonic()
        with pytest.raises(metrics.MetricUnavailableError,
                           match="^stand-in.jar gave no answer in time and was stopped$"):
            server.ask(["x"], answers=1)
        assert time.monotonic() - started < 0.9  # the deadline, not a second more


def test_line_server_says_when_java_cannot_start(tmp_path):
    missing = [str(tmp_path / "no-java"), "-jar", "x.jar"]
    with pytest.raises(metrics.MetricUnavailableError, match="Java could not start"):
        metrics._JavaLineServer(missing, tmp_path, seconds=1)


def test_the_line_server_is_kept_between_calls_and_replaced_after_a_failure(tmp_path):
    echo = stand_in(tmp_path, "import os\nfor line in sys.stdin:\n"
                              "    print(line.strip() + ' ' + str(os.getpid()), flush=True)")
    ask = functools.partial(metrics._ask_kept_server, echo, tmp_path, 60)
    try:
        first = ask(lambda server: server.ask(["a"], answers=1))[0].split()
        second = ask(lambda server: server.ask(["b"], answers=1))[0].split()
        assert first[0] == "a" and second == ["b", first[1]]  # one process answered both

        def hang(server):
            server.renew(0.2)
            return server.ask([], answers=1)  # asks nothing: no answer comes before the deadline

        with pytest.raises(metrics.MetricUnavailableError, match="no answer in time"):
            ask(hang)
        assert not metrics._kept_servers  # the failed server was dropped and killed
        third = ask(lambda server: server.ask(["c"], answers=1))[0].split()
        assert third[0] == "c" and third[1] != first[1]  # a fresh process
        (kept,) = metrics._kept_servers.values()
    finally:
        metrics._close_kept_servers()
    assert not kept.running() and not metrics._kept_servers


def test_a_kept_line_server_is_replaced_for_another_command(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = stand_in(tmp_path / "a", "for line in sys.stdin:\n    print('first', flush=True)")
    second = stand_in(tmp_path / "b", "for line in sys.stdin:\n    print('second', flush=True)")

    def ask(command):
        return metrics._ask_kept_server(command, tmp_path, 60,
                                        lambda server: server.ask(["which?"], answers=1))

    try:
        assert [ask(first), ask(second), ask(first)] == [["first"], ["second"], ["first"]]
        assert len(metrics._kept_servers) == 1  # only the last one is kept
    finally:
        metrics._close_kept_servers()


def test_a_kept_line_server_does_not_keep_python_from_exiting(tmp_path):
    """Only atexit kills a kept server, and Python runs atexit after it has waited for every
    non-daemon thread: the reader (waiting for the next answer) and the writer (stuck on a
    request the program does not read) must be daemons, or Python waits for the program."""
    pid = tmp_path / "pid"
    slow = stand_in(tmp_path, f"import os\nopen({str(pid)!r}, 'w').write(str(os.getpid()))\n"
                              "sys.stdin.readline()\nprint('read one', flush=True)\ntime.sleep(30)")
    with metrics._JavaLineServer(slow, tmp_path, seconds=60) as server:
        assert server.ask(["a", "x" * 2**20], answers=1) == ["read one"]
        assert [thread.daemon for thread in server._threads] == [True, True]
    script = ("import pathlib\nfrom utils import metrics\n"
              f"print(metrics._ask_kept_server({slow!r}, pathlib.Path({str(tmp_path)!r}), 60, "
              "lambda server: server.ask(['a', 'x' * 2**20], answers=1)))")
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(metrics.__file__).parents[1]))
    try:  # the same utils (under mutmut: the same mutant) in a Python that then exits
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=10)
    finally:
        try:
            os.kill(int(pid.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert (done.returncode, done.stdout) == (0, "['read one']\n")


def test_line_server_speaks_utf_8_whatever_the_locale(tmp_path, monkeypatch):
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale's encoding")
    # the program answers with the bytes it got, in hex, and "é" in UTF-8
    hexer = stand_in(tmp_path, "for line in sys.stdin.buffer:\n"
                               "    sys.stdout.buffer.write(line.strip().hex().encode()"
                               " + b' \\xc3\\xa9\\n')\n"
                               "    sys.stdout.flush()")
    monkeypatch.setattr(locale, "getencoding", lambda: "latin-1")
    with metrics._JavaLineServer(hexer, tmp_path, seconds=60) as server:
        assert server.ask(["ü"], answers=1) == ["c3bc é"]


def test_line_server_close_waits_for_each_thread_at_most_ten_seconds(tmp_path):
    """A thread can outlive the killed program (a child of it may keep the pipe open): close()
    gives up on it after 10 s instead of hanging."""
    waits = []

    class Stuck:
        def join(self, timeout=None):
            waits.append(timeout)

    server = metrics._JavaLineServer(stand_in(tmp_path, "time.sleep(60)"), tmp_path, seconds=60)
    server._threads.append(Stuck())
    server.close()
    assert waits == [10] and server._process.poll() is not None


def test_a_missing_pycocoevalcap_is_named(monkeypatch):
    find_spec = metrics.importlib.util.find_spec
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *rest: None if name == "pycocoevalcap"
                        else find_spec(name, *rest))
    monkeypatch.setattr(metrics, "_find_java", lambda: "java")
    with pytest.raises(metrics.MetricUnavailableError) as raised:
        metrics.meteor(["a dog"], [["a dog"]])
    assert str(raised.value) == ("pycocoevalcap, which ships the jars, is not installed: "
                                 "`pip install pycocoevalcap==1.2`")


def test_meteor_sends_one_line_per_caption_and_the_toolkits_options(monkeypatch):
    seen = {}

    class Recorder(ReplayedJar):
        def __init__(self, command, cwd, seconds):
            super().__init__(command, cwd, seconds)
            seen.update(command=command, cwd=cwd, seconds=seconds, asked=[])

        def ask(self, lines, answers):
            seen["asked"].append((lines, answers))
            # statistics per caption first, then the per-image scores and the corpus score
            return ["1 2 3"] * answers if len(seen["asked"]) == 1 else ["0.25", "0.75", "0.5"]

    monkeypatch.setattr(metrics, "_find_java", lambda: "/usr/bin/java")
    monkeypatch.setattr(metrics, "_JavaLineServer", Recorder)
    corpus_score, each = metrics.meteor(["a dog\nruns", "a ||| cat"],
                                        [["a dog", "one dog"], ["a\rcat"]])
    assert seen["command"][:4] == ["/usr/bin/java", "-Dfile.encoding=UTF-8", "-Xmx2G", "-jar"]
    assert seen["command"][4].endswith("meteor-1.5.jar")
    assert seen["command"][5:] == ["-", "-", "-stdio", "-l", "en", "-norm"]
    assert pathlib.Path(seen["command"][4]).parent == seen["cwd"]
    assert seen["seconds"] == metrics.METEOR_SECONDS + 2 * metrics.METEOR_SECONDS_PER_IMAGE
    (scored, two), (evaluated, three) = seen["asked"]
    assert scored == ["SCORE ||| a dog ||| one dog ||| a dog runs", "SCORE ||| a cat ||| a cat"]
    assert two == 2 and three == 3 and evaluated == ["EVAL ||| 1 2 3 ||| 1 2 3"]
    assert corpus_score == 0.5 and each == [0.25, 0.75]


# --- SPICE, on a stand-in jar --------------------------------------------------------------------


def spice_stand_in(tmp_path, body: str) -> str:
    """An executable "java" that runs ``body`` with ``request`` and ``answer`` bound to the
    paths SPICE is given (``java -Xmx8G -jar spice.jar REQUEST -out ANSWER ...``)."""
    program = tmp_path / "java"
    program.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n"
                       "request, answer = sys.argv[4], sys.argv[6]\n" + body + "\n")
    program.chmod(0o755)
    return str(program)


@pytest.fixture
def spice_ready(monkeypatch, tmp_path):
    """SPICE in a toolkit folder of its own (``toolkit/spice/spice-1.0.jar``) where the Stanford
    CoreNLP jars are in place, so no download is tried."""
    lib = tmp_path / "toolkit" / "spice" / "lib"
    lib.mkdir(parents=True)
    for name in metrics.SPICE_CORENLP_JARS:
        (lib / name).write_bytes(b"")

    def no_download(folder):
        raise AssertionError(f"tried to download CoreNLP into {folder}")

    monkeypatch.setattr(metrics, "_toolkit_file", lambda *parts: tmp_path.joinpath("toolkit", *parts))
    monkeypatch.setattr(metrics, "_download_corenlp", no_download)
    return lib


def test_spice_reads_the_jars_scores_per_image(tmp_path, monkeypatch, spice_ready):
    # the stand-in answers in reverse order, one image without a score
    java = spice_stand_in(tmp_path, (
        "items = json.load(open(request))\n"
        "assert [i['image_id'] for i in items] == [0, 1, 2]\n"
        "assert items[1] == {'image_id': 1, 'test': 'a cat', 'refs': ['a cat', 'one cat']}\n"
        "assert sys.argv[1:3] == ['-Xmx8G', '-jar'] and sys.argv[5] == '-out'\n"
        "assert sys.argv[3].endswith('toolkit/spice/spice-1.0.jar')\n"
        "assert sys.argv[7:] == ['-subset', '-silent']\n"
        "assert os.getcwd().endswith('toolkit/spice')  # the jar finds lib/ beside itself\n"
        "scores = {0: 0.5, 1: None, 2: 0.25}\n"
        "json.dump([{'image_id': i, 'scores': {'All': {'f': scores[i]}}} for i in (2, 1, 0)],"
        " open(answer, 'w'))"))
    monkeypatch.setattr(metrics, "_find_java", lambda: java)
    mean, each = metrics.spice(["a dog", "a cat", "a bird"],
                               [["a dog"], ["a cat", "one cat"], ["a bird"]])
    assert each[0] == 0.5 and math.isnan(each[1]) and each[2] == 0.25
    assert math.isnan(mean)  # a missing score makes the mean unknown
    every = spice_stand_in(tmp_path, (
        "n = len(json.load(open(request)))\n"
        "json.dump([{'image_id': i, 'scores': {'All': {'f': 0.25 * (i + 1)}}} for i in range(n)],"
        " open(answer, 'w'))"))
    monkeypatch.setattr(metrics, "_find_java", lambda: every)
    assert metrics.spice(["a", "b", "c"], [["a"], ["b"], ["c"]]) == (0.5, [0.25, 0.5, 0.75])


def test_spice_downloads_corenlp_into_its_lib_folder_when_missing(tmp_path, monkeypatch,
                                                                   spice_ready):
    (spice_ready / metrics.SPICE_CORENLP_JARS[1]).unlink()
    folders = []

    def download(folder):
        folders.append(folder)
        raise metrics.MetricUnavailableError("offline")

    monkeypatch.setattr(metrics, "_find_java", lambda: "java")
    monkeypatch.setattr(metrics, "_download_corenlp", download)
    with pytest.raises(metrics.MetricUnavailableError, match="offline"):
        metrics.spice(["a dog"], [["a dog"]])
    assert folders == [spice_ready]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(metrics, "_find_java", lambda: None)
    with pytest.raises(metrics.MetricUnavailableError, match="^SPICE runs on Java"):
        metrics.spice(["a dog"], [["a dog"]])


def test_spice_failures_are_reported(tmp_path, monkeypatch, spice_ready):
    java = spice_stand_in(tmp_path, "print('parsing', file=sys.stderr)\n"
                                    "print('OutOfMemoryError', file=sys.stderr)\nsys.exit(3)")
    monkeypatch.setattr(metrics, "_find_java", lambda: java)
    with pytest.raises(metrics.MetricUnavailableError,
                       match=r"the SPICE jar failed \(exit 3\): OutOfMemoryError$"):
        metrics.spice(["a dog"], [["a dog"]])
    no_answer = spice_stand_in(tmp_path, "pass")
    monkeypatch.setattr(metrics, "_find_java", lambda: no_answer)
    with pytest.raises(metrics.MetricUnavailableError, match=r"failed \(exit 0\): no message"):
        metrics.spice(["a dog"], [["a dog"]])
    slow = spice_stand_in(tmp_path, "time.sleep(60)")
    monkeypatch.setattr(metrics, "_find_java", lambda: slow)
    monkeypatch.setattr(metrics, "SPICE_SECONDS", 1.0)
    with pytest.raises(metrics.MetricUnavailableError,
                       match="^SPICE took more than 1 s and was stopped$"):
        metrics.spice(["a dog"], [["a dog"]])


# --- when Java or CoreNLP are missing -----------------------------------------------------------

def test_without_java_the_other_metrics_come_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    references, candidates = {0: ["a red circle"], 1: ["two squares"]}, {0: "a circle", 1: "a"}
    with pytest.warns(metrics.MetricUnavailableWarning,
                      match="^METEOR left out: METEOR runs on Java, which is not installed here: "
                            "install Java with `apt-get install default-jre-headless`"):
        scores = evaluate_captions(references, candidates)
    assert list(scores) == list(TOOLKIT_METRICS)
    with pytest.warns(metrics.MetricUnavailableWarning) as caught:
        evaluate_captions(references, candidates, ["METEOR"])
    # The warning names the caller's line; under `make mutation`, mutmut's trampoline is one
    # more frame between the caller and utils.metrics, so the same stacklevel names it instead.
    under_mutmut = "MUTANT_UNDER_TEST" in os.environ
    caller = pathlib.Path(caught[0].filename)
    assert (caller.name == "trampoline.py") if under_mutmut else caller == pathlib.Path(__file__)


def test_the_warning_names_the_caller_of_evaluate_captions(monkeypatch):
    # Under mutmut two trampoline frames, both in trampoline.py, stand between the caller and
    # evaluate_captions, so the file name above cannot tell stacklevel 2 from 3; this can.
    warned = []
    monkeypatch.setattr(metrics, "warnings",
                        types.SimpleNamespace(warn=lambda *args, **kw: warned.append((args, kw))))
    monkeypatch.setattr(metrics, "_find_java", lambda: None)
    assert evaluate_captions({0: ["a"]}, {0: "a"}, ["METEOR"]) == {}
    reason = f"METEOR runs on Java, which is not installed here: {metrics.JAVA_ADVICE}."
    assert warned == [((f"METEOR left out: {reason}", metrics.MetricUnavailableWarning),
                       {"stacklevel": 2})]


def test_a_missing_meteor_jar_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "_find_java", lambda: "java")
    monkeypatch.setattr(metrics, "_toolkit_file", lambda *parts: tmp_path.joinpath(*parts))
    missing = tmp_path / "meteor" / "meteor-1.5.jar"
    with pytest.raises(metrics.MetricUnavailableError) as raised:
        metrics.meteor(["a dog"], [["a dog"]])
    assert str(raised.value) == (f"the METEOR jar is missing ({missing}): "
                                 "reinstall pycocoevalcap==1.2")


def test_a_meteor_that_hangs_is_stopped(monkeypatch, tmp_path):
    pytest.importorskip("pycocoevalcap")
    fake_java, pid_file = tmp_path / "java", tmp_path / "pid"
    fake_java.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake_java.chmod(0o755)
    monkeypatch.setattr(metrics, "_find_java", lambda: str(fake_java))
    monkeypatch.setattr(metrics, "METEOR_SECONDS", 1.0)
    with pytest.warns(metrics.MetricUnavailableWarning, match="METEOR left out: .*no answer"):
        scores = evaluate_captions({0: ["a red circle"]}, {0: "a red circle"}, ["METEOR", "Bleu_1"])
    assert list(scores) == ["Bleu_1"]
    with pytest.raises(ProcessLookupError):  # the stuck program was killed, not left running
        os.kill(int(pid_file.read_text()), 0)


def test_spice_offline_is_skipped_with_a_clear_message(monkeypatch):
    pytest.importorskip("pycocoevalcap")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(metrics, "_find_java", lambda: "java")
    monkeypatch.setattr(metrics, "SPICE_CORENLP_JARS", ("not-downloaded.jar",))
    monkeypatch.setattr(metrics.urllib.request, "urlopen", offline)
    with pytest.warns(metrics.MetricUnavailableWarning, match="SPICE needs Stanford CoreNLP"):
        scores = evaluate_captions({0: ["a red circle"]}, {0: "a circle"}, ["SPICE", "CIDEr"])
    assert list(scores) == ["CIDEr"]
    assert "SPICE" not in metrics.DEFAULT_METRICS


def test_corenlp_is_fetched_only_after_a_quick_reachability_test(monkeypatch, tmp_path):
    from pycocoevalcap.spice import get_stanford_models as models

    asked, fetched = [], []

    class Answer:
        def close(self):
            asked.append("closed")

    def reachable(request, timeout):
        asked.append((request.full_url, request.get_method(), timeout))
        return Answer()

    monkeypatch.setattr(metrics.urllib.request, "urlopen", reachable)
    monkeypatch.setattr(models, "get_stanford_models", lambda: fetched.append(True))
    metrics._download_corenlp(tmp_path)
    url = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
    assert asked[0] == (url, "HEAD", 15) and asked[1] == "closed"  # a 15 s reachability test
    assert fetched == [True]

    def broken_archive():
        raise metrics.zipfile.BadZipFile("truncated")

    monkeypatch.setattr(models, "get_stanford_models", broken_archive)
    with pytest.raises(metrics.MetricUnavailableError) as raised:
        metrics._download_corenlp(tmp_path / "lib")
    assert str(raised.value) == (
        f"SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads from {url} on first "
        f"use, and that failed here (truncated); run once with internet access, or put "
        f"stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar into {tmp_path / 'lib'}")


def test_java_is_looked_up_on_the_path(monkeypatch, tmp_path):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert metrics._find_java() == str(java)
    assert metrics._java_or_advice("METEOR") == str(java)
    java.unlink()
    with pytest.raises(metrics.MetricUnavailableError,
                       match=r"^METEOR runs on Java, which is not installed here: install Java"):
        metrics._java_or_advice("METEOR")


# --- the interface -------------------------------------------------------------------------------

def test_metric_selection_and_per_image_layout():
    references = {"x": ["a red circle", "a circle"], "y": ["two squares"]}
    candidates = {"x": "a red circle", "y": "a square"}
    scores = evaluate_captions(references, candidates, ["Bleu_2", "CIDEr"], per_image=True)
    assert list(scores) == ["Bleu_2", "CIDEr", "per_image"]
    assert set(scores["per_image"]["CIDEr"]) == {"x", "y"}
    assert scores["CIDEr"] == pytest.approx(sum(scores["per_image"]["CIDEr"].values()) / 2)
    only_x = evaluate_captions(references, {"x": "a red circle"}, "Bleu")
    assert list(only_x) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
    with pytest.raises(ValueError, match=r"^unknown metric 'BLEU-4'; choose from Bleu, Bleu_1, "
                                         r"Bleu_2, Bleu_3, Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE$"):
        evaluate_captions(references, {"x": "a"}, ["BLEU-4"])
    with pytest.raises(ValueError, match="reference"):
        evaluate_captions({"x": []}, {"x": "a"}, ["CIDEr"])


def test_corpus_bleu_equals_evaluate_captions():
    references, candidates = corpus(5, 20)
    scores = evaluate_captions(references, candidates, ["Bleu"])
    expected = [scores[f"Bleu_{n}"] for n in range(1, 5)]
    assert corpus_bleu(references, candidates) == pytest.approx(expected)


def test_imports_without_tensorflow():
    code = ("import sys, utils.metrics; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
