"""Decoding: beam search against exhaustive search and a plain-Python beam search on hand-made
step functions, sampling, and the adapter for the book's Captioner."""
import contextlib
import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils import decoding  # noqa: E402
from utils.captioner import build_captioner, greedy_decode  # noqa: E402

# Toy vocabulary: 0 padding, 1 <start>, 2 <end>, 3 and 4 two words. Only 2, 3, 4 can be emitted.
PAD, START, END, A, B = range(5)
VOCAB = 5
NEVER = -np.inf
BUCKETS = 97  # prefixes are hashed into this many rows of a random log-probability table


def random_table(seed, end_possible=True):
    """``float32[BUCKETS, VOCAB]`` log-probabilities; padding and <start> are never emitted."""
    logits = np.random.default_rng(seed).normal(scale=1.5, size=(BUCKETS, VOCAB))
    logits[:, [PAD, START]] = NEVER
    if not end_possible:
        logits[:, END] = NEVER
    shifted = logits - logits.max(axis=1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(np.float32)


def prefix_step_fn(table, with_attention=True):
    """A step function whose next-word distribution depends on the *whole* prefix: the state is
    a hash of the words fed so far, so a beam that gets another beam's state scores wrongly.
    The hash also mixes in a per-image "salt" that the step passes through untouched (as the
    Captioner does with its regions), which the search must keep with its image.
    As "attention" it reports the one-hot of the word it was fed, which must follow its beam."""
    table = tf.constant(table)

    def step(tokens, state):
        code = (state["code"] * VOCAB + tokens + state["salt"]) % BUCKETS
        new_state = {"code": code, "salt": state["salt"]}
        if with_attention:
            new_state["attention"] = tf.one_hot(tokens, VOCAB)
        return tf.gather(table, code), new_state

    return step


def salt(first_code):
    return 7 * first_code + 3


def prefix_initial_state(first_codes, with_attention=True):
    """Each image starts its hash from its own code, so images get different distributions."""
    state = {"code": tf.constant(first_codes, tf.int32),
             "salt": tf.constant([salt(code) for code in first_codes], tf.int32)}
    if with_attention:
        state["attention"] = tf.zeros([len(first_codes), VOCAB])
    return state


def prefix_log_probs(table, first_code, words):
    """NumPy twin of :func:`prefix_step_fn`: the log-probabilities after ``words``."""
    code = first_code
    for token in (START, *words):
        code = (code * VOCAB + token + salt(first_code)) % BUCKETS
    return table[code].astype(np.float64)


def penalty(length, alpha):
    return ((5 + length) / 6) ** alpha


def exhaustive(log_probs_after, max_length, alpha=0.0):
    """Every caption that ends with <end> or reaches ``max_length``, best first, as
    ``(score, words, log_prob)``."""
    captions = []

    def grow(words, total):
        for token, log_prob in enumerate(log_probs_after(words)):
            if log_prob == NEVER:
                continue
            caption, caption_total = (*words, token), total + log_prob
            if token == END or len(caption) == max_length:
                score = caption_total / penalty(len(caption), alpha)
                captions.append((score, caption, caption_total))
            else:
                grow(caption, caption_total)

    grow((), 0.0)
    return sorted(captions, key=lambda c: -c[0])


def reference_beam_search(log_probs_after, max_length, beam_size, alpha=0.0):
    """Beam search written plainly: a finished caption stays in the beam as one candidate."""
    beams = [((), 0.0, False)]
    for _ in range(max_length):
        candidates = []
        for words, total, done in beams:
            if done:
                candidates.append((words, total, True))
                continue
            for token, log_prob in enumerate(log_probs_after(words)):
                if log_prob != NEVER:
                    candidates.append(((*words, token), total + log_prob, token == END))
        candidates.sort(key=lambda c: -c[1] / penalty(len(c[0]), alpha))
        beams = candidates[:beam_size]
        if all(done for _, _, done in beams):
            break
    return [(total / penalty(len(words), alpha), words, total) for words, total, _ in beams]


def padded(words, max_length):
    return list(words) + [PAD] * (max_length - len(words))


def run_prefix_beam(table, first_codes, beam_size, max_length, alpha=0.0, **kwargs):
    return decoding.beam_search(
        prefix_step_fn(table), prefix_initial_state(first_codes), batch_size=len(first_codes),
        start_id=START, end_id=END, beam_size=beam_size, max_length=max_length,
        length_penalty=alpha, **kwargs)


def assert_well_formed(result, end_id=END):
    """Scores best first, no caption twice for one image, and padded captions."""
    assert (np.diff(result.scores.numpy(), axis=1) <= 1e-6).all(), result.scores
    for captions, scores in zip(result.sequences.numpy(), result.scores.numpy()):
        real = captions[scores > NEVER]
        assert len({tuple(c) for c in real}) == len(real), captions
    assert_padded(result, end_id)


def assert_padded(result, end_id=END):
    """0 after <end>, none before; lengths count the words up to <end> (or all of them). Empty
    beam slots (score -inf) are all zeros."""
    sequences, lengths = result.sequences.numpy(), result.lengths.numpy()
    empty = (result.scores.numpy() == NEVER).reshape(-1)
    assert (sequences.reshape(len(empty), -1)[empty] == PAD).all()
    assert (lengths.reshape(-1)[empty] == 0).all()
    for row, length in zip(sequences.reshape(len(empty), -1)[~empty], lengths.reshape(-1)[~empty]):
        ends = np.flatnonzero(row == end_id)
        expected = ends[0] + 1 if ends.size else len(row)
        assert length == expected
        assert (row[length:] == PAD).all() and (row[:length] != PAD).all()


# --- beam search on hand-made step functions -----------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_a_beam_wider_than_all_captions_returns_exactly_the_exhaustive_ranking(alpha):
    # Three emittable words and max_length 4: 1 + 2 + 4 + 8 captions end with <end>, 16 do not.
    table, max_length, codes = random_table(0), 4, [1, 2, 3]
    result = run_prefix_beam(table, codes, beam_size=32, max_length=max_length, alpha=alpha)
    assert_well_formed(result)
    for image, code in enumerate(codes):
        truth = exhaustive(lambda words: prefix_log_probs(table, code, words), max_length, alpha)
        assert len(truth) == 31
        np.testing.assert_allclose(result.scores[image, :31], [c[0] for c in truth], rtol=1e-5)
        np.testing.assert_allclose(result.log_probs[image, :31], [c[2] for c in truth], rtol=1e-5)
        np.testing.assert_array_equal(result.sequences[image, :31],
                                      [padded(c[1], max_length) for c in truth])
        assert result.scores[image, 31] == NEVER  # an empty slot, not a duplicate


def test_images_of_a_batch_get_their_own_best_caption():
    table, max_length, codes = random_table(1), 5, [7, 8, 9, 10]
    result = run_prefix_beam(table, codes, beam_size=12, max_length=max_length)
    best = [exhaustive(lambda w, c=c: prefix_log_probs(table, c, w), max_length)[0] for c in codes]
    assert len({c[1] for c in best}) > 1  # the images really differ
    np.testing.assert_array_equal(result.sequences[:, 0], [padded(c[1], max_length) for c in best])
    np.testing.assert_allclose(result.scores[:, 0], [c[0] for c in best], rtol=1e-5)


@pytest.mark.parametrize("beam_size, alpha", [(2, 0.0), (3, 0.0), (3, 1.0)])
def test_narrow_beams_prune_exactly_like_a_plain_python_beam_search(beam_size, alpha):
    table, max_length, codes = random_table(2), 6, [0, 5, 11]
    result = run_prefix_beam(table, codes, beam_size=beam_size, max_length=max_length, alpha=alpha)
    assert_well_formed(result)
    for image, code in enumerate(codes):
        reference = reference_beam_search(lambda w: prefix_log_probs(table, code, w), max_length,
                                          beam_size, alpha)
        np.testing.assert_array_equal(result.sequences[image],
                                      [padded(c[1], max_length) for c in reference])
        np.testing.assert_allclose(result.scores[image], [c[0] for c in reference], rtol=1e-5)


def test_attention_follows_its_beam_and_is_zero_after_end():
    # The toy "attention" is the one-hot of the word fed at each step: <start>, then the caption.
    table, max_length = random_table(3), 5
    result = run_prefix_beam(table, [4, 6], beam_size=4, max_length=max_length)
    attention = result.attention.numpy()
    assert attention.shape == (2, 4, max_length, VOCAB)
    for image, beam in itertools.product(range(2), range(4)):
        length = result.lengths[image, beam]
        fed = [START, *result.sequences[image, beam, : length - 1].numpy()]
        np.testing.assert_array_equal(attention[image, beam, :length], np.eye(VOCAB)[fed])
        assert (attention[image, beam, length:] == 0).all()


def transition_step_fn(rows):
    """A step function that looks only at the previous word: ``rows[previous]`` are the
    probabilities of the next word. Its state is unused but still tiled and reordered."""
    with np.errstate(divide="ignore"):  # log 0 = -inf: that word is never emitted
        table = tf.constant(np.log(np.asarray(rows, np.float64)).astype(np.float32))

    def step(tokens, state):
        return tf.gather(table, tokens), state

    return step


def run_transitions(rows, beam_size, max_length, alpha=0.0):
    return decoding.beam_search(
        transition_step_fn(rows), (tf.zeros([1, 3]),), batch_size=1, start_id=START,
        end_id=END, beam_size=beam_size, max_length=max_length, length_penalty=alpha)


def test_beam_of_two_finds_a_better_caption_than_greedy():
    # Greedy takes A (0.6), after which <end> has only 0.4: 0.24 in all. B (0.35) is followed
    # by <end> with 0.9: 0.315, which only a beam that keeps B finds.
    rows = [[0, 0, .2, .4, .4], [0, 0, .05, .6, .35], [0, 0, .2, .4, .4],
            [0, 0, .4, .3, .3], [0, 0, .9, .05, .05]]
    greedy = run_transitions(rows, beam_size=1, max_length=3)
    beam = run_transitions(rows, beam_size=2, max_length=3)
    np.testing.assert_array_equal(greedy.sequences[0, 0], [A, END, PAD])
    np.testing.assert_array_equal(beam.sequences[0, 0], [B, END, PAD])
    assert float(greedy.scores[0, 0]) == pytest.approx(np.log(0.6 * 0.4), rel=1e-6)
    assert float(beam.scores[0, 0]) == pytest.approx(np.log(0.35 * 0.9), rel=1e-6)


def test_length_penalty_reranks_as_the_gnmt_formula_says():
    # "<end>" alone: log 0.45 = -0.80. "A <end>": log(0.55 * 0.75) = -0.89, lower as a sum, but
    # divided by ((5 + 2) / 6) ** 1 it is -0.76, above -0.80 / ((5 + 1) / 6) ** 1.
    rows = [[0, 0, 1, 0, 0], [0, 0, .45, .55, 0], [0, 0, 1, 0, 0],
            [0, 0, .75, .25, 0], [0, 0, 1, 0, 0]]
    plain = run_transitions(rows, beam_size=2, max_length=3)
    penalised = run_transitions(rows, beam_size=2, max_length=3, alpha=1.0)
    np.testing.assert_array_equal(plain.sequences[0], [[END, PAD, PAD], [A, END, PAD]])
    np.testing.assert_array_equal(penalised.sequences[0], [[A, END, PAD], [END, PAD, PAD]])
    short, long = np.log(0.45), np.log(0.55 * 0.75)
    np.testing.assert_allclose(plain.scores[0], [short, long], rtol=1e-6)
    np.testing.assert_allclose(penalised.scores[0], [long / (7 / 6), short / 1.0], rtol=1e-6)
    np.testing.assert_allclose(penalised.log_probs[0], [long, short], rtol=1e-6)
    np.testing.assert_array_equal(penalised.lengths[0], [2, 1])
    whole_number = run_transitions(rows, beam_size=2, max_length=3, alpha=1)  # an int works too
    np.testing.assert_array_equal(whole_number.scores, penalised.scores)


def test_captions_that_never_end_are_returned_at_max_length():
    table, max_length = random_table(4, end_possible=False), 5
    result = run_prefix_beam(table, [3, 9], beam_size=3, max_length=max_length)
    assert_well_formed(result)
    np.testing.assert_array_equal(result.lengths, np.full((2, 3), max_length))
    for image, code in enumerate([3, 9]):
        reference = reference_beam_search(lambda w: prefix_log_probs(table, code, w), max_length, 3)
        np.testing.assert_array_equal(result.sequences[image], [c[1] for c in reference])
        for words, score in zip(result.sequences[image].numpy(), result.scores[image]):
            expected = sum(prefix_log_probs(table, code, words[:t])[words[t]]
                           for t in range(max_length))
            assert float(score) == pytest.approx(expected, rel=1e-5)


def numpy_greedy(table, code, max_length):
    words, total = [], 0.0
    while len(words) < max_length and (not words or words[-1] != END):
        log_probs = prefix_log_probs(table, code, words)
        words.append(int(np.argmax(log_probs)))
        total += log_probs[words[-1]]
    return padded(words, max_length), total


def test_beam_of_one_is_greedy_decoding():
    table, max_length, codes = random_table(5), 6, [1, 2, 3, 4, 5]
    result = decoding.greedy(prefix_step_fn(table, with_attention=False),
                             prefix_initial_state(codes, with_attention=False),
                             batch_size=len(codes), start_id=START, end_id=END,
                             max_length=max_length)
    assert result.sequences.shape == (5, 1, max_length) and result.attention is None
    for image, code in enumerate(codes):
        words, total = numpy_greedy(table, code, max_length)
        np.testing.assert_array_equal(result.sequences[image, 0], words)
        assert float(result.scores[image, 0]) == pytest.approx(total, rel=1e-5)


def test_xla_compiles_the_search_and_agrees():
    table, codes = random_table(6), [2, 3]
    plain = run_prefix_beam(table, codes, beam_size=3, max_length=5)
    compiled = run_prefix_beam(table, codes, beam_size=3, max_length=5, jit_compile=True)
    np.testing.assert_array_equal(plain.sequences, compiled.sequences)
    np.testing.assert_allclose(plain.scores, compiled.scores, rtol=1e-5)


@contextlib.contextmanager
def traced():
    """``tf.function`` traced into a graph even where the run executes it eagerly
    (``BOOK_TESTS_EAGER=1``, under which ``jit_compile`` cannot act)."""
    eager = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(False)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(eager)


def python_step_fn(rows):
    """:func:`transition_step_fn` that passes the tokens through a Python function
    (``tf.numpy_function``), an op XLA cannot compile."""
    step = transition_step_fn(rows)

    def python_step(tokens, state):
        fed = tf.numpy_function(lambda t: t, [tokens], tf.int32, stateful=False)
        return step(tf.ensure_shape(fed, tokens.shape), state)

    return python_step


NOT_XLA = r"unsupported operations"
# after <start>: A (0.9) or <end> (0.1); after anything else: <end>
A_THEN_END = [[0, 0, 1, 0, 0], [0, 0, .1, .9, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0],
              [0, 0, 1, 0, 0]]


@pytest.mark.parametrize("search, settings", [(decoding.greedy, {}),
                                              (decoding.beam_search, {"beam_size": 2}),
                                              (decoding.sample, {"temperature": 0.0})])
def test_searches_are_compiled_with_xla_only_when_asked(search, settings):
    step, state = python_step_fn(A_THEN_END), (tf.zeros([2, 3]),)
    search_args = dict(batch_size=2, start_id=START, end_id=END, max_length=3, **settings)
    with traced():
        result = search(step, state, **search_args)  # by default not compiled: Python runs
        np.testing.assert_array_equal(result.sequences[:, 0], [[A, END, PAD]] * 2)
        with pytest.raises(tf.errors.InvalidArgumentError, match=NOT_XLA):
            search(step, state, jit_compile=True, **search_args)


@pytest.mark.parametrize("search, settings", [(decoding.greedy, {}),
                                              (decoding.beam_search, {"beam_size": 3}),
                                              (decoding.sample, {"temperature": 0.0})])
def test_the_search_stops_when_every_caption_has_ended(search, settings):
    """A_THEN_END's captions have ended by the second word: with room for ten, only two steps
    are computed. With three beams one slot stays empty (two captions exist), and counts as
    ended."""
    calls, table_step = tf.Variable(0), transition_step_fn(A_THEN_END)

    def step(tokens, state):
        calls.assign_add(1)
        return table_step(tokens, state)

    search(step, (tf.zeros([2, 3]),), batch_size=2, start_id=START, end_id=END, max_length=10,
           **settings)
    assert int(calls.numpy()) == 2


# --- sampling --------------------------------------------------------------------------------


def run_prefix_sample(table, codes, max_length, **kwargs):
    return decoding.sample(prefix_step_fn(table), prefix_initial_state(codes),
                           batch_size=len(codes), start_id=START, end_id=END,
                           max_length=max_length, **kwargs)


@pytest.mark.parametrize("settings", [{"top_k": 1, "temperature": 1.7}, {"temperature": 0.0}])
def test_sampling_with_top_1_or_temperature_0_is_greedy(settings):
    table, max_length, codes = random_table(7), 6, [1, 2, 3]
    result = run_prefix_sample(table, codes, max_length, num_samples=2, seed=3, **settings)
    assert_padded(result)
    for image, code in enumerate(codes):
        words, total = numpy_greedy(table, code, max_length)
        np.testing.assert_array_equal(result.sequences[image], [words, words])
        np.testing.assert_allclose(result.log_probs[image], [total, total], rtol=1e-5)


def test_seeded_sampling_repeats_and_other_seeds_differ():
    table, codes = random_table(8), [1, 2]
    first, again, other = (run_prefix_sample(table, codes, 6, num_samples=16, seed=seed)
                           for seed in (11, 11, 12))
    np.testing.assert_array_equal(first.sequences, again.sequences)
    assert_padded(first)
    assert not np.array_equal(first.sequences, other.sequences)
    # scores are the model's own log-probabilities of the drawn words
    for image, code in enumerate(codes):
        for words, log_prob, length in zip(first.sequences[image].numpy(),
                                           first.log_probs[image], first.lengths[image]):
            expected = sum(prefix_log_probs(table, code, words[:t])[words[t]]
                           for t in range(length))
            assert float(log_prob) == pytest.approx(expected, rel=1e-5)


def test_sampling_defaults_are_one_sample_at_temperature_one_with_seed_zero():
    table, codes = random_table(9), [1, 2]
    default = run_prefix_sample(table, codes, 6)
    explicit = run_prefix_sample(table, codes, 6, num_samples=1, temperature=1.0, top_k=0, seed=0)
    assert default.sequences.shape == (2, 1, 6)
    np.testing.assert_array_equal(default.sequences, explicit.sequences)
    many = run_prefix_sample(table, codes, 6, num_samples=64, temperature=1.0, seed=0)
    hotter = run_prefix_sample(table, codes, 6, num_samples=64, temperature=2.0, seed=0)
    assert not np.array_equal(many.sequences, hotter.sequences)  # the temperature matters


def test_sample_scores_are_the_log_probabilities_with_no_length_penalty():
    result = run_prefix_sample(random_table(10), [1, 2], 6, num_samples=8, seed=4)
    assert (result.lengths.numpy() > 1).any()  # where a length penalty would change a score
    np.testing.assert_array_equal(result.scores, result.log_probs)


def test_an_integer_temperature_samples_like_the_same_float():
    table, codes = random_table(11), [1, 2]
    whole = run_prefix_sample(table, codes, 6, num_samples=8, temperature=2, seed=1)
    real = run_prefix_sample(table, codes, 6, num_samples=8, temperature=2.0, seed=1)
    np.testing.assert_array_equal(whole.sequences, real.sequences)
    np.testing.assert_array_equal(whole.log_probs, real.log_probs)


def test_each_step_draws_from_the_stateless_stream_of_seed_and_step():
    """Seed ``s`` draws step ``t``'s words with ``tf.random.stateless_categorical`` under the
    seed ``stateless_fold_in([s, 0], t)``, one draw per row: TensorFlow alone reproduces them."""
    probs, temperature, seed, rows, max_length = [0, 0, .2, .5, .3], 1.5, 7, 8, 5
    step = transition_step_fn([probs] * VOCAB)  # the same distribution after every word
    result = decoding.sample(step, (tf.zeros([2, 1]),), batch_size=2, start_id=START,
                             end_id=END, max_length=max_length, num_samples=rows // 2,
                             temperature=temperature, seed=seed)
    with np.errstate(divide="ignore"):
        logits = tf.constant(np.log(np.tile(probs, (rows, 1))).astype(np.float32))
    logits = logits / tf.constant(temperature, tf.float32)
    draws = np.stack([tf.random.stateless_categorical(
        logits, 1, tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), t),
        dtype=tf.int32)[:, 0].numpy() for t in range(max_length)], axis=1)  # [rows, L]
    expected = []
    for row in draws:
        ends = np.flatnonzero(row == END)
        expected.append(padded(row[: ends[0] + 1] if ends.size else row, max_length))
    np.testing.assert_array_equal(result.sequences.numpy().reshape(rows, max_length), expected)


