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
from keras import ops

from .backbones import BackboneEncoder, FeatureEncoder
from .decoders import AttentionDecoder, DecoderOutput, HardAttentionDecoder, \
    ShowAndTellDecoder
from .encoders import RegionEncoder
from .losses import doubly_stochastic_penalty, masked_cross_entropy, real_token_mask, \
    token_cross_entropy

try:  # only the TensorFlow backend's speed-ups (FastCaptioner) use it
    import tensorflow as tf
except ImportError:
    tf = None

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


def teacher_forcing(images, captions):
    """Split a batch of ``captions int[B, T+1]`` into what the model reads,
    ``(images, captions[:, :-1])``, and what it is scored on,
    ``captions[:, 1:]``."""
    return (images, captions[:, :-1]), captions[:, 1:]


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

    def build(self, input_shape):
        # Create every weight now, with a one-image pass; weights created
        # later, inside a compiled training step, would be missed by its
        # gradient.
        image_shape, _ = input_shape
        regions = self.encoder(ops.zeros((1, *image_shape[1:])))
        self.decoder(regions, ops.full((1, 1), self.start_id, "int32"))

    def call(self, inputs, training=False):
        """``(images, tokens [B, T])`` -> the decoder's output
        (:class:`DecoderOutput`): ``logits [B, T, V]``,
        ``weights [B, T, R]``."""
        images, tokens = inputs
        regions = self.encoder(images, training=training)
        return self.decode(regions, tokens, training)

    def decode(self, regions, tokens, training=False):
        """The decoder, teacher-forced on ``tokens``: a
        :class:`DecoderOutput`."""
        return self.decoder.teacher_force(regions, tokens, training=training)

    def terms(self, targets, output):
        """The training terms (:class:`Objective`) of a teacher-forced
        ``output`` scored on ``targets int[B, T]``."""
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

    def objective(self, images, captions, training=False, **options):
        """The training terms of one batch (:class:`Objective`)."""
        inputs, targets = teacher_forcing(images, captions)
        return self.terms(
            targets, self(inputs, training=training, **options)
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """What Keras' training step takes the gradient of, and logs: the
        cross-entropy of ``y_pred``, the model's output, against
        ``y``."""
        terms = self.terms(y, y_pred)
        if not training or terms.reward is None:
            return terms.loss
        # Hard attention (section 5.15): the REINFORCE term adds its
        # gradient but not its value, so the loss logged stays the
        # cross-entropy.
        self.decoder.update_baseline(terms.reward)
        return (
            terms.loss + terms.reinforce - ops.stop_gradient(terms.reinforce)
        )

    # Keras' train_step and test_step call the model on x and score it on y
    # with compute_loss; the batch is (images, captions), so split it first.
    # (The JAX backend passes its state before the batch.)
    def train_step(self, *state_and_batch):
        *state, batch = state_and_batch
        images, captions, _ = keras.utils.unpack_x_y_sample_weight(batch)
        return super().train_step(*state, teacher_forcing(images, captions))

    def test_step(self, *state_and_batch):
        *state, batch = state_and_batch
        images, captions, _ = keras.utils.unpack_x_y_sample_weight(batch)
        return super().test_step(*state, teacher_forcing(images, captions))

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


def on_tensorflow():
    """Whether Keras runs on TensorFlow, where the speed-ups below apply."""
    return keras.backend.backend() == "tensorflow"


def replicas_in_sync():
    """How many replicas share each batch under the current distribution
    strategy (1 without, and on the JAX and PyTorch backends)."""
    if not on_tensorflow():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


@serializable
class FastCaptioner(Captioner):
    """The :class:`Captioner` with the speed-ups of section 5.10, same
    results. On TensorFlow:

    - the teacher-forced decoder is compiled once per caption length, with
      XLA when ``jit_decoder`` (XLA fuses the many small operations of the
      unrolled loop);
    - with ``trim_batches`` a training batch is cut after its longest caption
      (worth it when batches are grouped by length; ``utils.train.fit``
      decides).

    Under a distribution strategy each replica's loss counts its share of
    the batch. On JAX and PyTorch this is the plain model.
    """

    def __init__(self, encoder, decoder, *, jit_decoder=True, **kwargs):
        super().__init__(encoder, decoder, **kwargs)
        self.jit_decoder = jit_decoder
        self.trim_batches = True
        # caption length -> compiled teacher_force
        self.compiled_decoders = {}

    def decode(self, regions, tokens, training=False):
        if not on_tensorflow():
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

    def call(self, inputs, training=False, trim=None):
        """With ``trim`` (by default: while training, if ``trim_batches``),
        the decoder runs only the steps that the batch's longest caption
        needs, rounded up to one of :func:`step_buckets`: the output is
        shorter than ``tokens``, by padding only. The bucket is picked inside
        the graph (``tf.switch_case``), so one traced step serves every batch
        and each bucket's decoder is compiled for its own length."""
        trim = training and self.trim_batches if trim is None else trim
        images, tokens = inputs
        positions = tokens.shape[1]
        if (
            not (trim and on_tensorflow())
            or positions is None
            or positions <= TRIM_MULTIPLE
        ):
            return super().call(inputs, training)
        regions = self.encoder(images, training=training)
        buckets = step_buckets(positions + 1)
        # the words each caption is scored on: its tokens but <end>
        words = ops.logical_and(tokens != 0, tokens != self.end_id)
        steps = ops.max(ops.sum(ops.cast(words, "int32"), axis=1))
        index = ops.sum(
            ops.cast(ops.convert_to_tensor(buckets) < steps, "int32")
        )

        def branch(length):
            def run():
                output = self.decode(regions, tokens[:, :length], training)
                # every branch returns one structure: no None
                return tuple(part for part in output if part is not None)

            return run

        parts = tf.switch_case(index, [branch(n) for n in buckets])
        return DecoderOutput(*parts)

    def terms(self, targets, output):
        # a trimmed output is shorter than its targets by padding only
        length = ops.shape(output.logits)[1]
        return super().terms(targets[:, :length], output)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # The optimizer sums the replicas' gradients, so each brings its
        # share. (Under mixed precision Keras' step also scales the loss up,
        # so that float16 gradients do not underflow.)
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss / replicas_in_sync()

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
