"""The baseline of the benchmark suite: a captioner written the way most tutorials write it.

Same model, same sizes, same arithmetic as :class:`utils.captioner.FastCaptioner` with soft additive
attention (so the losses and the greedy captions agree when the weights are copied across, see
:meth:`ReferenceCaptioner.copy_weights_from`), with the well-known inefficiencies kept:

- the attention projects every image region again at every decoder step (``W1(features)``
  inside the step, as in the TensorFlow tutorial's ``BahdanauAttention``), although it does not
  depend on the step;
- every caption is padded to the dataset's maximum length and the decoder always runs that many
  steps (the padding is masked out of the loss, but it is still computed);
- the training step is a plain ``tf.function`` (no XLA);
- captions are decoded one image at a time, in a Python loop of single-image steps, as the
  tutorial's ``evaluate()`` does.

It is used only as the baseline of ``python -m benchmarks``; the book's model is the fast path.
Shapes: ``B`` batch, ``R`` regions, ``D`` region width, ``T`` caption positions, ``V`` vocabulary.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from utils.encoders import RegionEncoder


class ReferenceFeatureEncoder(keras.layers.Layer):
    """``float[B, R, C]`` cached features -> ``[B, R, dim]``: a ReLU projection plus a learned
    position embedding per region (the same layer as :class:`utils.backbones.FeatureEncoder`)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.project = layers.Dense(dim, activation="relu")

    def build(self, input_shape):
        self.position = self.add_weight(shape=(input_shape[1], self.dim), initializer="zeros",
                                        name="position")
        super().build(input_shape)

    def call(self, features, training=False):
        return self.project(tf.cast(features, "float32")) + self.position