def test_top_k_counts_words_not_rows():
    # A single row (one image, one sample) with top_k=2 of A (0.55) and B (0.45), 40 steps
    # that never end: both words are drawn, nothing else.
    step, state = transition_step_fn([[0, 0, 0, .55, .45]] * VOCAB), (tf.zeros([1, 1]),)
    search = {"batch_size": 1, "start_id": START, "end_id": END, "seed": 0}
    single = decoding.sample(step, state, max_length=40, top_k=2, **search)
    assert set(single.sequences.numpy().reshape(-1)) == {A, B}
    # top_k above the vocabulary (5 words) is all of it, however many rows there are
    above = decoding.sample(step, state, max_length=3, num_samples=8, top_k=9, **search)
    exact = decoding.sample(step, state, max_length=3, num_samples=8, top_k=VOCAB, **search)
    np.testing.assert_array_equal(above.sequences, exact.sequences)


@pytest.mark.parametrize("temperature, top_k", [(0.5, 0), (1.0, 0), (2.0, 0), (1.0, 2)])
def test_one_step_sample_frequencies_follow_the_tempered_distribution(temperature, top_k):
    log_probs = np.log([1e-12, 1e-12, 0.1, 0.6, 0.3])  # <end>, A, B
    step = transition_step_fn([np.exp(log_probs)] * VOCAB)
    draws = 20_000
    result = decoding.sample(step, (tf.zeros([1, 1]),), batch_size=1, start_id=START,
                             end_id=END, max_length=1, num_samples=draws,
                             temperature=temperature, top_k=top_k, seed=0)
    counts = np.bincount(result.sequences.numpy().reshape(-1), minlength=VOCAB)
    logits = log_probs / temperature
    if top_k:
        logits[np.argsort(logits)[:-top_k]] = -np.inf
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(counts / draws, expected, atol=0.015)


