"""The captioner: an encoder and a decoder, the training objective, the training step, greedy
decoding, and the faster training step the book trains with.

Built in chapter 5: the plain :class:`Captioner` in section 5.7, :func:`greedy_decode` in 5.8,
:class:`FastCaptioner` in 5.10, :func:`build_captioner` in 5.11, :func:`caption_log_likelihood`
in 5.15. The code between a ``# >>>`` and a
``# <<<`` line is that chapter's cell, copied here by ``make code`` (``book/chapter_code.py``):
edit the chapter, not these lines. ``tests/test_chapter_code.py`` keeps the two equal.

Shapes: ``B`` batch, ``R`` regions, ``T`` caption positions, ``V`` vocabulary.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import keras
import tensorflow as tf
from keras import ops

from .backbones import BackboneEncoder, FeatureEncoder
from .decoders import AttentionDecoder, HardAttentionDecoder, ShowAndTellDecoder
from .encoders import RegionEncoder
from .losses import doubly_stochastic_penalty, masked_cross_entropy, real_token_mask, \
    token_cross_entropy

serializable = keras.saving.register_keras_serializable(package="image_understanding")


# >>> chapters/05_implementation.ipynb, section 5.7: edit it there, then `make code`
class Objective(NamedTuple):
    """One batch's training terms: ``loss``, the cross-entropy (plus the
    attention regulariser, if asked for), which is what is logged;
    ``reinforce``, hard attention's REINFORCE surrogate (0 for the other
    decoders); ``reward`` ``[B]``, hard attention's rewards (else
    ``None``)."""

    loss: Any
    reinforce: Any = 0.0
    reward: Any = None


@serializable
class Captioner(keras.Model):
    """An encoder and a decoder, trained with ``fit`` on
    ``(images, captions)`` batches.

    ``captions`` are ``int[B, T+1]`` word ids,
    ``<start> w1 w2 ... <end> 0 0``; the decoder reads positions ``0..T-1``
    and is scored on predicting positions ``1..T`` (teacher forcing).
    ``label_smoothing`` and ``attention_regularization`` (the weight of
    :func:`doubly_stochastic_penalty`) are options of the loss, off by
    default.
    """

    def __init__(
        self,
        encoder,
        decoder,
        *,
        start_id=2,
        end_id=3,
        label_smoothing=0.0,
        attention_regularization=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.start_id, self.end_id = start_id, end_id
        self.label_smoothing = label_smoothing
        self.attention_regularization = attention_regularization
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def build(self, input_shape):
        # Create every weight now, with a one-image pass; weights created
        # later, inside a compiled training step, would be missed by its
        # gradient tape.
        image_shape, _ = input_shape
        regions = self.encoder(ops.zeros((1, *image_shape[1:])))
        self.decoder(regions, ops.full((1, 1), self.start_id, "int32"))

    def call(self, inputs, training=False):
        """``(images, tokens [B, T])`` -> ``logits [B, T, V]``,
        ``weights [B, T, R]``."""
        images, tokens = inputs
        output = self.decode(
            self.encoder(images, training=training), tokens, training
        )
        return output.logits, output.weights

    def decode(self, regions, tokens, training=False):
        """The decoder, teacher-forced on ``tokens``: a
        :class:`DecoderOutput`."""
        return self.decoder.teacher_force(regions, tokens, training=training)

    def objective(self, images, captions, training=False):
        """The training terms of one batch (:class:`Objective`)."""
        # called before the model has seen a batch: create its weights
        if not self.built:
            self((images[:1], captions[:1, :-1]))
        return self.caption_objective(
            self.encoder(images, training=training), captions, training
        )

    def caption_objective(self, regions, captions, training):
        targets = captions[:, 1:]
        output = self.decode(regions, captions[:, :-1], training)
        loss = masked_cross_entropy(
            targets, output.logits, label_smoothing=self.label_smoothing
        )
        if self.attention_regularization:
            mask = real_token_mask(targets, dtype=output.weights.dtype)
            loss += (
                self.attention_regularization
                * doubly_stochastic_penalty(output.weights, mask)
            )
        if output.glimpses is None:
            return Objective(loss)
        # section 5.15
        return Objective(
            loss, *self.decoder.reinforce_terms(targets, output)
        )

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        images, captions, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            terms = self.objective(images, captions, training=True)
            total = self.loss_for_gradients(terms.loss + terms.reinforce)
        gradients = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        if terms.reward is not None:
            self.decoder.update_baseline(terms.reward)
        self.loss_tracker.update_state(terms.loss)
        return {"loss": self.loss_tracker.result()}

    def loss_for_gradients(self, total):
        """What the gradient is taken of: here the loss itself (section 5.10
        scales it)."""
        return total

    def test_step(self, data):
        images, captions, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.loss_tracker.update_state(self.objective(images, captions).loss)
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        # The parts without their input shapes: build() builds them together,
        # as for a new model.
        parts = {
            part: {
                **keras.saving.serialize_keras_object(getattr(self, part)),
                "build_config": None,
            }
            for part in ("encoder", "decoder")
        }
        return {
            **super().get_config(),
            **parts,
            "start_id": self.start_id,
            "end_id": self.end_id,
            "label_smoothing": self.label_smoothing,
            "attention_regularization": self.attention_regularization,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        parts = {
            part: keras.saving.deserialize_keras_object(config.pop(part))
            for part in ("encoder", "decoder")
        }
        return cls(**parts, **config)
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.8: edit it there, then `make code`
def greedy_decode(model, images, max_length):
    """Caption ``images`` one word at a time, always taking the most probable
    word. Returns ``int[B, max_length]`` word ids (``<end>``, then 0s) and
    the attention weights ``[B, max_length, R]`` behind each word. Stops once
    every caption has ended."""
    regions = model.encoder(images, training=False)
    state = model.decoder.initial_state(regions)
    tokens = ops.full((ops.shape(regions)[0],), model.start_id, "int32")
    finished = ops.zeros_like(tokens, "bool")
    words, attention = [], []
    for _ in range(max_length):
        logits, state, weights = model.decoder.step(tokens, state)
        tokens = ops.cast(ops.argmax(logits, axis=-1), "int32")
        words.append(ops.where(finished, 0, tokens))
        attention.append(ops.where(finished[:, None], 0.0, weights))
        finished = ops.logical_or(finished, tokens == model.end_id)
        if bool(ops.all(finished)):
            break
    # steps not taken: padding, no attention
    missing = max_length - len(words)
    return (
        ops.pad(ops.stack(words, axis=1), [(0, 0), (0, missing)]),
        ops.pad(
            ops.stack(attention, axis=1), [(0, 0), (0, missing), (0, 0)]
        ),
    )
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.10: edit it there, then `make code`
#: A training batch is cut after its longest caption, the decoder's step
#: count rounded up to a multiple of this (:func:`step_buckets`): few
#: distinct lengths, so few compiled decoders.
TRIM_MULTIPLE = 4


def step_buckets(positions, multiple=TRIM_MULTIPLE):
    """The decoder step counts a batch of ``int[B, positions]`` captions can
    be trimmed to: the multiples of ``multiple`` below ``positions - 1``, and
    ``positions - 1`` itself."""
    full = positions - 1
    return tuple(range(multiple, full, multiple)) + (full,)


def trimmed_steps(captions):
    """The decoder steps a trimmed batch of ``int[B, positions]`` captions
    runs: those its longest caption needs, rounded up to one of
    :func:`step_buckets`."""
    captions = ops.convert_to_numpy(captions)
    needed = int((captions != 0).sum(axis=1).max()) - 1
    return next(
        bucket
        for bucket in step_buckets(captions.shape[1])
        if bucket >= needed
    )


def replicas_in_sync():
    """How many replicas share each batch under the current distribution
    strategy (1 without)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