class ReferenceAttention(keras.layers.Layer):
    """Bahdanau attention as the tutorial writes it: ``score = V tanh(W1 features + W2 query)``,
    with ``W1 features`` computed inside every call, that is at every decoder step."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.W1 = layers.Dense(units, use_bias=False)
        self.W2 = layers.Dense(units)
        self.V = layers.Dense(1, use_bias=False)

    def call(self, features, query):
        hidden = tf.tanh(self.W1(features) + self.W2(query)[:, None, :])  # [B, R, units]
        weights = tf.nn.softmax(tf.squeeze(self.V(hidden), -1), axis=-1)  # [B, R]
        context = tf.reduce_sum(weights[:, :, None] * features, axis=1)  # [B, D]
        return context, weights


class ReferenceCaptioner(keras.Model):
    """Encoder plus an LSTM decoder with attention, trained and decoded the tutorial way.

    ``encoder`` is ``"features"`` (cached ``[B, R, C]`` features, projected to ``region_dim``) or
    ``"cnn"`` (the book's small CNN on pixels, :class:`utils.encoders.RegionEncoder` with
    ``filters``; the CNN is not what is compared, so it is shared). ``max_length`` is the fixed
    number of caption positions (``<start>`` to the last padding) every batch is padded to.
    """

    def __init__(self, vocab_size: int, *, max_length: int, encoder: str = "features",
                 region_dim: int = 256, filters=(32, 64, 128), embed_dim: int = 256,
                 units: int = 512, attention_units: int = 512, start_id: int = 2,
                 end_id: int = 3, learning_rate: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.max_length, self.start_id, self.end_id = max_length, start_id, end_id
        self.units = units
        if encoder == "features":
            self.encoder = ReferenceFeatureEncoder(region_dim)
        elif encoder == "cnn":
            self.encoder = RegionEncoder(tuple(filters), dim=region_dim)
        else:
            raise ValueError(f"encoder must be 'features' or 'cnn', got {encoder!r}")
        self.embedding = layers.Embedding(vocab_size, embed_dim)
        self.attention = ReferenceAttention(attention_units)
        self.cell = layers.LSTMCell(units)
        self.init_h = layers.Dense(units, activation="tanh")
        self.init_c = layers.Dense(units, activation="tanh")
        self.fc = layers.Dense(vocab_size)
        self.reference_optimizer = keras.optimizers.Adam(learning_rate, clipnorm=5.0)
        self._train_step = tf.function(self._train_step_eager)
        self._step_one = tf.function(self.decoder_step)

    def build_for(self, images) -> None:
        """Create every variable (and the optimizer's) with one eager pass on ``images[:1]``."""
        features = self.encoder(tf.convert_to_tensor(images[:1]))
        h, c = self.initial_state(features)
        self.decoder_step(tf.fill([1], self.start_id), features, h, c)
        self.reference_optimizer.build(self.trainable_variables)

    def initial_state(self, features):
        mean = tf.reduce_mean(features, axis=1)
        return self.init_h(mean), self.init_c(mean)

    def decoder_step(self, tokens, features, h, c):
        """One word for ``tokens [B]``: ``(logits [B, V], h, c, weights [B, R])``. The attention
        projects all ``R`` regions again in here."""
        word = self.embedding(tokens)
        context, weights = self.attention(features, tf.concat([h, word], axis=-1))
        output, (h, c) = self.cell(tf.concat([word, context], axis=-1), [h, c])
        logits = self.fc(tf.concat([output, context, word], axis=-1))
        return logits, h, c, weights

    def loss_on(self, images, captions, training: bool = False):
        """Masked cross-entropy over the real tokens of ``captions [B, max_length]``, teacher
        forced through all ``max_length - 1`` steps, padding included."""
        features = self.encoder(images, training=training)
        h, c = self.initial_state(features)
        total, count = 0.0, 0.0
        for t in range(1, captions.shape[1]):
            logits, h, c, _ = self.decoder_step(captions[:, t - 1], features, h, c)
            target = captions[:, t]
            mask = tf.cast(tf.not_equal(target, 0), "float32")
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
            total += tf.reduce_sum(loss * mask)
            count += tf.reduce_sum(mask)
        return total / tf.maximum(count, 1.0)

    def _train_step_eager(self, images, captions):
        with tf.GradientTape() as tape:
            loss = self.loss_on(images, captions, training=True)
        variables = self.trainable_variables
        self.reference_optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def train_on(self, images, captions) -> tf.Tensor:
        """One optimizer step on a batch; captions are padded to ``max_length`` first."""
        return self._train_step(images, pad_to(captions, self.max_length))

    def caption_one(self, image, max_words: int) -> list[int]:
        """Greedy caption of ONE image, as the tutorial's ``evaluate()``: a Python loop of
        single-image steps that stops at ``<end>``."""
        features = self.encoder(tf.convert_to_tensor(image)[None])
        h, c = self.initial_state(features)
        token, words = tf.fill([1], self.start_id), []
        for _ in range(max_words):
            logits, h, c, _ = self._step_one(token, features, h, c)
            word = int(tf.argmax(logits[0]))
            words.append(word)
            if word == self.end_id:
                break
            token = tf.fill([1], word)
        return words

    def greedy_batch(self, images, max_words: int) -> np.ndarray:
        """Greedy captions of a batch in one Python loop (used only to score the reference's
        training progress, never timed): ``int[B, max_words]``, 0 after ``<end>``."""
        features = self.encoder(tf.convert_to_tensor(images))
        h, c = self.initial_state(features)
        tokens = tf.fill([len(images)], self.start_id)
        finished = np.zeros(len(images), bool)
        rows = np.zeros((len(images), max_words), np.int32)
        for t in range(max_words):
            logits, h, c, _ = self._step_one(tokens, features, h, c)
            tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            words = tokens.numpy()
            rows[:, t] = np.where(finished, 0, words)
            finished |= words == self.end_id
            if finished.all():
                break
        return rows

    def copy_weights_from(self, captioner) -> None:
        """Take the weights of a :class:`utils.captioner.FastCaptioner` with soft additive attention
        and no gate (both models must be built): the two then compute the same function."""
        decoder = captioner.decoder
        if isinstance(self.encoder, ReferenceFeatureEncoder):
            self.encoder.project.set_weights(captioner.encoder.project.get_weights())
            self.encoder.position.assign(captioner.encoder.position)
        else:
            self.encoder.set_weights(captioner.encoder.get_weights())
        pairs = [(self.embedding, decoder.embedding),
                 (self.attention.W1, decoder.attention.key_dense),
                 (self.attention.W2, decoder.attention.query_dense),
                 (self.attention.V, decoder.attention.score_dense), (self.cell, decoder.cell),
                 (self.init_h, decoder.init_h), (self.init_c, decoder.init_c),
                 (self.fc, decoder.logits)]
        for mine, theirs in pairs:
            mine.set_weights(theirs.get_weights())


def pad_to(captions, length: int) -> tf.Tensor:
    """``int[B, T]`` -> ``int[B, length]``, zero-padded on the right (``T <= length``)."""
    captions = tf.convert_to_tensor(captions)
    return tf.pad(captions, [[0, 0], [0, length - captions.shape[1]]])