# --- the book's Captioner --------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioner_and_images():
    keras.utils.set_random_seed(0)
    model = build_captioner(12, filters=(8, 8, 16), embed_dim=8, units=16,
                      attention_units=8, jit_decoder=False)
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    model((images[:1], np.full((1, 3), model.start_id, np.int32)))
    # Freshly initialised weights give almost flat word distributions, where every search
    # agrees; larger random decoder weights give peaked ones, where beams can differ from greedy.
    rng = np.random.default_rng(1)
    for weight in model.decoder.weights + model.encoder.project.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    return model, tf.constant(images)


def test_captioner_beam_of_one_matches_model_greedy(captioner_and_images):
    model, images = captioner_and_images
    ids, weights = greedy_decode(model, images, 7)
    result = decoding.decode_images(model, images, max_length=7)
    np.testing.assert_array_equal(result.sequences[:, 0], ids)
    lengths = result.lengths.numpy()[:, 0]
    for image, length in enumerate(lengths):
        np.testing.assert_allclose(result.attention[image, 0, :length], weights[image, :length],
                                   rtol=1e-5, atol=1e-7)


def test_captioner_beam_of_three_never_scores_below_greedy(captioner_and_images):
    model, images = captioner_and_images
    greedy = decoding.decode_images(model, images, max_length=7)
    beam = decoding.decode_images(model, images, max_length=7, beam_size=3)
    assert_well_formed(beam, end_id=model.end_id)
    # 1e-5: beam search runs 3x the rows, and a different batch shape rounds differently
    assert (beam.scores.numpy()[:, 0] >= greedy.scores.numpy()[:, 0] - 1e-5).all()
    assert (beam.scores.numpy()[:, 0] > greedy.scores.numpy()[:, 0] + 0.1).any()
    attention = beam.attention.numpy()
    assert attention.shape == (6, 3, 7, 64)
    real_steps = np.arange(7) < beam.lengths.numpy()[..., None]  # [B, K, L]
    np.testing.assert_allclose(attention.sum(-1)[real_steps], 1.0, rtol=1e-5)
    assert (attention.sum(-1)[~real_steps] == 0).all() and (~real_steps).any()


