import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils.attention import AdditiveAttention  # noqa: E402
from utils.backbones import make_optimizer  # noqa: E402
from utils.captioner import build_captioner, greedy_decode, step_buckets  # noqa: E402
from utils.losses import masked_cross_entropy  # noqa: E402


def tiny_captioner(vocab_size=12, jit=False, **settings):
    return build_captioner(vocab_size, filters=(8, 8, 16), embed_dim=8, units=16,
                           attention_units=8, jit_decoder=jit, **settings)


def test_teacher_forced_shapes():
    model = tiny_captioner()
    images = np.zeros((3, 64, 64, 3), np.uint8)
    tokens = np.full((3, 7), 2, np.int32)
    logits, weights, _ = model((images, tokens))
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
    """Greedy words are the argmax chain of the decoder's steps, computed here one step at a
    time; after its first <end> a caption holds padding, although the decoder would go on."""
    keras.utils.set_random_seed(0)
    model = tiny_captioner()
    images = tf.zeros((4, 64, 64, 3), tf.uint8)
    model((images[:1], tf.fill([1, 1], model.start_id)))
    # random decoder weights and a nudge towards <end>: captions end after one word here
    rng = np.random.default_rng(1)
    for weight in model.decoder.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    model.decoder.logits.bias.assign(model.decoder.logits.bias + 0.5 * tf.one_hot(model.end_id, 12))
    ids, weights = greedy_decode(model, images, 6)
    assert ids.shape == (4, 6) and weights.shape == (4, 6, 64)

    state = model.decoder.initial_state(model.encoder(images))
    tokens, chain = tf.fill([4], model.start_id), []
    for _ in range(6):
        logits, state, _ = model.decoder.step(tokens, state)
        tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
        chain.append(tokens.numpy())
    chain = np.stack(chain, axis=1)
    ended = np.cumsum(chain == model.end_id, axis=1) - (chain == model.end_id) > 0
    np.testing.assert_array_equal(ids.numpy(), np.where(ended, 0, chain))
    assert ended.any() and (chain[ended] != 0).any()  # there was something to pad


@pytest.mark.slow
@pytest.mark.parametrize("jit", [True])  # without XLA: the session's smoke run (conftest.py)
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
    ids, _ = greedy_decode(model, tf.constant(images), 4)
    np.testing.assert_array_equal(ids.numpy()[:, :3], captions[:, 1:4])
    del rng


# --- decoders, training terms, serialisation ------------------------------------------------

from utils.decoders import HardAttentionDecoder  # noqa: E402
from utils.losses import doubly_stochastic_penalty, token_cross_entropy  # noqa: E402

#: Every decoder the Captioner offers, with the attention options worth covering.
DECODER_SETTINGS = {
    "soft_additive": {},
    "soft_dot_gate": dict(scoring="dot", gate=True),
    "show_and_tell": dict(decoder="show_and_tell"),
    "show_and_tell_grid": dict(decoder="show_and_tell_grid"),
    "hard": dict(decoder="hard"),
}


def tiny_batch():
    """Four flat-coloured images, each with its own caption; the last two are shorter."""
    images = np.stack([np.full((64, 64, 3), c, np.uint8) for c in (0, 80, 160, 240)])
    captions = np.array([[2, 4, 8, 3, 0], [2, 5, 9, 3, 0], [2, 6, 3, 0, 0], [2, 7, 3, 0, 0]],
                        np.int32)
    return tf.constant(images), tf.constant(captions)


def with_padding(captions, columns=3):
    return tf.concat([captions, tf.zeros([captions.shape[0], columns], captions.dtype)], axis=1)


