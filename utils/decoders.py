"""The decoders: an LSTM that writes one word per step, looking at the image regions softly
(Show, Attend and Tell), by sampling one region (hard attention) or not at all (Show and Tell).

Every decoder offers ``initial_state(regions)``, ``step(tokens, state, training)`` ->
``(logits, new_state, weights)`` for the searches, and ``teacher_force(regions, tokens)`` ->
:class:`DecoderOutput` for training. Shapes: ``B`` batch, ``R`` regions, ``D`` region width,
``T`` caption positions, ``V`` vocabulary.

Built in chapter 5 (sections "5.6 The decoder" and "5.15 Three decoders side by side"). The
code between a ``# >>>`` and a ``# <<<`` line is that chapter's cell, copied here by
``make code`` (``book/chapter_code.py``): edit the chapter, not these lines.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import layers, ops

from .attention import AdditiveAttention, DotProductAttention
from .losses import real_token_mask, token_cross_entropy

serializable = keras.saving.register_keras_serializable(package="image_understanding")


# >>> chapters/05_implementation.ipynb, section 5.6: edit it there, then `make code`
class DecoderOutput(NamedTuple):
    """What teacher forcing returns: ``logits [B, T, V]``, attention
    ``weights [B, T, R]`` and, for hard attention while training, the regions
    it sampled (``None`` otherwise)."""

    logits: Any
    weights: Any
    glimpses: Any = None


class CaptionDecoder(keras.layers.Layer):
    """The step loop every decoder shares. A decoder gives ``initial_state``
    and ``decoder_step`` and owns ``self.logits``, the output layer from its
    features to ``[.., V]`` word scores."""

    def initial_state(self, regions):
        """The state before ``<start>``: a tuple of tensors whose first axis
        is ``B``."""
        raise NotImplementedError

    def decoder_step(self, tokens, state, training):
        """One step up to the output layer:
        ``(features [B, F], new_state, weights [B, R], glimpse)``; the
        glimpse is ``None`` except for hard attention while training."""
        raise NotImplementedError

    def step(self, tokens, state, training=False):
        """Feed ``int[B]`` tokens; return ``logits [B, V]``, the new state,
        ``weights [B, R]``."""
        features, state, weights, _ = self.decoder_step(
            tokens, state, training
        )
        return self.logits(features), state, weights

    def teacher_force(self, regions, tokens, training=False):
        """Feed every position of ``tokens [B, T]`` (``<start>`` first) in
        turn, whatever the decoder predicted: the loop is unrolled, ``T`` is
        small and fixed. The output layer, the largest matrix product when
        the vocabulary is large, runs once on all ``B x T`` positions after
        the loop rather than ``T`` times inside it; the result is the
        same."""
        state = self.initial_state(regions)
        all_features, all_weights, glimpses = [], [], []
        for t in range(tokens.shape[1]):
            features, state, weights, glimpse = self.decoder_step(
                tokens[:, t], state, training
            )
            all_features.append(features)
            all_weights.append(weights)
            glimpses.append(glimpse)
        # one named tuple of [B, T] tensors from T of [B]
        if glimpses[0] is not None:
            glimpses = type(glimpses[0])(
                *(ops.stack(field, axis=1) for field in zip(*glimpses))
            )
        else:
            glimpses = None
        logits = self.logits(ops.stack(all_features, axis=1))
        return DecoderOutput(
            logits, ops.stack(all_weights, axis=1), glimpses
        )

    def call(self, regions, tokens, training=False):
        """Teacher forcing: ``tokens [B, T]`` -> ``logits [B, T, V]``,
        ``weights [B, T, R]``."""
        output = self.teacher_force(regions, tokens, training=training)
        return output.logits, output.weights
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.6: edit it there, then `make code`
@serializable
class AttentionDecoder(CaptionDecoder):
    """One LSTM step per word, attending softly over the regions before each
    word.

    The attention query is the previous hidden state *and* the embedding of
    the word just emitted: after "red" the decoder must look for the red
    object, and the hidden state alone carries that only weakly. The next
    word is predicted from ``[h, context, word]`` (a "deep output", as in
    Show, Attend and Tell). With ``gate``, the context is scaled by
    ``beta_t = sigmoid(f_beta(h_{t-1}))``, so that the decoder can lean on
    the image less for words such as "a" or "of" (Xu et al., section 4.2.1).
    """

    def __init__(
        self,
        vocab_size,
        embed_dim,
        units,
        attention_units,
        dropout=0.0,
        scoring="additive",
        gate=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.units, self.attention_units = units, attention_units
        self.dropout_rate = dropout
        self.scoring, self.use_gate = scoring, gate
        self.embedding = layers.Embedding(vocab_size, embed_dim)
        attention = {
            "additive": AdditiveAttention,
            "dot": DotProductAttention,
        }[scoring]
        self.attention = attention(attention_units)
        self.cell = layers.LSTMCell(units)
        self.init_h = layers.Dense(units, activation="tanh")
        self.init_c = layers.Dense(units, activation="tanh")
        self.dropout = layers.Dropout(dropout)
        # float32 logits under mixed precision too: the softmax and the loss
        # need the range.
        self.logits = layers.Dense(vocab_size, dtype="float32")
        # Created last: layers draw their initial weights in the order they
        # are created, so turning the gate on leaves the other layers'
        # starting weights as they were.
        self.gate = layers.Dense(1, activation="sigmoid") if gate else None

    def initial_state(self, regions):
        """``(h, c, projected_keys, regions)``; h and c start from the mean
        region."""
        mean = ops.mean(regions, axis=1)
        return (
            self.init_h(mean),
            self.init_c(mean),
            self.attention.project_keys(regions),
            regions,
        )

    def look(self, keys, regions, query, training):
        """The context ``[B, D]`` for this step, the weights ``[B, R]``, and
        no glimpse."""
        context, weights = self.attention(keys, regions, query)
        return context, weights, None

    def decoder_step(self, tokens, state, training):
        h, c, keys, regions = state
        word = self.embedding(tokens)
        context, weights, glimpse = self.look(
            keys, regions, ops.concatenate([h, word], axis=-1), training
        )
        if self.gate is not None:
            context = self.gate(h) * context
        output, (h, c) = self.cell(
            ops.concatenate([word, context], axis=-1),
            [h, c],
            training=training,
        )
        features = self.dropout(
            ops.concatenate([output, context, word], axis=-1),
            training=training,
        )
        return features, (h, c, keys, regions), weights, glimpse

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "units": self.units,
            "attention_units": self.attention_units,
            "dropout": self.dropout_rate,
            "scoring": self.scoring,
            "gate": self.use_gate,
        }
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.15: edit it there, then `make code`
@serializable
class ShowAndTellDecoder(CaptionDecoder):
    """The attention-free decoder of Show and Tell (Vinyals et al.): the
    image, as one vector the size of a word vector, is the LSTM's first
    input, one step before ``<start>``; the LSTM starts from zeros and never
    looks at the image again.

    ``image`` says how the regions become that vector: ``"mean"``, their
    average (the paper pools its CNN's last feature map), or ``"grid"``,
    all regions side by side through one dense layer, which keeps where each
    is. So that it fits the shared interface, its ``weights`` are uniform
    over the regions (``1/R`` each).
    """

    def __init__(
        self,
        vocab_size,
        embed_dim,
        units,
        dropout=0.0,
        image="mean",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image not in ("mean", "grid"):
            raise ValueError(
                f"image must be 'mean' or 'grid', got {image!r}"
            )
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.units, self.dropout_rate, self.image = units, dropout, image
        self.embedding = layers.Embedding(vocab_size, embed_dim)
        self.cell = layers.LSTMCell(units)
        self.dropout = layers.Dropout(dropout)
        self.logits = layers.Dense(vocab_size, dtype="float32")
        # the image as the first input (W_I in the paper)
        self.image_input = layers.Dense(embed_dim)

    def initial_state(self, regions):
        """``(h, c, uniform weights [B, R])``: the state after the LSTM has
        read the image."""
        if self.image == "grid":
            # [B, R * D]: region i's features keep their own columns
            summary = ops.reshape(
                regions, (-1, regions.shape[1] * regions.shape[2])
            )
        else:
            summary = ops.mean(regions, axis=1)
        image = self.image_input(summary)
        zeros = ops.zeros((ops.shape(image)[0], self.units), image.dtype)
        _, (h, c) = self.cell(image, [zeros, zeros])
        uniform = (
            ops.ones_like(regions[:, :, 0], "float32") / regions.shape[1]
        )
        return (h, c, uniform)

    def decoder_step(self, tokens, state, training):
        h, c, uniform = state
        word = self.embedding(tokens)
        output, (h, c) = self.cell(word, [h, c], training=training)
        features = self.dropout(
            ops.concatenate([output, word], axis=-1), training=training
        )
        return features, (h, c, uniform), uniform, None

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "units": self.units,
            "dropout": self.dropout_rate,
            "image": self.image,
        }
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.15: edit it there, then `make code`
class Glimpses(NamedTuple):
    """Where hard attention looked while training: ``[B]`` each for one step,
    ``[B, T]`` for a teacher-forced caption."""

    index: Any  # int32: the sampled region
    # log alpha of that region, differentiable in the attention's weights
    log_prob: Any
    # entropy of the attention distribution the region was drawn from
    entropy: Any


@serializable
class HardAttentionDecoder(AttentionDecoder):
    """Stochastic hard attention (Xu et al., section 4.1): while training,
    each word sees ONE region, drawn from the attention distribution
    ``alpha_t``; at test time it sees the expected context
    ``sum_i alpha_ti a_i``, as in the paper, so that searches stay
    deterministic.

    Sampling is not differentiable: the attention's weights learn from the
    REINFORCE term of :meth:`reinforce_terms`, built from the
    :class:`Glimpses` that teacher forcing returns with ``training=True``.
    ``reward_baseline`` is the moving average of the reward that the term
    subtracts to lower its variance; ``reinforce_weight`` and
    ``entropy_bonus`` are the paper's lambda_r and lambda_e, the weights of
    the REINFORCE term and of the attention's entropy.

    ``expected_rate`` is the paper's other variance cut (section 4.1): at
    that rate a word sees the expected context instead of a sampled region,
    and its step adds nothing to the REINFORCE term. The rest of the network
    then also learns from smooth, exact gradients.
    """

    #: The REINFORCE baseline follows the mean reward:
    #: ``b <- DECAY * b + (1 - DECAY) * r``.
    BASELINE_DECAY = 0.9

    def __init__(
        self,
        vocab_size,
        embed_dim,
        units,
        attention_units,
        dropout=0.0,
        scoring="additive",
        gate=False,
        seed=None,
        expected_rate=0.5,
        entropy_bonus=0.01,
        reinforce_weight=0.1,
        **kwargs,
    ):
        super().__init__(
            vocab_size,
            embed_dim,
            units,
            attention_units,
            dropout,
            scoring,
            gate,
            **kwargs,
        )
        self.seed, self.expected_rate = seed, expected_rate
        self.entropy_bonus = entropy_bonus
        self.reinforce_weight = reinforce_weight
        # A seeded generator: the same seed (or keras.utils.set_random_seed)
        # repeats the draws.
        self.sampler = keras.random.SeedGenerator(seed)

    def build(self, regions_shape):
        # "mean": under a distribution strategy the replicas' updates are
        # averaged.
        self.reward_baseline = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            aggregation="mean",
            name="reward_baseline",
        )

    def look(self, keys, regions, query, training):
        expected_context, weights, scores = self.attention(
            keys, regions, query, return_scores=True
        )
        if not training:
            return expected_context, weights, None
        # exact where softmax underflows
        log_weights = ops.log_softmax(scores, axis=-1)
        # int32
        index = keras.random.categorical(scores, 1, seed=self.sampler)[:, 0]
        context = ops.take_along_axis(regions, index[:, None, None], axis=1)
        log_prob = ops.take_along_axis(log_weights, index[:, None], axis=1)
        context, log_prob = context[:, 0], log_prob[:, 0]
        if self.expected_rate:
            expected = (
                keras.random.uniform(ops.shape(index), seed=self.sampler)
                < self.expected_rate
            )
            context = ops.where(expected[:, None], expected_context, context)
            log_prob = ops.where(
                expected, ops.zeros_like(log_prob), log_prob
            )
        glimpse = Glimpses(
            index=index,
            log_prob=log_prob,
            entropy=-ops.sum(weights * log_weights, axis=-1),
        )
        return context, weights, glimpse

    def reinforce_terms(self, targets, output):
        """Xu et al.'s eq. 12: the reward is each caption's log-likelihood
        given the sampled regions, and
        ``(reward - baseline) * log p(regions)`` is raised, as is the
        attention's entropy. Returns the surrogate to *minimise* (its value
        means nothing; its gradient is the REINFORCE estimate) and the
        rewards ``[B]``. Both terms are normalised per real word, like the
        cross-entropy."""
        mask = real_token_mask(targets, dtype=output.logits.dtype)
        tokens = ops.maximum(ops.sum(mask), 1.0)
        reward = -ops.sum(
            token_cross_entropy(targets, output.logits) * mask, axis=1
        )
        advantage = ops.stop_gradient(reward - self.reward_baseline)
        # [B]
        location_log_prob = ops.sum(output.glimpses.log_prob * mask, axis=1)
        entropy = ops.sum(output.glimpses.entropy * mask) / tokens
        surrogate = -ops.sum(advantage * location_log_prob) / tokens
        to_minimise = (
            self.reinforce_weight * surrogate - self.entropy_bonus * entropy
        )
        return to_minimise, ops.stop_gradient(reward)

    def update_baseline(self, reward):
        """``b <- 0.9 b + 0.1 mean(reward)`` for ``reward [B]``."""
        mean_reward = ops.mean(ops.stop_gradient(reward))
        self.reward_baseline.assign(
            self.BASELINE_DECAY * self.reward_baseline
            + (1.0 - self.BASELINE_DECAY) * mean_reward
        )

    def get_config(self):
        return {
            **super().get_config(),
            "seed": self.seed,
            "expected_rate": self.expected_rate,
            "entropy_bonus": self.entropy_bonus,
            "reinforce_weight": self.reinforce_weight,
        }
# <<< chapters/05_implementation.ipynb
