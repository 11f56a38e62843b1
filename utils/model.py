"""The captioner: a CNN encoder giving a grid of region vectors, and an LSTM decoder that
writes the caption one word at a time, looking at the regions in one of three ways:

- ``"soft"`` (Show, Attend and Tell, the book's default): a softmax over the regions before
  each word, the context is their weighted mean. Optional extras from the paper: a gating
  scalar on the context and dot-product scoring beside the additive (Bahdanau) one.
- ``"show_and_tell"`` (Vinyals et al.): no attention; the mean region sets the LSTM's state.
- ``"hard"`` (Xu et al., stochastic hard attention): one region sampled per word while
  training, learnt with REINFORCE; the expected (soft) context at test time.

Every decoder offers ``initial_state(regions)``, ``step(tokens, state, training)`` ->
``(logits, new_state, weights)`` for searches, and teacher-forced ``call(regions, tokens)`` ->
``(logits, weights)``.

Shapes used throughout: ``B`` batch, ``R`` regions (8x8 = 64 for a 64-pixel image), ``D`` region
width, ``T`` caption positions, ``V`` vocabulary size.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import keras
import tensorflow as tf
from keras import layers

from .losses import (doubly_stochastic_penalty, masked_cross_entropy, real_token_mask,  # noqa: F401
                     token_cross_entropy)

DECODERS = ("soft", "show_and_tell", "hard")
ENCODERS = ("cnn", "features", "backbone")
SCORINGS = ("additive", "dot")
#: A training batch is cut after its longest caption, the decoder's step count rounded up to a
#: multiple of this (:func:`step_buckets`): few distinct lengths, so few compiled decoders.
TRIM_MULTIPLE = 4
#: The REINFORCE baseline follows the mean reward as ``b <- DECAY * b + (1 - DECAY) * reward``.
BASELINE_DECAY = 0.9

serializable = keras.saving.register_keras_serializable(package="image_understanding")


def step_buckets(positions: int, multiple: int = TRIM_MULTIPLE) -> tuple[int, ...]:
    """The decoder step counts a training batch of ``int[B, positions]`` captions can be trimmed
    to: the multiples of ``multiple`` below ``positions - 1``, and ``positions - 1`` itself."""
    full = positions - 1
    return tuple(range(multiple, full, multiple)) + (full,)


def trimmed_steps(captions) -> int:
    """The decoder steps ``Captioner.train_step`` runs on a batch of ``int[B, positions]``
    captions: those its longest caption needs, rounded up to one of :func:`step_buckets`."""
    captions = keras.ops.convert_to_numpy(captions)
    needed = int((captions != 0).sum(axis=1).max()) - 1
    return next(bucket for bucket in step_buckets(captions.shape[1]) if bucket >= needed)


@serializable
class RegionEncoder(keras.layers.Layer):
    """A small CNN trained from scratch: ``uint8[B, H, W, 3]`` -> ``float[B, R, D]``.

    A stride-2 stem and two 2x2 max-poolings turn a 64x64 image into an 8x8 grid; the
    expensive full-resolution layers are kept few and narrow, because on a CPU they dominate.
    Each grid cell becomes one region vector, to which a learned position embedding is added:
    attention mixes regions by weight, so without it the decoder could not tell *where* the
    attended object is ("left of", "above").
    """

    #: Its batch normalisation uses each training batch's own statistics: batches must be
    #: random samples (see utils.train.groups_by_length).
    trains_batch_norm = True

    def __init__(self, filters: tuple[int, int, int] = (32, 64, 128), dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.dim = tuple(filters), dim
        stem, mid, top = self.filters
        self.rescale = layers.Rescaling(1 / 127.5, offset=-1.0)
        self.convs = [
            self._conv(stem, 5, strides=2), self._conv(stem, 3), layers.MaxPooling2D(),
            self._conv(mid, 3), layers.MaxPooling2D(),
            self._conv(top, 3),
        ]
        self.project = layers.Dense(dim)

    @staticmethod
    def _conv(filters: int, size: int, strides: int = 1) -> keras.Sequential:
        return keras.Sequential([
            layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False),
            # momentum 0.9 settles within short runs too; built under a multi-replica strategy,
            # the statistics are those of the whole batch, not of each replica's share.
            layers.BatchNormalization(momentum=0.9, synchronized=_replicas_in_sync() > 1),
            layers.ReLU(),
        ])

    def build(self, input_shape):
        height, width = input_shape[1] // 8, input_shape[2] // 8
        self.grid = (height, width)
        self.position = self.add_weight(
            shape=(height * width, self.dim), initializer="zeros", name="position")
        super().build(input_shape)

    def call(self, images, training=False):
        x = self.rescale(tf.cast(images, "float32"))
        for layer in self.convs:
            x = layer(x, training=training)
        regions = tf.reshape(x, [-1, self.grid[0] * self.grid[1], x.shape[-1]])
        return self.project(regions) + tf.cast(self.position, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "dim": self.dim}


class _PositionedRegions(keras.layers.Layer):
    """What the two backbone encoders share: a ReLU projection of ``[B, R, C]`` backbone
    features to ``[B, R, dim]``, dropout, and a learned position embedding per region (a
    backbone's features say *what* is in a cell much more clearly than *where* the cell is)."""

    trains_batch_norm = False  # no batch normalisation, or (backbones) in inference mode

    def __init__(self, dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dropout_rate = dim, dropout
        self.project = layers.Dense(dim, activation="relu")
        self.dropout = layers.Dropout(dropout)

    def _add_position(self, regions_count: int) -> None:
        self.position = self.add_weight(shape=(regions_count, self.dim), initializer="zeros",
                                        name="position")

    def _positioned(self, features, training):
        regions = self.dropout(self.project(features), training=training)
        return regions + tf.cast(self.position, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "dropout": self.dropout_rate}


@serializable
class FeatureEncoder(_PositionedRegions):
    """Features cached ahead of training (:class:`utils.features.FeatureCache`), ``float[B, R, C]``
    (float16 on disk), -> ``[B, R, dim]``. The backbone never runs while training, which is what
    makes an ImageNet backbone affordable: InceptionV3 costs far more than the whole decoder."""

    def build(self, input_shape):
        self._add_position(input_shape[1])
        super().build(input_shape)

    def call(self, features, training=False):
        return self._positioned(tf.cast(features, self.compute_dtype), training)


@serializable
class BackboneEncoder(_PositionedRegions):
    """A backbone from :mod:`utils.features` run inside the captioner, so its last
    ``trainable_layers`` layers can be fine-tuned with the decoder: ``uint8[B, S, S, 3]`` ->
    ``[B, R, dim]``.

    Batch normalisation inside the backbone always runs in inference mode: its statistics were
    estimated on ImageNet, and re-estimating them from small captioning batches hurts. Train the
    fine-tuned layers at a lower learning rate than the decoder (``backbone_learning_rate_factor``
    of :class:`Captioner`): they start from good values that a full-size step would wreck.
    ``weights`` is what the backbone starts from (``"imagenet"``, ``None``, a file); a saved
    captioner holds the backbone's weights itself, so it is reloaded with ``weights=None``.
    """

    def __init__(self, backbone: str, dim: int, dropout: float = 0.0,
                 trainable_layers: int = 0, weights: str | None = "imagenet", **kwargs):
        super().__init__(dim, dropout, **kwargs)
        from .features import build_backbone, get_backbone  # features imports this module

        self.backbone_name, self.trainable_layers = backbone, trainable_layers
        self.grid = get_backbone(backbone).grid
        self.backbone = build_backbone(backbone, weights)
        self.backbone.trainable = trainable_layers > 0
        inner = [layer for layer in self.backbone.layers if layer.weights]
        for index, layer in enumerate(inner):
            layer.trainable = index >= len(inner) - trainable_layers

    def build(self, input_shape):
        self._add_position(self.grid[0] * self.grid[1])
        super().build(input_shape)

    def backbone_variables(self) -> list:
        """The backbone's trainable variables: those the lower learning rate applies to."""
        return list(self.backbone.trainable_variables)

    def call(self, images, training=False):
        features = self.backbone(images, training=False)  # BatchNorm in inference mode
        return self._positioned(features, training)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone_name,
                "trainable_layers": self.trainable_layers, "weights": None}


@serializable
class FineTuningAdam(keras.optimizers.Adam):
    """Adam with a second, lower learning rate for some variables (a fine-tuned backbone).

    Scaling those variables' gradients would not do it: Adam divides each gradient by its own
    running size, so the step length is set by the learning rate alone. ``slow_factor``
    multiplies the learning rate of the variables given to :meth:`set_slow_variables`.
    """

    def __init__(self, learning_rate=1e-3, slow_factor: float = 0.1, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.slow_factor = slow_factor
        self._slow_keys: set = set()

    def set_slow_variables(self, variables) -> None:
        # _var_key names a variable the same way whether update_step is handed the Keras
        # variable, its TensorFlow variable, or one replica's copy under a strategy.
        self._slow_keys = {self._var_key(variable) for variable in variables}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._slow_keys:
            learning_rate = learning_rate * self.slow_factor
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "slow_factor": self.slow_factor}


def make_encoder(kind: str, *, filters, dim: int, dropout: float = 0.0, backbone: str | None = None,
                 trainable_layers: int = 0, backbone_weights: str | None = "imagenet"):
    """The encoder ``kind``: ``"cnn"`` (the small CNN, from pixels), ``"features"`` (cached
    backbone features) or ``"backbone"`` (a backbone run, and maybe fine-tuned, in the model)."""
    if kind == "cnn":
        return RegionEncoder(filters, dim=dim)
    if kind == "features":
        return FeatureEncoder(dim, dropout)
    if kind == "backbone":
        if backbone is None:
            raise ValueError('encoder="backbone" needs backbone=NAME (see utils.features.BACKBONES)')
        return BackboneEncoder(backbone, dim, dropout, trainable_layers, backbone_weights)
    raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")


def _replicas_in_sync() -> int:
    """How many replicas share each batch under the current distribution strategy (1 without)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


class RegionAttention(keras.layers.Layer):
    """What every scoring shares: softmax weights over the regions and their weighted mean.

    Subclasses give :meth:`project_keys` (computed once per image, since the keys do not depend
    on the decoder step) and :meth:`scores` (one number per region, per step).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def project_keys(self, regions: tf.Tensor) -> tf.Tensor:
        """``[B, R, D]`` -> ``[B, R, units]``."""
        raise NotImplementedError

    def scores(self, projected_keys: tf.Tensor, query: tf.Tensor) -> tf.Tensor:
        """Unnormalised attention logits ``[B, R]`` for ``query [B, Q]``."""
        raise NotImplementedError

    def call(self, projected_keys, regions, query, return_scores: bool = False):
        """Return the context ``[B, D]`` and the attention weights ``[B, R]`` (and, with
        ``return_scores``, the scores ``[B, R]`` they are the softmax of)."""
        # Scores and weights stay float32 under mixed precision: a float16 softmax over many
        # regions loses the small weights. Softmax over the last axis also compiles under XLA.
        scores = tf.cast(self.scores(projected_keys, query), "float32")
        weights = tf.nn.softmax(scores, axis=-1)
        context = tf.reduce_sum(tf.cast(weights, regions.dtype)[:, :, None] * regions, axis=1)
        return (context, weights, scores) if return_scores else (context, weights)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@serializable
class AdditiveAttention(RegionAttention):
    """Bahdanau scoring ``e_i = v^T tanh(W_k k_i + W_q q)``."""

    def __init__(self, units: int, **kwargs):
        super().__init__(units, **kwargs)
        self.key_dense = layers.Dense(units, use_bias=False)
        self.query_dense = layers.Dense(units)
        self.score_dense = layers.Dense(1, use_bias=False)

    def project_keys(self, regions):
        return self.key_dense(regions)

    def scores(self, projected_keys, query):
        hidden = tf.tanh(projected_keys + self.query_dense(query)[:, None, :])
        return tf.squeeze(self.score_dense(hidden), -1)


@serializable
class DotProductAttention(RegionAttention):
    """Scaled dot-product scoring ``e_i = (W_q q) . (W_k k_i) / sqrt(units)``.

    That is the bilinear score ``q^T W k_i`` with ``W = W_q^T W_k`` of rank ``units``; keeping the
    two factors lets ``W_k k_i`` be computed once per image, as in the additive form. Dividing by
    ``sqrt(units)`` keeps the scores' spread, and so the softmax's sharpness, independent of width.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(units, **kwargs)
        self.key_dense = layers.Dense(units, use_bias=False)
        self.query_dense = layers.Dense(units, use_bias=False)

    def project_keys(self, regions):
        return self.key_dense(regions)

    def scores(self, projected_keys, query):
        query = self.query_dense(query)[:, None, :]  # [B, 1, units]
        return tf.reduce_sum(projected_keys * query, axis=-1) / math.sqrt(self.units)


def make_attention(scoring: str, units: int) -> RegionAttention:
    """The attention layer for ``scoring``, ``"additive"`` or ``"dot"``."""
    if scoring == "additive":
        return AdditiveAttention(units)
    if scoring == "dot":
        return DotProductAttention(units)
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


class Glimpses(NamedTuple):
    """Where hard attention looked while training: ``[B]`` each for one step, ``[B, T]`` for a
    teacher-forced caption."""

    index: tf.Tensor  # int32: the sampled region
    log_prob: tf.Tensor  # log alpha of that region, differentiable in the attention parameters
    entropy: tf.Tensor  # entropy of the attention distribution the region was drawn from


class DecoderOutput(NamedTuple):
    """Teacher-forced decoder output: ``logits [B, T, V]``, ``weights [B, T, R]`` and, for hard
    attention while training, the :class:`Glimpses` (``None`` otherwise)."""

    logits: tf.Tensor
    weights: tf.Tensor
    glimpses: Glimpses | None = None


class CaptionDecoder(keras.layers.Layer):
    """The step loop the decoders share: subclasses give ``initial_state`` and ``_step``, and
    own a ``logits`` layer (the output layer, ``features -> [.., V]``)."""

    def initial_state(self, regions: tf.Tensor) -> tuple:
        """The per-image state (a tuple of tensors leading with ``B``) before ``<start>``."""
        raise NotImplementedError

    def _step(self, tokens, state, training):
        """One step up to the output layer: ``(features [B, F], new_state, weights, glimpse)``,
        dropout applied to the features; the glimpse is the sampled region (hard attention while
        training) or ``None``."""
        raise NotImplementedError

    def step(self, tokens, state, training=False):
        """Feed ``int[B]`` tokens; return ``logits [B, V]``, the new state, ``weights [B, R]``."""
        features, state, weights, _ = self._step(tokens, state, training)
        return self.logits(features), state, weights

    def teacher_force(self, regions, tokens, training=False) -> DecoderOutput:
        """Feed every position of ``tokens [B, T]`` (starting with ``<start>``) in turn. The loop is
        unrolled: ``T`` is small and fixed. The output layer, the largest matrix product when
        the vocabulary is large, runs once on all ``B x T`` positions after the loop: one big
        product keeps the cores busier than ``T`` small ones, and the result is the same."""
        state = self.initial_state(regions)
        all_features, all_weights, glimpses = [], [], []
        for t in range(tokens.shape[1]):
            features, state, weights, glimpse = self._step(tokens[:, t], state, training)
            all_features.append(features)
            all_weights.append(weights)
            glimpses.append(glimpse)
        if glimpses[0] is not None:
            glimpses = Glimpses(*(tf.stack(field, axis=1) for field in zip(*glimpses)))
        else:
            glimpses = None
        # (Dropout stays in the loop, on each step's [B, F]: applied once to the stacked
        # [B, T, F] it made the XLA-compiled training step twice as slow on a CPU.)
        logits = self.logits(tf.stack(all_features, axis=1))
        return DecoderOutput(logits, tf.stack(all_weights, axis=1), glimpses)

    def call(self, regions, tokens, training=False):
        """Teacher forcing: ``tokens [B, T]`` -> ``logits [B, T, V]``, ``weights [B, T, R]``."""
        output = self.teacher_force(regions, tokens, training=training)
        return output.logits, output.weights


@serializable
class AttentionDecoder(CaptionDecoder):
    """One LSTM step per word, attending (softly) over the regions before each word.

    The attention query is the previous hidden state *and* the embedding of the word just
    emitted: after "red" the decoder must look for the red object, and the hidden state alone
    carries that only weakly. The word distribution comes from ``[h, context, word]`` (a "deep
    output" as in Show, Attend and Tell). With ``gate``, the context is scaled by
    ``beta_t = sigmoid(f_beta(h_{t-1}))``, so the decoder can lean on the image less for words
    such as "a" or "of" (Xu et al., section 4.2.1).
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, attention_units: int,
                 dropout: float = 0.0, scoring: str = "additive", gate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embed_dim, self.units = vocab_size, embed_dim, units
        self.attention_units, self.dropout_rate = attention_units, dropout
        self.scoring, self.use_gate = scoring, gate
        self.embedding = layers.Embedding(vocab_size, embed_dim)
        self.attention = make_attention(scoring, attention_units)
        self.cell = layers.LSTMCell(units)
        self.init_h = layers.Dense(units, activation="tanh")
        self.init_c = layers.Dense(units, activation="tanh")
        self.dropout = layers.Dropout(dropout)
        # float32 logits under mixed precision too: the softmax and the loss need the range.
        self.logits = layers.Dense(vocab_size, dtype="float32")
        # Created last: each layer draws its initial weights in creation order, so turning the
        # gate on leaves the other layers' starting weights as they were without it.
        self.gate = layers.Dense(1, activation="sigmoid") if gate else None

    def initial_state(self, regions):
        """``(h, c, projected_keys, regions)``, h and c from the mean region."""
        mean = tf.reduce_mean(regions, axis=1)
        return (self.init_h(mean), self.init_c(mean), self.attention.project_keys(regions), regions)

    def _look(self, keys, regions, query, training) -> tuple[tf.Tensor, tf.Tensor, Glimpses | None]:
        """The context ``[B, D]`` for this step, the attention weights ``[B, R]``, no glimpse."""
        context, weights = self.attention(keys, regions, query)
        return context, weights, None

    def _step(self, tokens, state, training):
        h, c, keys, regions = state
        word = self.embedding(tokens)
        context, weights, glimpse = self._look(keys, regions, tf.concat([h, word], axis=-1),
                                               training)
        if self.gate is not None:
            context = self.gate(h) * context
        output, (h, c) = self.cell(tf.concat([word, context], axis=-1), [h, c], training=training)
        features = self.dropout(tf.concat([output, context, word], axis=-1), training=training)
        return features, (h, c, keys, regions), weights, glimpse

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "units": self.units, "attention_units": self.attention_units,
                "dropout": self.dropout_rate, "scoring": self.scoring, "gate": self.use_gate}


@serializable
class HardAttentionDecoder(AttentionDecoder):
    """Stochastic hard attention (Xu et al., section 4.1): while training, each word sees ONE
    region, drawn from the attention distribution ``alpha_t``; at test time it sees the expected
    context ``sum_i alpha_ti a_i``, as in the paper, so searches stay deterministic.

    Sampling is not differentiable: the attention parameters learn from the REINFORCE term that
    :class:`Captioner` adds, built from the :class:`Glimpses` this decoder returns when
    teacher-forced with ``training=True``. ``reward_baseline`` is the moving average of the
    reward that the term subtracts to lower its variance.

    ``expected_rate`` is the paper's other variance cut (section 4.1): at that rate a word
    sees the expected context instead of a sampled region, and its step adds nothing to the
    REINFORCE term. The rest of the network then also learns from smooth, exact gradients.
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, attention_units: int,
                 dropout: float = 0.0, scoring: str = "additive", gate: bool = False,
                 seed: int | None = None, expected_rate: float = 0.5, **kwargs):
        super().__init__(vocab_size, embed_dim, units, attention_units, dropout, scoring, gate,
                         **kwargs)
        self.seed, self.expected_rate = seed, expected_rate
        # A seeded generator: the same seed (or keras.utils.set_random_seed) repeats the draws.
        self.sampler = keras.random.SeedGenerator(seed)

    def build(self, regions_shape):
        # "mean": under a distribution strategy the replicas' updates are averaged.
        self.reward_baseline = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                               aggregation="mean", name="reward_baseline")
        super().build(regions_shape)

    def _look(self, keys, regions, query, training):
        expected_context, weights, scores = self.attention(keys, regions, query,
                                                           return_scores=True)
        if not training:
            return expected_context, weights, None
        log_weights = tf.nn.log_softmax(scores, axis=-1)  # exact where softmax underflows
        index = keras.random.categorical(scores, 1, seed=self.sampler)[:, 0]
        context = tf.gather(regions, index, batch_dims=1)
        log_prob = tf.gather(log_weights, index, batch_dims=1)
        if self.expected_rate:
            expected = keras.random.uniform(tf.shape(index), seed=self.sampler) < self.expected_rate
            context = tf.where(expected[:, None], expected_context, context)
            log_prob = tf.where(expected, tf.zeros_like(log_prob), log_prob)
        glimpse = Glimpses(index=index, log_prob=log_prob,
                           entropy=-tf.reduce_sum(weights * log_weights, axis=-1))
        return context, weights, glimpse

    def update_baseline(self, reward: tf.Tensor) -> None:
        """``b <- 0.9 b + 0.1 mean(reward)`` for ``reward [B]``."""
        mean_reward = tf.reduce_mean(tf.stop_gradient(reward))
        self.reward_baseline.assign(
            BASELINE_DECAY * self.reward_baseline + (1.0 - BASELINE_DECAY) * mean_reward)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed, "expected_rate": self.expected_rate}


@serializable
class ShowAndTellDecoder(CaptionDecoder):
    """The attention-free baseline of Show and Tell (Vinyals et al.): the image, summarised as
    its mean region, sets the LSTM's initial state and is never looked at again.

    So that it fits the shared interface, ``weights`` are uniform over the regions (``1/R``
    each): "looking everywhere equally", which is what a plain mean would be.
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embed_dim, self.units = vocab_size, embed_dim, units
        self.dropout_rate = dropout
        self.embedding = layers.Embedding(vocab_size, embed_dim)
        self.cell = layers.LSTMCell(units)
        self.init_h = layers.Dense(units, activation="tanh")
        self.init_c = layers.Dense(units, activation="tanh")
        self.dropout = layers.Dropout(dropout)
        self.logits = layers.Dense(vocab_size, dtype="float32")

    def initial_state(self, regions):
        """``(h, c, uniform weights [B, R])``, h and c from the mean region."""
        mean = tf.reduce_mean(regions, axis=1)
        uniform = tf.ones_like(regions[:, :, 0], "float32") / tf.cast(tf.shape(regions)[1], "float32")
        return (self.init_h(mean), self.init_c(mean), uniform)

    def _step(self, tokens, state, training):
        h, c, uniform = state
        word = self.embedding(tokens)
        output, (h, c) = self.cell(word, [h, c], training=training)
        features = self.dropout(tf.concat([output, word], axis=-1), training=training)
        return features, (h, c, uniform), uniform, None

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "units": self.units, "dropout": self.dropout_rate}