@pytest.mark.parametrize("settings", DECODER_SETTINGS.values(), ids=DECODER_SETTINGS.keys())
def test_every_decoder_has_the_shared_interface_gradients_and_learns(settings):
    keras.utils.set_random_seed(2)
    model = tiny_captioner(**settings)
    images, captions = tiny_batch()
    logits, weights, _ = model((images, captions[:, :-1]))
    # fit builds a model itself (and fails on our two inputs) if any inner layer looks unbuilt
    assert all(layer.built for layer in model._flatten_layers())
    assert logits.shape == (4, 4, 12) and weights.shape == (4, 4, 64)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)
    state = model.decoder.initial_state(model.encoder(images))
    step_logits, _, step_weights = model.decoder.step(captions[:, 0], state)
    assert step_logits.shape == (4, 12) and step_weights.shape == (4, 64)
    ids, attention = greedy_decode(model, images, 5)
    assert ids.shape == (4, 5) and attention.shape == (4, 5, 64)

    with tf.GradientTape() as tape:
        terms = model.objective(images, captions, training=True)
        total = terms.loss + terms.reinforce
    gradients = tape.gradient(total, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, gradients) if g is None]
    assert not missing

    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    losses = model.fit(images, captions, batch_size=4, epochs=12, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("settings", DECODER_SETTINGS.values(), ids=DECODER_SETTINGS.keys())
def test_training_terms_ignore_padding_columns(settings):
    keras.utils.set_random_seed(3)
    regulariser = {} if "decoder" in settings else dict(attention_regularization=0.5)
    model = tiny_captioner(label_smoothing=0.1, **regulariser, **settings)
    images, captions = tiny_batch()
    hard = settings.get("decoder") == "hard"
    sampler_state = model.decoder.sampler.state.numpy() if hard else None
    terms = []
    for batch_captions in (captions, with_padding(captions)):
        if sampler_state is not None:  # the same region draws for both batches
            model.decoder.sampler.state.assign(sampler_state)
        terms.append(model.objective(images, batch_captions, training=True))
    short, padded = terms
    np.testing.assert_allclose(float(short.loss), float(padded.loss), rtol=1e-6)
    np.testing.assert_allclose(float(short.reinforce), float(padded.reinforce), rtol=1e-6)
    if sampler_state is not None:
        np.testing.assert_allclose(short.reward.numpy(), padded.reward.numpy(), rtol=1e-6)


def test_hard_attention_weighs_its_reinforce_term_by_lambda_r():
    """The surrogate is scaled by reinforce_weight (the paper's lambda_r), the entropy term is
    not: with the same draws, weight 0.1 gives a tenth of weight 1's term when lambda_e is 0."""
    keras.utils.set_random_seed(6)
    model = tiny_captioner(decoder="hard", entropy_bonus=0.0, reinforce_weight=1.0)
    images, captions = tiny_batch()
    model((images[:1], captions[:1, :-1]))
    model.decoder.reward_baseline.assign(-3.0)
    terms = {}
    for weight in (1.0, 0.1):
        model.decoder.reinforce_weight = weight
        model.decoder.sampler.state.assign([0, 11])
        terms[weight] = float(model.objective(images, captions, training=True).reinforce)
    assert terms[1.0] != 0.0
    np.testing.assert_allclose(terms[0.1], 0.1 * terms[1.0], rtol=1e-5)
    assert build_captioner(12, decoder="hard").decoder.reinforce_weight == 0.1


def test_step_buckets_cover_every_length_with_few_sizes():
    assert step_buckets(18) == (4, 8, 12, 16, 17)
    assert step_buckets(9) == (4, 8) and step_buckets(5) == (4,)


#: Trimming depends on the decoder only through hard attention's sampled rewards: one decoder
#: without sampling and the one with it cover both branches.
TRIM_SETTINGS = {name: DECODER_SETTINGS[name] for name in ("soft_dot_gate", "hard")}


@pytest.mark.parametrize("settings", TRIM_SETTINGS.values(), ids=TRIM_SETTINGS.keys())
def test_trimmed_training_step_gives_the_full_length_terms_and_gradients(settings):
    """In a graph, as fit runs it: the batch is cut to its bucket (4 steps of 8 here) and the
    loss, REINFORCE term and gradients are those of the untrimmed batch."""
    keras.utils.set_random_seed(4)
    model = tiny_captioner(attention_regularization=0.0 if "decoder" in settings else 0.5,
                           **settings)
    images, captions = tiny_batch()
    captions = with_padding(captions, 4)  # 9 positions, the longest caption needs 3 steps
    model((images[:1], captions[:1, :-1]))
    hard = settings.get("decoder") == "hard"

    @tf.function
    def terms_and_gradients(trim):
        if hard:  # the same region draws both times
            model.decoder.sampler.state.assign([0, 7])
        with tf.GradientTape() as tape:
            terms = model.objective(images, captions, training=False, trim=trim)
            total = terms.loss + terms.reinforce
        return terms.loss, total, tape.gradient(total, model.trainable_variables)

    full, trimmed = terms_and_gradients(False), terms_and_gradients(True)
    np.testing.assert_allclose(float(trimmed[0]), float(full[0]), rtol=1e-6)
    np.testing.assert_allclose(float(trimmed[1]), float(full[1]), rtol=1e-6)
    for short, long in zip(trimmed[2], full[2]):
        np.testing.assert_allclose(tf.convert_to_tensor(short).numpy(),
                                   tf.convert_to_tensor(long).numpy(), atol=1e-6)
    # one graph holds a decoder for every bucket; the batch picks one when it runs
    assert sorted(model.compiled_decoders) == [4, 8]


def test_teacher_forcing_applies_the_output_layer_once_with_the_same_logits():
    keras.utils.set_random_seed(5)
    model = tiny_captioner()
    images, captions = tiny_batch()
    logits = model((images, captions[:, :-1])).logits
    state = model.decoder.initial_state(model.encoder(images))
    for t in range(captions.shape[1] - 1):
        step_logits, state, _ = model.decoder.step(captions[:, t], state)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t].numpy(), atol=1e-5)