@serializable
class FastCaptioner(Captioner):
    """The :class:`Captioner` with the speed-ups of section 5.10, same
    results:

    - the teacher-forced decoder is compiled once per caption length, with
      XLA when ``jit_decoder`` (XLA fuses the many small operations of the
      unrolled loop);
    - with ``trim_batches`` a training batch is cut after its longest caption
      (worth it when batches are grouped by length; ``utils.train.fit``
      decides);
    - under a distribution strategy each replica's loss counts its share of
      the batch, and under mixed precision the loss is scaled so that float16
      gradients do not underflow.
    """

    def __init__(self, encoder, decoder, *, jit_decoder=True, **kwargs):
        super().__init__(encoder, decoder, **kwargs)
        self.jit_decoder = jit_decoder
        self.trim_batches = True
        # caption length -> compiled teacher_force
        self.compiled_decoders = {}

    def decode(self, regions, tokens, training=False):
        if keras.backend.backend() != "tensorflow":
            # JAX and PyTorch: Keras compiles the whole step its own way
            return super().decode(regions, tokens, training)
        length = tokens.shape[1]
        if length not in self.compiled_decoders:
            # reduce_retracing lets the batch size vary; the length is fixed
            # per entry, since the loop is unrolled over it.
            self.compiled_decoders[length] = tf.function(
                self.decoder.teacher_force,
                jit_compile=self.jit_decoder,
                reduce_retracing=True,
            )
        return self.compiled_decoders[length](
            regions, tokens, training=training
        )

    def objective(self, images, captions, training=False, trim=None):
        """With ``trim`` (by default: while training, if ``trim_batches``),
        the decoder runs only the steps that the batch's longest caption
        needs, rounded up to one of :func:`step_buckets`; the terms are those
        without, since padding is masked out of every one of them. The bucket
        is picked inside the graph (``tf.switch_case``), so one traced step
        serves every batch and each bucket's decoder is compiled for its own
        length."""
        trim = training and self.trim_batches if trim is None else trim
        positions = captions.shape[1]
        if not trim or positions is None or positions - 1 <= TRIM_MULTIPLE:
            return super().objective(images, captions, training)
        regions = self.encoder(images, training=training)
        buckets = step_buckets(positions)
        lengths = ops.sum(ops.cast(captions != 0, "int32"), axis=1)
        steps = ops.max(lengths) - 1
        index = ops.sum(
            ops.cast(ops.convert_to_tensor(buckets) < steps, "int32")
        )
        # hard attention (section 5.15)
        sampled = hasattr(self.decoder, "reinforce_terms")

        def branch(length):
            def run():
                terms = self.caption_objective(
                    regions, captions[:, : length + 1], training
                )
                # Every branch returns tensors of one structure: no None, no
                # Python float.
                reward = terms.reward if sampled else ops.zeros((0,))
                return (
                    ops.convert_to_tensor(terms.loss),
                    ops.convert_to_tensor(terms.reinforce),
                    reward,
                )

            return run

        loss, reinforce, reward = tf.switch_case(
            index, [branch(n) for n in buckets]
        )
        return Objective(loss, reinforce, reward if sampled else None)

    def loss_for_gradients(self, total):
        # The optimizer sums the replicas' gradients, so each brings its
        # share.
        total = total / replicas_in_sync()
        # Under mixed precision Keras wraps the optimizer in a
        # LossScaleOptimizer: the loss is scaled up so that float16 gradients
        # do not underflow; apply() scales them back.
        return self.optimizer.scale_loss(total)

    def get_config(self):
        return {**super().get_config(), "jit_decoder": self.jit_decoder}
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.11: edit it there, then `make code`
ENCODERS = ("cnn", "features", "backbone")
DECODERS = ("soft", "show_and_tell", "show_and_tell_grid", "hard")
SCORINGS = ("additive", "dot")


