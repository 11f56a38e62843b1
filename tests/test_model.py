import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils.model import AdditiveAttention, Captioner, masked_cross_entropy  # noqa: E402


def tiny_captioner(vocab_size=12, jit=False):
    return Captioner(vocab_size, filters=(8, 8, 16), embed_dim=8, units=16, attention_units=8,
                     jit_decoder=jit)


def test_teacher_forced_shapes():
    model = tiny_captioner()
    images = np.zeros((3, 64, 64, 3), np.uint8)
    tokens = np.full((3, 7), 2, np.int32)
    logits, weights = model((images, tokens))
    assert logits.shape == (3, 7, 12)
    assert weights.shape == (3, 7, 64)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)


def test_masked_loss_ignores_padding():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 4, 5)), tf.float32)
    targets = tf.constant([[1, 2, 0, 0], [3, 0, 0, 0]])
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits).numpy()
    expected = (per_token[0, 0] + per_token[0, 1] + per_token[1, 0]) / 3
    assert float(masked_cross_entropy(targets, logits)) == pytest.approx(expected, rel=1e-6)
    # changing the logits at padded positions changes nothing
    noisy = logits.numpy()
    noisy[0, 2:] += 100.0
    assert float(masked_cross_entropy(targets, tf.constant(noisy))) == pytest.approx(expected, rel=1e-6)


def test_attention_projects_keys_once_and_weights_sum_to_one():
    attention = AdditiveAttention(4)
    regions = tf.random.normal((2, 9, 6))
    keys = attention.project_keys(regions)
    context, weights = attention(keys, regions, tf.random.normal((2, 5)))
    assert keys.shape == (2, 9, 4) and context.shape == (2, 6) and weights.shape == (2, 9)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(context.numpy(), np.einsum("br,brd->bd", weights, regions), rtol=1e-5)


def test_greedy_pads_after_end():
    model = tiny_captioner()
    ids, weights = model.greedy(tf.zeros((4, 64, 64, 3), tf.uint8), 6)
    ids = ids.numpy()
    assert ids.shape == (4, 6) and weights.shape == (4, 6, 64)
    for row in ids:
        ends = np.flatnonzero(row == model.end_id)
        if ends.size:
            assert (row[ends[0] + 1 :] == 0).all()


@pytest.mark.parametrize("jit", [False, True])
def test_model_learns_to_caption_a_few_images(jit):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    # four flat-coloured images, each with its own two-word caption: <start> w w <end>
    images = np.stack([np.full((64, 64, 3), c, np.uint8) for c in (0, 80, 160, 240)])
    captions = np.array([[2, 4 + i, 8 + i, 3, 0] for i in range(4)], np.int32)
    model = tiny_captioner(jit=jit)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(images, captions, batch_size=4, epochs=60, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]
    ids, _ = model.greedy(tf.constant(images), 4)
    np.testing.assert_array_equal(ids.numpy()[:, :3], captions[:, 1:4])
    del rng