def test_doubly_stochastic_penalty():
    weights = tf.constant(np.random.default_rng(0).dirichlet(np.ones(5), size=(2, 4)), tf.float32)
    mask = tf.constant([[1, 1, 1, 0], [1, 1, 0, 0]], tf.float32)
    coverage = (weights.numpy() * mask.numpy()[..., None]).sum(1)
    expected = ((1 - coverage) ** 2).sum(-1).mean()
    assert float(doubly_stochastic_penalty(weights, mask)) == pytest.approx(expected, rel=1e-6)
    # attention spread so that every region gets exactly one step's worth: no penalty
    assert float(doubly_stochastic_penalty(tf.eye(4)[None], tf.ones([1, 4]))) == 0.0

    images, captions = tiny_batch()
    losses = {}
    for weight in (0.0, 0.5):
        keras.utils.set_random_seed(4)  # the same initial weights for both
        model = tiny_captioner(attention_regularization=weight)
        losses[weight] = float(model.objective(images, captions).loss)
        weights = model((images, captions[:, :-1])).weights
    plain = float(masked_cross_entropy(captions[:, 1:], model((images, captions[:, :-1]))[0]))
    assert losses[0.0] == pytest.approx(plain, rel=1e-6)
    penalty = float(doubly_stochastic_penalty(weights, tf.cast(captions[:, 1:] > 0, tf.float32)))
    assert penalty > 0 and losses[0.5] == pytest.approx(plain + 0.5 * penalty, rel=1e-5)