def build_captioner(
    vocab_size,
    *,
    filters=(32, 64, 128),
    embed_dim=64,
    units=256,
    attention_units=128,
    dropout=0.0,
    encoder="cnn",
    region_dim=None,
    backbone=None,
    trainable_layers=0,
    backbone_weights="imagenet",
    backbone_learning_rate_factor=0.1,
    decoder="soft",
    scoring="additive",
    gate=False,
    seed=None,
    hard_expected_rate=0.5,
    entropy_bonus=0.01,
    reinforce_weight=0.1,
    fast=True,
    jit_decoder=True,
    **options,
):
    """A captioner assembled from parts named by strings: ``encoder``
    ``"cnn"`` (section 5.4), ``"features"`` or ``"backbone"`` (5.16);
    ``decoder`` ``"soft"`` (5.6), ``"show_and_tell"``,
    ``"show_and_tell_grid"`` or ``"hard"`` (5.15),
    with ``scoring`` ``"additive"`` or ``"dot"`` (5.5). A
    :class:`FastCaptioner` unless ``fast=False``; ``options`` go to the
    :class:`Captioner`."""
    if (
        encoder not in ENCODERS
        or decoder not in DECODERS
        or scoring not in SCORINGS
    ):
        raise ValueError(
            f"encoder must be one of {ENCODERS}, "
            f"decoder one of {DECODERS}, scoring one of {SCORINGS}; "
            f"got {encoder!r}, {decoder!r}, {scoring!r}"
        )
    if decoder.startswith("show_and_tell") and (
        scoring != "additive"
        or gate
        or options.get("attention_regularization")
    ):
        raise ValueError(
            f"decoder={decoder!r} has no attention: scoring, gate and "
            "attention_regularization do not apply to it"
        )
    region_dim = region_dim or filters[-1]
    if encoder == "cnn":
        # batch statistics over all replicas
        synchronized = fast and replicas_in_sync() > 1
        image_encoder = RegionEncoder(
            filters, dim=region_dim, synchronized=synchronized
        )
    elif encoder == "features":
        image_encoder = FeatureEncoder(region_dim, dropout)
    else:
        if backbone is None:
            raise ValueError(
                'encoder="backbone" needs backbone=NAME '
                "(see utils.backbones)"
            )
        image_encoder = BackboneEncoder(
            backbone,
            region_dim,
            dropout,
            trainable_layers,
            backbone_weights,
            backbone_learning_rate_factor,
        )
    if decoder == "soft":
        word_decoder = AttentionDecoder(
            vocab_size,
            embed_dim,
            units,
            attention_units,
            dropout,
            scoring,
            gate,
        )
    elif decoder == "hard":
        word_decoder = HardAttentionDecoder(
            vocab_size,
            embed_dim,
            units,
            attention_units,
            dropout,
            scoring,
            gate,
            seed,
            hard_expected_rate,
            entropy_bonus,
            reinforce_weight,
        )
    else:
        image = "grid" if decoder == "show_and_tell_grid" else "mean"
        word_decoder = ShowAndTellDecoder(
            vocab_size, embed_dim, units, dropout, image
        )
    if fast:
        return FastCaptioner(
            image_encoder, word_decoder, jit_decoder=jit_decoder, **options
        )
    return Captioner(image_encoder, word_decoder, **options)


def captioner_from_profile(profile, vocab_size, **options):
    """:func:`build_captioner` with the sizes of a
    :class:`utils.profile.Profile`; ``options`` (``decoder="hard"``,
    ``encoder="features"``, ...) are passed on."""
    sizes = dict(
        filters=profile.cnn_filters,
        embed_dim=profile.embed_dim,
        units=profile.units,
        attention_units=profile.attention_units,
        dropout=profile.dropout,
        jit_decoder=profile.jit_compile,
    )
    return build_captioner(vocab_size, **{**sizes, **options})
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.15: edit it there, then `make code`
def caption_log_likelihood(model, images, captions):
    """``log p(caption | image)`` for ``captions int[B, T+1]``
    (``<start> ... <end> 0 0``): the summed log-probabilities of its words
    and ``<end>``, padding not counted. ``[B]``."""
    targets = captions[:, 1:]
    regions = model.encoder(images, training=False)
    logits = model.decode(regions, captions[:, :-1]).logits
    per_token = token_cross_entropy(targets, logits)
    return -ops.sum(
        per_token * real_token_mask(targets, dtype=per_token.dtype), axis=1
    )
# <<< chapters/05_implementation.ipynb
