"""The captioner: a CNN encoder giving a grid of region vectors, and an LSTM decoder with
additive (Bahdanau) soft attention, as in Show, Attend and Tell.

Shapes used throughout: ``B`` batch, ``R`` regions (8x8 = 64 for a 64-pixel image), ``D`` region
width, ``T`` caption positions, ``V`` vocabulary size.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


class RegionEncoder(keras.layers.Layer):
    """A small CNN trained from scratch: ``uint8[B, H, W, 3]`` -> ``float[B, R, D]``.

    A stride-2 stem and two 2x2 max-poolings turn a 64x64 image into an 8x8 grid; the
    expensive full-resolution layers are kept few and narrow, because on a CPU they dominate. Each grid cell becomes one region vector, to which a learned
    position embedding is added: attention mixes regions by weight, so without it the decoder
    could not tell *where* the attended object is ("left of", "above").
    """

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
            layers.BatchNormalization(momentum=0.9),  # settles within short runs too
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
        return self.project(regions) + self.position

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "dim": self.dim}


class AdditiveAttention(keras.layers.Layer):
    """Bahdanau scoring ``e_i = v^T tanh(W_k k_i + W_q q)`` and softmax weights over regions.

    The key projection ``W_k k_i`` does not depend on the decoder step, so :meth:`project_keys`
    computes it once per image and :meth:`call` reuses it at every word.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.key_dense = layers.Dense(units, use_bias=False)
        self.query_dense = layers.Dense(units)
        self.score_dense = layers.Dense(1, use_bias=False)

    def project_keys(self, regions):
        """``[B, R, D]`` -> ``[B, R, units]``."""
        return self.key_dense(regions)

    def call(self, projected_keys, regions, query):
        """Return the context ``[B, D]`` and the attention weights ``[B, R]``."""
        hidden = tf.tanh(projected_keys + self.query_dense(query)[:, None, :])
        scores = tf.squeeze(self.score_dense(hidden), -1)  # [B, R]
        # Softmax over the last axis: that form also compiles under XLA inside loops.
        weights = tf.nn.softmax(scores, axis=-1)
        context = tf.reduce_sum(weights[:, :, None] * regions, axis=1)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class AttentionDecoder(keras.layers.Layer):
    """One LSTM step per word, attending over the regions before each word.

    The attention query is the previous hidden state *and* the embedding of the word just
    emitted: after "red" the decoder must look for the red object, and the hidden state alone
    carries that only weakly. The word distribution comes from ``[h, context, word]`` (a "deep
    output" as in Show, Attend and Tell).
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, attention_units: int,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embed_dim, self.units = vocab_size, embed_dim, units
        self.attention_units, self.dropout_rate = attention_units, dropout
        self.embedding = layers.Embedding(vocab_size, embed_dim)
        self.attention = AdditiveAttention(attention_units)
        self.cell = layers.LSTMCell(units)
        self.init_h = layers.Dense(units, activation="tanh")
        self.init_c = layers.Dense(units, activation="tanh")
        self.dropout = layers.Dropout(dropout)
        self.logits = layers.Dense(vocab_size)

    def initial_state(self, regions):
        """Per-image decoder state: ``(h, c, projected_keys, regions)``, h and c from the mean region."""
        mean = tf.reduce_mean(regions, axis=1)
        return (self.init_h(mean), self.init_c(mean), self.attention.project_keys(regions), regions)

    def step(self, tokens, state, training=False):
        """Feed ``int[B]`` tokens; return ``logits [B, V]``, the new state and ``weights [B, R]``."""
        h, c, keys, regions = state
        word = self.embedding(tokens)
        context, weights = self.attention(keys, regions, tf.concat([h, word], axis=-1))
        output, (h, c) = self.cell(tf.concat([word, context], axis=-1), [h, c], training=training)
        features = self.dropout(tf.concat([output, context, word], axis=-1), training=training)
        return self.logits(features), (h, c, keys, regions), weights

    def call(self, regions, tokens, training=False):
        """Teacher forcing: ``tokens [B, T]`` (starting with ``<start>``) -> ``logits [B, T, V]``,
        ``weights [B, T, R]``. The loop is unrolled: ``T`` is small and fixed."""
        state = self.initial_state(regions)
        all_logits, all_weights = [], []
        for t in range(tokens.shape[1]):
            logits, state, weights = self.step(tokens[:, t], state, training=training)
            all_logits.append(logits)
            all_weights.append(weights)
        return tf.stack(all_logits, axis=1), tf.stack(all_weights, axis=1)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "units": self.units, "attention_units": self.attention_units,
                "dropout": self.dropout_rate}


def masked_cross_entropy(targets, logits, pad_id: int = 0):
    """Mean cross-entropy over the real tokens of ``targets [B, T]``; padding never counts."""
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    mask = tf.cast(tf.not_equal(targets, pad_id), per_token.dtype)
    return tf.reduce_sum(per_token * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


class Captioner(keras.Model):
    """Encoder + attention decoder, trained with ``fit`` on ``(images, captions)`` batches.

    ``captions`` are ``int[B, T+1]`` id sequences ``<start> ... <end> 0 0``; the model reads
    positions ``0..T-1`` and is scored on predicting positions ``1..T`` (teacher forcing).
    """

    def __init__(self, vocab_size: int, *, filters=(32, 64, 128), embed_dim: int = 64,
                 units: int = 256, attention_units: int = 128, dropout: float = 0.0,
                 start_id: int = 2, end_id: int = 3, jit_decoder: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.config = dict(vocab_size=vocab_size, filters=tuple(filters), embed_dim=embed_dim,
                           units=units, attention_units=attention_units, dropout=dropout,
                           start_id=start_id, end_id=end_id, jit_decoder=jit_decoder)
        self.start_id, self.end_id = start_id, end_id
        self.encoder = RegionEncoder(filters, dim=filters[-1])
        self.decoder = AttentionDecoder(vocab_size, embed_dim, units, attention_units, dropout)
        # XLA pays off on the many small ops of the unrolled decoder, not on the convolutions.
        self._decode = tf.function(self.decoder.call, jit_compile=jit_decoder, reduce_retracing=True)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @classmethod
    def from_profile(cls, profile, vocab_size: int) -> "Captioner":
        """Build a captioner sized by a :class:`utils.profile.Profile`."""
        return cls(vocab_size, filters=profile.cnn_filters, embed_dim=profile.embed_dim,
                   units=profile.units, attention_units=profile.attention_units,
                   dropout=profile.dropout, jit_decoder=profile.jit_compile)

    def build(self, input_shape):
        # Create every variable eagerly with a one-image dummy pass. Built lazily inside the
        # traced (and maybe XLA-compiled) decoder, the variables would escape the gradient tape.
        image_shape, _ = input_shape
        with tf.init_scope():
            images = tf.zeros([1, *image_shape[1:]], tf.uint8)
            self.decoder(self.encoder(images), tf.fill([1, 1], self.start_id))
        super().build(input_shape)

    def call(self, inputs, training=False):
        images, tokens = inputs
        regions = self.encoder(images, training=training)
        return self._decode(regions, tokens, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _loss(self, data, training):
        images, captions = data
        logits, _ = self((images, captions[:, :-1]), training=training)
        return masked_cross_entropy(captions[:, 1:], logits)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self._loss(data, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        self.loss_tracker.update_state(self._loss(data, training=False))
        return {"loss": self.loss_tracker.result()}

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