def test_label_smoothing_penalises_certainty_and_skips_padding():
    targets = tf.constant([[1, 2, 0], [3, 0, 0]])
    perfect = tf.one_hot(targets, 5) * 30.0  # all the probability on the right word
    assert float(masked_cross_entropy(targets, perfect)) < 1e-6
    smoothed = float(masked_cross_entropy(targets, perfect, label_smoothing=0.1))
    assert smoothed > 1.0
    # equal to Keras's smoothed categorical cross-entropy over the three real tokens
    real = tf.constant([[True, True, False], [True, False, False]])
    reference = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        tf.one_hot(targets[real], 5), perfect[real])
    assert smoothed == pytest.approx(float(reference), rel=1e-5)
    noisy = perfect.numpy()
    noisy[0, 2] += 100.0 * np.arange(5)
    assert float(masked_cross_entropy(targets, tf.constant(noisy), label_smoothing=0.1)) == \
        pytest.approx(smoothed, rel=1e-6)
    assert token_cross_entropy(targets, perfect, 0.1).shape == (2, 3)


def test_hard_attention_samples_regions_and_moves_its_baseline():
    keras.utils.set_random_seed(5)
    model = tiny_captioner(decoder="hard", hard_expected_rate=0.0)
    images, captions = tiny_batch()
    model((images, captions[:, :-1]))
    regions = model.encoder(images)
    output = model.decoder.teacher_force(regions, captions[:, :-1], training=True)
    index = output.glimpses.index.numpy()
    assert index.shape == (4, 4) and ((index >= 0) & (index < 64)).all()
    chosen = np.take_along_axis(output.weights.numpy(), index[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.exp(output.glimpses.log_prob.numpy()), chosen, rtol=1e-5)
    assert (output.glimpses.entropy.numpy() <= np.log(64) + 1e-5).all()
    # the generator moves on: the next pass draws other regions
    redrawn = model.decoder.teacher_force(regions, captions[:, :-1], training=True)
    assert (redrawn.glimpses.index.numpy() != index).any()
    # at test time: no sampling, the expected context, the same weights every time
    assert model.decoder.teacher_force(regions, captions[:, :-1]).glimpses is None

    assert float(model.decoder.reward_baseline) == 0.0
    reward = float(tf.reduce_mean(model.objective(images, captions, training=True).reward))
    assert reward < 0  # a log-likelihood
    # one training step: b <- 0.9 * 0 + 0.1 * mean(reward), the reward of that step's draws
    rewards, update = [], model.decoder.update_baseline
    model.decoder.update_baseline = lambda reward: (rewards.append(reward.numpy()), update(reward))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    model.fit(images, captions, batch_size=4, epochs=1, verbose=0)
    baseline = float(model.decoder.reward_baseline)
    assert len(rewards) == 1 and (rewards[0] < 0).all()
    assert baseline == pytest.approx(0.1 * rewards[0].mean(), rel=1e-5)
    model.decoder.update_baseline(tf.fill([4], baseline - 10.0))
    assert float(model.decoder.reward_baseline) == pytest.approx(baseline - 1.0, rel=1e-5)


def test_hard_attention_uses_the_expected_context_at_its_rate():
    images, captions = tiny_batch()
    outputs = {}
    for rate in (0.5, 1.0):
        keras.utils.set_random_seed(5)
        model = tiny_captioner(decoder="hard", hard_expected_rate=rate)
        model((images, captions[:, :-1]))
        regions = model.encoder(images)
        outputs[rate] = model.decoder.teacher_force(regions, captions[:, :-1], training=True)
        expected = model.decoder.teacher_force(regions, captions[:, :-1])
    # always the expected context: the soft model's logits, and no REINFORCE signal at all
    np.testing.assert_allclose(outputs[1.0].logits, expected.logits, rtol=1e-5, atol=1e-6)
    assert (outputs[1.0].glimpses.log_prob.numpy() == 0).all()
    # half the time: some steps sampled (log alpha < 0), some expected (0)
    log_prob = outputs[0.5].glimpses.log_prob.numpy()
    assert (log_prob == 0).any() and (log_prob < 0).any()


def test_hard_attention_training_repeats_with_the_same_seed():
    images, captions = tiny_batch()

    def train(seed):
        keras.utils.set_random_seed(seed)
        model = tiny_captioner(decoder="hard")
        model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
        losses = model.fit(images, captions, batch_size=4, epochs=2, verbose=0).history["loss"]
        return losses, [v.numpy() for v in model.weights]

    (losses, weights), (again, weights_again) = train(6), train(6)
    assert losses == again
    for a, b in zip(weights, weights_again):
        np.testing.assert_array_equal(a, b)


def test_default_captioner_is_unchanged():
    """The book's chapter 5 model: numbers from the soft-attention-only version of this module
    (commit 1c9f7f7), same seed, same inputs. New options must not move them."""
    keras.utils.set_random_seed(3)
    model = build_captioner(12, filters=(8, 8, 16), embed_dim=8, units=16, attention_units=8,
                      jit_decoder=False)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    tokens = np.array([[2, 5, 6, 3], [2, 7, 3, 0]], np.int32)
    logits, weights, _ = model((images, tokens))
    np.testing.assert_allclose(logits.numpy()[1, :, :4], [
        [0.028643686, 0.114204586, -0.10167646, -0.032692358],
        [0.035023373, 0.10564165, -0.09152702, -0.081561744],
        [0.03538946, 0.10769971, -0.083228186, -0.081166215],
        [0.04022341, 0.09948714, -0.07393159, -0.11046291]], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(weights.numpy()[0, -1, :6], [
        0.014753846, 0.012523501, 0.014008238, 0.011521229, 0.013439517, 0.012837082],
        rtol=1e-4)


@pytest.mark.parametrize("settings", [dict(scoring="dot", gate=True, label_smoothing=0.1),
                                      dict(decoder="hard", attention_regularization=0.1),
                                      dict(decoder="show_and_tell"),
                                      dict(decoder="show_and_tell_grid")],
                         ids=["soft_dot_gate", "hard", "show_and_tell", "show_and_tell_grid"])
def test_keras_file_round_trip(settings, tmp_path):
    keras.utils.set_random_seed(8)
    model = tiny_captioner(**settings)
    images, captions = tiny_batch()
    model((images, captions[:, :-1]))
    # random decoder weights, so that greedy words differ between images
    rng = np.random.default_rng(8)
    for weight in model.decoder.trainable_weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    assert type(model).from_config(model.get_config()).get_config() == model.get_config()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.decoder) is type(model.decoder)
    for a, b in zip(greedy_decode(model, images, 5), greedy_decode(loaded, images, 5)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("image", ["mean", "grid"])
def test_show_and_tell_reads_the_image_as_its_first_input(image):
    """As in Vinyals et al.: from a zero state, the LSTM's first step reads the image vector;
    the words start from the state it leaves. Only the grid form changes when the regions are
    rearranged."""
    model = tiny_captioner(decoder="show_and_tell_grid" if image == "grid" else "show_and_tell")
    images, captions = tiny_batch()
    model((images, captions[:, :-1]))
    decoder = model.decoder
    regions = model.encoder(images)
    h, c, uniform = decoder.initial_state(regions)
    summary = (keras.ops.reshape(regions, (len(images), -1)) if image == "grid"
               else keras.ops.mean(regions, axis=1))
    zeros = np.zeros((len(images), decoder.units), "float32")
    _, (h_by_hand, c_by_hand) = decoder.cell(decoder.image_input(summary), [zeros, zeros])
    np.testing.assert_allclose(h, h_by_hand, rtol=1e-6)
    np.testing.assert_allclose(c, c_by_hand, rtol=1e-6)
    np.testing.assert_allclose(uniform, np.full(uniform.shape, 1 / regions.shape[1]))
    shuffled = keras.ops.take(regions, np.random.default_rng(0).permutation(regions.shape[1]),
                              axis=1)
    moved = decoder.initial_state(shuffled)[0]
    if image == "grid":
        assert not np.allclose(moved, h, atol=1e-4)
    else:
        np.testing.assert_allclose(moved, h, rtol=1e-5, atol=1e-6)


def test_settings_that_would_do_nothing_are_refused():
    for settings in (dict(decoder="glance"), dict(scoring="cosine"),
                     dict(decoder="show_and_tell", gate=True),
                     dict(decoder="show_and_tell", attention_regularization=1.0),
                     dict(decoder="show_and_tell_grid", scoring="dot")):
        with pytest.raises(ValueError):
            tiny_captioner(**settings)
    assert isinstance(tiny_captioner(decoder="hard").decoder, HardAttentionDecoder)


def test_feature_encoder_trains_on_cached_features():
    """encoder="features": float16 backbone features [B, R, C] in, captions out."""
    keras.utils.set_random_seed(3)
    model = tiny_captioner(encoder="features", region_dim=16)
    _, captions = tiny_batch()
    features = tf.constant(np.random.default_rng(0).normal(size=(4, 49, 40)), tf.float16)
    logits, weights, _ = model((features, captions[:, :-1]))
    assert logits.shape == (4, 4, 12) and weights.shape == (4, 4, 49)
    ids, _ = greedy_decode(model, features, 5)
    assert ids.shape == (4, 5)
    model.compile(optimizer=make_optimizer(model, 1e-2), run_eagerly=True)
    losses = model.fit(features, captions, batch_size=4, epochs=10, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("factor", [0.0, 1.0])
def test_fine_tuned_backbone_learns_at_its_own_rate(factor):
    """A backbone inside the model: its trainable layers move with the decoder, scaled by
    backbone_learning_rate_factor (0: frozen in place, 1: the decoder's rate)."""
    keras.utils.set_random_seed(4)
    model = tiny_captioner(encoder="backbone", backbone="shapes_cnn", backbone_weights=None,
                           trainable_layers=1, backbone_learning_rate_factor=factor)
    images, captions = tiny_batch()
    model((images, captions[:, :-1]))
    backbone = model.encoder.backbone.trainable_variables
    assert backbone, "the last layer of the backbone should be trainable"
    before = [v.numpy().copy() for v in backbone]
    projection = model.encoder.project.kernel.numpy().copy()
    model.compile(optimizer=make_optimizer(model, 1e-2))
    model.fit(images, captions, batch_size=4, epochs=2, verbose=0)
    moved = [not np.allclose(a, v.numpy()) for a, v in zip(before, backbone)]
    assert any(moved) == (factor > 0)
    assert not np.allclose(projection, model.encoder.project.kernel.numpy())


def test_frozen_backbone_has_no_trainable_variables():
    model = tiny_captioner(encoder="backbone", backbone="shapes_cnn", backbone_weights=None)
    images, captions = tiny_batch()
    model((images, captions[:, :-1]))
    assert model.encoder.backbone.trainable_variables == []
    assert type(make_optimizer(model, 1e-3)).__name__ == "Adam"


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("settings", TRIM_SETTINGS.values(), ids=TRIM_SETTINGS.keys())
def test_mixed_precision_trains_with_float32_logits_and_loss_scaling(mixed_precision, settings):
    """mixed_float16 (the gpu profile): float16 activations, float32 logits and attention, and
    the optimizer wrapped in a LossScaleOptimizer by compile; training and searches still work."""
    from utils.decoding import decode_images

    keras.utils.set_random_seed(5)
    model = tiny_captioner(**settings)
    images, captions = tiny_batch()
    logits, weights, _ = model((images, captions[:, :-1]))
    assert logits.dtype == tf.float32 and weights.dtype == tf.float32
    assert model.encoder(images).dtype == tf.float16
    model.compile(optimizer=make_optimizer(model, 1e-2))
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    losses = model.fit(images, captions, batch_size=4, epochs=12, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    result = decode_images(model, images, max_length=5, beam_size=3)
    assert result.sequences.shape == (4, 3, 5)