def test_an_eager_search_finds_what_the_compiled_one_finds(captioner_and_images):
    """``compiled=False`` (the command line's one-batch caption) skips tracing, nothing else."""
    model, images = captioner_and_images
    for beam_size in (1, 3):
        graph = decoding.decode_images(model, images, max_length=7, beam_size=beam_size)
        eager = decoding.decode_images(model, images, max_length=7, beam_size=beam_size,
                                       compiled=False)
        np.testing.assert_array_equal(eager.sequences, graph.sequences)
        np.testing.assert_allclose(eager.scores, graph.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(eager.attention, graph.attention, rtol=1e-5, atol=1e-6)


def test_captioner_decoding_defaults(captioner_and_images):
    """No length penalty unless asked; one sample at temperature 1 from all words, seed 0."""
    model, images = captioner_and_images
    beam = decoding.decode_images(model, images, max_length=7, beam_size=3)
    np.testing.assert_array_equal(beam.scores, beam.log_probs)
    drawn = decoding.decode_images(model, images, max_length=7, method="sample")
    explicit = decoding.decode_images(model, images, max_length=7, method="sample", num_samples=1,
                                      temperature=1.0, top_k=0, seed=0)
    assert drawn.sequences.shape == (6, 1, 7)
    np.testing.assert_array_equal(drawn.sequences, explicit.sequences)
    greedy = decoding.decode_images(model, images, max_length=7)
    assert not np.array_equal(drawn.sequences, greedy.sequences)  # a draw, not the argmax


def test_captioner_decodes_under_mixed_precision():
    """float16 regions (the gpu profile's policy): the attention the search carries and returns
    stays float32, as the decoder's weights are."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = build_captioner(12, filters=(8, 8, 16), embed_dim=8, units=16,
                          attention_units=8, jit_decoder=False)
        images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        model((images[:1], np.full((1, 3), model.start_id, np.int32)))
        assert model.encoder(images).dtype == tf.float16
        result = decoding.decode_images(model, images, max_length=5, beam_size=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.attention.dtype == tf.float32 and result.attention.shape == (2, 2, 5, 64)
    real_steps = np.arange(5) < result.lengths.numpy()[..., None]
    np.testing.assert_allclose(result.attention.numpy().sum(-1)[real_steps], 1.0, rtol=1e-3)


def test_captioner_sampling_is_seeded(captioner_and_images):
    model, images = captioner_and_images
    draws = [decoding.decode_images(model, images, max_length=7, method="sample",
                                    num_samples=4, temperature=1.5, seed=5) for _ in range(2)]
    np.testing.assert_array_equal(draws[0].sequences, draws[1].sequences)
    assert draws[0].attention.shape == (6, 4, 7, 64)
    with pytest.raises(ValueError, match="method"):
        decoding.decode_images(model, images, max_length=7, method="nucleus")


class PythonCaptioner:
    """A stand-in for the Captioner: its encoder returns the given ``regions [B, R, D]``, its
    decoder follows :data:`A_THEN_END` through a Python function (which XLA cannot compile) and
    attends to region 0."""

    start_id, end_id = START, END

    def __init__(self, regions):
        self.regions, self.decoder = tf.constant(regions), self
        self.next_word = python_step_fn(A_THEN_END)

    def encoder(self, images, training):
        assert training is False  # inference asked for explicitly, not left to Keras' defaults
        return self.regions

    def initial_state(self, regions):
        return (regions[:, 0, :1],)

    def step(self, tokens, state):
        log_probs, state = self.next_word(tokens, state)
        return log_probs, state, tf.one_hot(tf.zeros_like(tokens), self.regions.shape[1])


def test_captioner_initial_attention_is_float32_zeros_per_region():
    """Zeros ``[B, R]`` in float32, the attention's dtype, even for float16 (mixed precision)
    regions with a single channel."""
    regions = np.arange(2 * 6, dtype=np.float16).reshape(2, 6, 1) + 1
    state = decoding.captioner_initial_state(PythonCaptioner(regions), tf.zeros([2, 4, 4, 3]))
    assert state["attention"].dtype == tf.float32
    np.testing.assert_array_equal(state["attention"], np.zeros((2, 6)))
    np.testing.assert_array_equal(state["decoder"][0], regions[:, 0])


def test_captioner_initial_state_encodes_in_inference_mode_inside_a_training_call(
        captioner_and_images):
    """Called within a layer that is training (as a caption-level reward would be), the
    encoder's batch normalisation still uses its moving statistics."""
    model, images = captioner_and_images

    class TrainingLayer(keras.layers.Layer):
        def call(self, images, training=None):
            assert training
            return decoding.captioner_initial_state(model, images)

    inside = TrainingLayer()(images[:2], training=True)
    outside = decoding.captioner_initial_state(model, images[:2])
    for got, expected in zip(tf.nest.flatten(inside), tf.nest.flatten(outside)):
        np.testing.assert_array_equal(got, expected)


def test_decode_images_compiles_with_xla_only_when_asked():
    model = PythonCaptioner(np.ones((2, 3, 4), np.float32))
    images = tf.zeros([2, 4, 4, 3], tf.uint8)
    with traced():
        result = decoding.decode_images(model, images, max_length=3)  # Python runs
        np.testing.assert_array_equal(result.sequences[:, 0], [[A, END, PAD]] * 2)
        np.testing.assert_array_equal(result.attention[:, 0, :2], [[[1, 0, 0]] * 2] * 2)
        with pytest.raises(tf.errors.InvalidArgumentError, match=NOT_XLA):
            decoding.decode_images(model, images, max_length=3, jit_compile=True)


# --- settings that cannot work are refused -------------------------------------------------------


def test_sizes_that_cannot_shape_a_graph_are_refused():
    step, state = transition_step_fn([[0, 0, 1, 0, 0]] * VOCAB), (tf.zeros([1, 3]),)
    search = dict(start_id=START, end_id=END, beam_size=2, max_length=3)
    for batch_size in (0, -1, None, tf.constant(1)):
        with pytest.raises(ValueError, match=r"^batch_size must be a positive Python int \(static\)"):
            decoding.beam_search(step, state, batch_size=batch_size, **search)
    for width, length in ((0, 3), (2, 0)):
        with pytest.raises(ValueError, match=f"^beam_size/num_samples and max_length must be >= 1, "
                                             f"got {width} and {length}$"):
            decoding.beam_search(step, state, batch_size=1, start_id=START, end_id=END,
                                 beam_size=width, max_length=length)
    with pytest.raises(ValueError, match="got 0 and 3"):
        decoding.sample(step, state, batch_size=1, start_id=START, end_id=END, max_length=3,
                        num_samples=0)
    # the smallest search that can run: one image, one beam, one word
    result = decoding.beam_search(step, state, batch_size=1, start_id=START, end_id=END,
                                  beam_size=1, max_length=1)
    np.testing.assert_array_equal(result.sequences, [[[END]]])


@pytest.mark.parametrize("temperature, top_k", [(-0.5, 0), (1.0, -1)])
def test_negative_temperature_or_top_k_is_refused(temperature, top_k):
    with pytest.raises(ValueError, match=f"^temperature and top_k must be >= 0, got {temperature} "
                                         f"and {top_k}$"):
        decoding.sample(transition_step_fn([[0, 0, 1, 0, 0]] * VOCAB), (tf.zeros([1, 3]),),
                        batch_size=1, start_id=START, end_id=END, max_length=2,
                        temperature=temperature, top_k=top_k)


def test_gnmt_length_penalty_values():
    lengths = tf.constant([1, 7, 13])
    np.testing.assert_allclose(decoding.gnmt_length_penalty(lengths, 0.0), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(decoding.gnmt_length_penalty(lengths, 1.0), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(decoding.gnmt_length_penalty(lengths, 0.5),
                               np.sqrt([1.0, 2.0, 3.0]), rtol=1e-6)
