"""utils.losses against the same formulas computed independently in NumPy (float64).

Targets hold id 1 (a real word, ``<unk>``) next to padding 0, so a mask that took the wrong id
for padding, or a loss that counted padding, would give another number.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from utils.losses import (doubly_stochastic_penalty, masked_cross_entropy,  # noqa: E402
                          real_token_mask, token_cross_entropy)

TARGETS = np.array([[4, 1, 3, 0, 0], [1, 3, 0, 0, 0], [2, 5, 6, 1, 3]], np.int32)
VOCAB = 7


def random_logits(seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(scale=scale, size=(*TARGETS.shape, VOCAB))


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_token_loss(targets, logits, smoothing=0.0):
    """-(1 - eps) log p(target) - eps * mean_v log p(v), per token."""
    log_probs = log_softmax(logits)
    target_nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return (1 - smoothing) * target_nll + smoothing * -log_probs.mean(axis=-1)


def test_token_cross_entropy_is_the_negative_log_probability_of_the_target():
    logits = random_logits()
    ours = token_cross_entropy(tf.constant(TARGETS), tf.constant(logits, tf.float32)).numpy()
    assert ours.shape == TARGETS.shape
    np.testing.assert_allclose(ours, numpy_token_loss(TARGETS, logits), rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_label_smoothing_mixes_in_the_uniform_distribution(smoothing):
    logits = random_logits(1)
    ours = token_cross_entropy(tf.constant(TARGETS), tf.constant(logits, tf.float32), smoothing)
    np.testing.assert_allclose(ours.numpy(), numpy_token_loss(TARGETS, logits, smoothing),
                               rtol=1e-5)


def test_real_token_mask_is_one_on_words_and_end_zero_on_padding():
    mask = real_token_mask(tf.constant(TARGETS)).numpy()
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, (TARGETS != 0).astype(np.float32))
    other_pad = real_token_mask(tf.constant(TARGETS), pad_id=1, dtype="float16").numpy()
    assert other_pad.dtype == np.float16
    np.testing.assert_array_equal(other_pad, (TARGETS != 1).astype(np.float16))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_masked_cross_entropy_is_the_mean_over_real_tokens(smoothing):
    logits = random_logits(2)
    expected = numpy_token_loss(TARGETS, logits, smoothing)[TARGETS != 0].mean()
    ours = masked_cross_entropy(tf.constant(TARGETS), tf.constant(logits, tf.float32),
                                label_smoothing=smoothing)
    assert float(ours) == pytest.approx(expected, rel=1e-5)
    # padded positions can hold anything: the loss does not move
    noisy = logits.copy()
    noisy[TARGETS == 0] += np.random.default_rng(3).normal(scale=50.0, size=(VOCAB,))
    again = masked_cross_entropy(tf.constant(TARGETS), tf.constant(noisy, tf.float32),
                                 label_smoothing=smoothing)
    assert float(again) == pytest.approx(float(ours), rel=1e-6)


def test_masked_cross_entropy_with_another_padding_id():
    logits = random_logits(4)
    expected = numpy_token_loss(TARGETS, logits)[TARGETS != 1].mean()
    ours = masked_cross_entropy(tf.constant(TARGETS), tf.constant(logits, tf.float32), pad_id=1)
    assert float(ours) == pytest.approx(expected, rel=1e-5)


def test_a_single_real_token_and_an_all_padding_batch():
    logits = random_logits(5)[:1, :3]
    targets = np.array([[6, 0, 0]], np.int32)
    expected = numpy_token_loss(targets, logits)[0, 0]  # divided by one token, not more
    assert float(masked_cross_entropy(tf.constant(targets), tf.constant(logits, tf.float32))) \
        == pytest.approx(expected, rel=1e-5)
    nothing = masked_cross_entropy(tf.zeros([2, 3], tf.int32), tf.constant(logits[0:1].repeat(
        2, 0), tf.float32))
    assert float(nothing) == 0.0  # no word at all: zero, not 0/0


def test_doubly_stochastic_penalty_by_hand_and_in_numpy():
    rng = np.random.default_rng(6)
    weights = rng.dirichlet(np.ones(4), size=(2, 5)).astype(np.float32)  # [B, T, R]
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    coverage = (weights * mask[..., None]).sum(axis=1)
    expected = ((1.0 - coverage) ** 2).sum(axis=-1).mean()
    ours = doubly_stochastic_penalty(tf.constant(weights), tf.constant(mask))
    assert float(ours) == pytest.approx(expected, rel=1e-5)
    # by hand: one caption of two steps, all attention on region 0 -> coverage (2, 0, 0):
    # (1 - 2)^2 + 1 + 1 = 3
    focused = tf.constant([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    assert float(doubly_stochastic_penalty(focused, tf.ones([1, 2]))) == pytest.approx(3.0)
    # every region gets exactly one step's worth: no penalty; padding steps do not count
    diagonal = tf.concat([tf.eye(3), tf.fill([1, 3], 1.0)], axis=0)[None]
    assert float(doubly_stochastic_penalty(diagonal, tf.constant([[1.0, 1.0, 1.0, 0.0]]))) == 0.0


def test_half_precision_logits_give_a_half_precision_loss():
    """Under mixed precision the logits may be float16: mask and loss follow their dtype."""
    logits = random_logits(7, scale=1.0)
    ours = masked_cross_entropy(tf.constant(TARGETS), tf.constant(logits, tf.float16))
    assert ours.dtype == tf.float16
    expected = numpy_token_loss(TARGETS, logits)[TARGETS != 0].mean()
    assert float(ours) == pytest.approx(expected, rel=2e-3)