class Objective(NamedTuple):
    """One batch's training terms.

    - ``loss``: the cross-entropy (label-smoothed if asked) plus the attention regulariser:
      the number logged as ``loss``.
    - ``reinforce``: hard attention's surrogate, whose *gradient* is the REINFORCE estimate
      minus the entropy bonus; its value means nothing. 0 for the other decoders.
    - ``reward`` ``[B]``: each caption's log-likelihood under the sampled regions (hard
      attention while training), else ``None``.
    """

    loss: tf.Tensor
    reinforce: tf.Tensor | float
    reward: tf.Tensor | None


@serializable
class Captioner(keras.Model):
    """Encoder + decoder, trained with ``fit`` on ``(images, captions)`` batches.

    ``captions`` are ``int[B, T+1]`` id sequences ``<start> ... <end> 0 0``; the model reads
    positions ``0..T-1`` and is scored on predicting positions ``1..T`` (teacher forcing).

    ``decoder`` picks ``"soft"``, ``"show_and_tell"`` or ``"hard"`` (module docstring);
    ``scoring`` (``"additive"``/``"dot"``) and ``gate`` shape the attention of soft and hard.
    ``attention_regularization`` is the weight lambda of :func:`doubly_stochastic_penalty`,
    ``label_smoothing`` the eps of :func:`token_cross_entropy`; ``entropy_bonus`` weighs the
    attention entropy in hard attention's REINFORCE term, ``seed`` seeds its region draws, and
    ``hard_expected_rate`` is how often a hard-attention step uses the expected context instead.
    ``encoder`` picks where regions come from (:func:`make_encoder`): ``"cnn"`` (the small CNN
    trained from scratch on pixels, the default), ``"features"`` (cached ``[B, R, C]`` backbone
    features) or ``"backbone"`` (``backbone`` run inside the model, its last
    ``trainable_layers`` layers fine-tuned at ``backbone_learning_rate_factor`` times the
    learning rate). ``region_dim`` is the regions' width (default: ``filters[-1]``).
    The defaults give the book's soft-attention model.
    """

    def __init__(self, vocab_size: int, *, filters=(32, 64, 128), embed_dim: int = 64,
                 units: int = 256, attention_units: int = 128, dropout: float = 0.0,
                 start_id: int = 2, end_id: int = 3, jit_decoder: bool = True,
                 decoder: str = "soft", scoring: str = "additive", gate: bool = False,
                 attention_regularization: float = 0.0, label_smoothing: float = 0.0,
                 entropy_bonus: float = 0.01, seed: int | None = None, encoder: str = "cnn",
                 region_dim: int | None = None, backbone: str | None = None,
                 trainable_layers: int = 0, backbone_weights: str | None = "imagenet",
                 backbone_learning_rate_factor: float = 0.1, hard_expected_rate: float = 0.5,
                 **kwargs):
        _check_decoder_settings(decoder, scoring, gate, attention_regularization)
        super().__init__(**kwargs)
        region_dim = region_dim or filters[-1]
        self.config = dict(vocab_size=vocab_size, filters=tuple(filters), embed_dim=embed_dim,
                           units=units, attention_units=attention_units, dropout=dropout,
                           start_id=start_id, end_id=end_id, jit_decoder=jit_decoder,
                           decoder=decoder, scoring=scoring, gate=gate,
                           attention_regularization=attention_regularization,
                           label_smoothing=label_smoothing, entropy_bonus=entropy_bonus,
                           seed=seed, encoder=encoder, region_dim=region_dim, backbone=backbone,
                           trainable_layers=trainable_layers,
                           # a saved captioner carries its backbone's weights: reload from None
                           backbone_weights=None,
                           backbone_learning_rate_factor=backbone_learning_rate_factor,
                           hard_expected_rate=hard_expected_rate)
        self.start_id, self.end_id = start_id, end_id
        self.attention_regularization = attention_regularization
        self.label_smoothing, self.entropy_bonus = label_smoothing, entropy_bonus
        self.encoder = make_encoder(encoder, filters=filters, dim=region_dim, dropout=dropout,
                                    backbone=backbone, trainable_layers=trainable_layers,
                                    backbone_weights=backbone_weights)
        if decoder == "soft":
            self.decoder = AttentionDecoder(vocab_size, embed_dim, units, attention_units, dropout,
                                            scoring, gate)
        elif decoder == "hard":
            self.decoder = HardAttentionDecoder(vocab_size, embed_dim, units, attention_units,
                                                dropout, scoring, gate, seed, hard_expected_rate)
        else:
            self.decoder = ShowAndTellDecoder(vocab_size, embed_dim, units, dropout)
        self._teacher_force_by_length = {}  # see _decode
        #: Whether train_step cuts each batch after its longest caption (_trimmed_objective).
        #: utils.train.fit sets it to whether it groups batches by length: in random batches
        #: nearly every batch holds a long caption, so the cut saves little and the branch it
        #: needs in the graph costs more than that.
        self.trim_batches = True
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @classmethod
    def from_profile(cls, profile, vocab_size: int, **options) -> "Captioner":
        """Build a captioner sized by a :class:`utils.profile.Profile`; ``options`` are passed on
        (``decoder="hard"``, ``gate=True``, ``encoder="features"``, ...)."""
        sizes = dict(filters=profile.cnn_filters, embed_dim=profile.embed_dim, units=profile.units,
                     attention_units=profile.attention_units, dropout=profile.dropout,
                     jit_decoder=profile.jit_compile)
        return cls(vocab_size, **{**sizes, **options})

    def make_optimizer(self, learning_rate, **kwargs) -> keras.optimizers.Optimizer:
        """Adam for this model (``kwargs`` such as ``clipnorm`` passed on); with a fine-tuned
        backbone, :class:`FineTuningAdam` giving the backbone its lower learning rate."""
        if not isinstance(self.encoder, BackboneEncoder) or not self.config["trainable_layers"]:
            return keras.optimizers.Adam(learning_rate, **kwargs)
        optimizer = FineTuningAdam(learning_rate,
                                   slow_factor=self.config["backbone_learning_rate_factor"],
                                   **kwargs)
        optimizer.set_slow_variables(self.encoder.backbone_variables())
        return optimizer

    @classmethod
    def from_config(cls, config, custom_objects=None) -> "Captioner":
        return cls(**config)

    def build(self, input_shape):
        # Create every variable eagerly with a one-image dummy pass. Built lazily inside the
        # traced (and maybe XLA-compiled) decoder, the variables would escape the gradient tape.
        image_shape, _ = input_shape
        with tf.init_scope():
            # pixels for the CNN and backbone encoders, float features for "features"
            dtype = "float32" if self.config["encoder"] == "features" else tf.uint8
            images = tf.zeros([1, *image_shape[1:]], dtype)
            self.decoder(self.encoder(images), tf.fill([1, 1], self.start_id))
        super().build(input_shape)

    def call(self, inputs, training=False):
        """``(uint8[B, H, W, 3], int[B, T])`` -> ``logits [B, T, V]``, ``weights [B, T, R]``
        (with ``encoder="features"``, ``float[B, R, C]`` features instead of pixels)."""
        images, tokens = inputs
        regions = self.encoder(images, training=training)
        output = self._decode(regions, tokens, training=training)
        return output.logits, output.weights

    def _decode(self, regions, tokens, training=False) -> DecoderOutput:
        """:meth:`CaptionDecoder.teacher_force`, compiled once per caption length ``T``: the
        loop is unrolled over ``T``, which ``reduce_retracing`` would otherwise relax to ``None``
        (it still relaxes the batch size)."""
        length = tokens.shape[1]
        if length not in self._teacher_force_by_length:
            # XLA pays off on the many small ops of the unrolled decoder, not on the convolutions.
            self._teacher_force_by_length[length] = tf.function(
                self.decoder.teacher_force, jit_compile=self.config["jit_decoder"],
                reduce_retracing=True)
        return self._teacher_force_by_length[length](regions, tokens, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def objective(self, images, captions, training: bool = False, trim: bool = False) -> Objective:
        """The terms of the training objective for one batch (see :class:`Objective`).

        With ``trim``, the decoder runs only as many steps as the batch's longest caption needs,
        rounded up to one of :func:`step_buckets` (see :meth:`_trimmed_objective`); the terms are
        the same as without, since padding is masked out of every one of them."""
        if not self.built:  # fit can get here first: build through a call, as fit used to
            self((images[:1], captions[:1, :-1]))
        regions = self.encoder(images, training=training)
        if trim and captions.shape[1] is not None and captions.shape[1] - 1 > TRIM_MULTIPLE:
            return self._trimmed_objective(regions, captions, training)
        return self._objective(regions, captions, training)

    def _objective(self, regions, captions, training) -> Objective:
        targets = captions[:, 1:]
        output = self._decode(regions, captions[:, :-1], training=training)
        loss = masked_cross_entropy(targets, output.logits, label_smoothing=self.label_smoothing)
        if self.attention_regularization:
            mask = real_token_mask(targets, dtype=output.weights.dtype)
            loss += self.attention_regularization * doubly_stochastic_penalty(output.weights, mask)
        if output.glimpses is None:
            return Objective(loss, 0.0, None)
        return self._reinforce(targets, output, loss)

    def _trimmed_objective(self, regions, captions, training) -> Objective:
        """:meth:`_objective` on ``captions`` cut after the batch's longest caption, its step
        count rounded up to a bucket. The bucket is picked inside the graph (``tf.switch_case``),
        so one traced training step serves every batch, and each branch's decoder is compiled
        for its own fixed length: a handful of lengths, not one per batch."""
        buckets = step_buckets(captions.shape[1])
        steps = tf.reduce_max(tf.reduce_sum(tf.cast(captions != 0, tf.int32), axis=1)) - 1
        index = tf.reduce_sum(tf.cast(tf.constant(buckets) < steps, tf.int32))
        sampled = isinstance(self.decoder, HardAttentionDecoder)

        def branch(length):
            def run():
                terms = self._objective(regions, captions[:, : length + 1], training)
                # Every branch must return tensors of one structure: no None, no Python float.
                reward = terms.reward if sampled else tf.zeros([0])
                return tf.convert_to_tensor(terms.loss), tf.convert_to_tensor(terms.reinforce), reward
            return run

        loss, reinforce, reward = tf.switch_case(index, [branch(length) for length in buckets])
        return Objective(loss, reinforce, reward if sampled else None)

    def _reinforce(self, targets, output: DecoderOutput, loss) -> Objective:
        """Hard attention's REINFORCE term (Xu et al., eq. 12): the reward is each caption's
        log-likelihood given the sampled regions, and ``(reward - baseline) * log p(regions)``
        is raised, as is the attention entropy (weighted by ``entropy_bonus``). Both are
        normalised per real token, like the cross-entropy."""
        mask = real_token_mask(targets, dtype=output.logits.dtype)
        tokens = tf.maximum(tf.reduce_sum(mask), 1.0)
        # The unsmoothed log-likelihood, as the paper's bound has it; a reward, not a loss.
        reward = -tf.reduce_sum(token_cross_entropy(targets, output.logits) * mask, axis=1)
        advantage = tf.stop_gradient(reward - self.decoder.reward_baseline)
        location_log_prob = tf.reduce_sum(output.glimpses.log_prob * mask, axis=1)  # [B]
        entropy = tf.reduce_sum(output.glimpses.entropy * mask) / tokens
        reinforce = -tf.reduce_sum(advantage * location_log_prob) / tokens
        return Objective(loss, reinforce - self.entropy_bonus * entropy, tf.stop_gradient(reward))

    def train_step(self, data):
        images, captions = data
        with tf.GradientTape() as tape:
            terms = self.objective(images, captions, training=True, trim=self.trim_batches)
            total = terms.loss + terms.reinforce
            replicas = _replicas_in_sync()
            if replicas > 1:  # the optimizer sums the replicas' gradients: each brings its share
                total = total / replicas
            # Under mixed precision Keras wraps the optimizer in a LossScaleOptimizer: the loss
            # is scaled up so float16 gradients do not underflow, and apply() scales them back.
            total = self.optimizer.scale_loss(total)
        gradients = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        if terms.reward is not None:
            self.decoder.update_baseline(terms.reward)
        self.loss_tracker.update_state(terms.loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        images, captions = data
        self.loss_tracker.update_state(self.objective(images, captions, training=False).loss)
        return {"loss": self.loss_tracker.result()}

    def log_likelihood(self, images, captions) -> tf.Tensor:
        """``log p(caption | image)`` for ``captions int[B, T+1]`` (``<start> ... <end> 0 0``):
        the summed log-probabilities of its words and ``<end>``, padding not counted. ``[B]``."""
        targets = captions[:, 1:]
        regions = self.encoder(images, training=False)
        logits = self._decode(regions, captions[:, :-1]).logits
        per_token = token_cross_entropy(targets, logits)
        return -tf.reduce_sum(per_token * real_token_mask(targets, dtype=per_token.dtype), axis=1)

    @tf.function(reduce_retracing=True)
    def greedy(self, images, max_length: int):
        """Batched greedy decoding: ``int[B, max_length]`` ids (``<end>`` then 0s) and the
        attention weights ``[B, max_length, R]`` of each emitted word."""
        regions = self.encoder(images, training=False)
        state = self.decoder.initial_state(regions)
        batch = tf.shape(images)[0]
        tokens = tf.fill([batch], self.start_id)
        finished = tf.zeros([batch], tf.bool)
        outputs, attention = [], []
        for _ in range(max_length):
            logits, state, weights = self.decoder.step(tokens, state)
            tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            outputs.append(tf.where(finished, 0, tokens))
            attention.append(weights)
            finished = finished | tf.equal(tokens, self.end_id)
        return tf.stack(outputs, axis=1), tf.stack(attention, axis=1)

    def get_config(self):
        return dict(self.config)


def _check_decoder_settings(decoder: str, scoring: str, gate: bool,
                            attention_regularization: float) -> None:
    """Refuse unknown choices, and attention options given to the decoder without attention."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if decoder == "show_and_tell" and (scoring != "additive" or gate or attention_regularization):
        raise ValueError("decoder='show_and_tell' has no attention: scoring, gate and "
                         "attention_regularization do not apply to it")
