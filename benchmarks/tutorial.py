"""The TensorFlow tutorial's captioner and its own loops: the suite's first baseline.

The tutorial is "Image captioning with visual attention" (``site/en/tutorials/text/
image_captioning.ipynb`` in the tensorflow/docs repository), in the version that was current from
2019 to October 2022, when it was replaced by a Transformer; this is the version most captioning
code on the web descends from. Rewritten here in this project's words, computing what it
computes:

- **encoder**: ``Dense(embedding_dim)`` and a ReLU over the 64 x 2048 InceptionV3 features;
- **attention** (``BahdanauAttention(units)``): ``score = V tanh(W1 features + W2 hidden)``, a
  softmax over the 64 regions, the weighted sum of the features; ``W1 features`` is computed
  again at every decoder step;
- **decoder step**: attention on the previous state; the previous word's embedding; their
  concatenation ``[context, word]`` through a ``GRU`` layer for that one step; ``fc1`` (``units``)
  and ``fc2`` (the vocabulary). The tutorial calls the GRU **without an initial state**, so each
  step's GRU starts from zeros: the state it returns reaches the next step only as the attention's
  query, never as the GRU's own recurrent input (kept here: it is what the tutorial computes);
- **loss**: at each step, the mean over the batch of the cross-entropy times the padding mask
  (padding counts in the mean's denominator), summed over the steps of captions padded to
  ``max_length`` (50) positions; the optimiser follows the gradient of that sum (Adam, Keras'
  defaults);
- **train_step**: a ``tf.function`` whose Python loop unrolls all ``max_length - 1`` steps;
- **evaluate**: eager, one image at a time, up to ``max_length`` steps, each word *drawn* from the
  logits with ``tf.random.categorical`` and turned into text by a ``StringLookup``, stopping at
  ``<end>``. The tutorial's ``evaluate`` also runs InceptionV3 on the image; that pass is left out,
  as the suite decodes from cached features on both sides.

Used only as the baseline of ``python -m benchmarks`` (``tests/test_benchmarks.py`` checks it
against a NumPy computation of the description above). Shapes: ``B`` batch, ``R`` regions,
``C`` feature channels, ``T`` caption positions, ``V`` vocabulary.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

#: The tutorial's sizes.
MAX_LENGTH, EMBEDDING_DIM, UNITS, VOCABULARY = 50, 256, 512, 5000


class TutorialAttention(keras.layers.Layer):
    """``BahdanauAttention``: ``(features [B, R, E], hidden [B, U])`` -> ``(context [B, E],
    weights [B, R, 1])``."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.W1 = layers.Dense(units)
        self.W2 = layers.Dense(units)
        self.V = layers.Dense(1)

    def call(self, features, hidden):
        hidden_with_time_axis = tf.expand_dims(hidden, 1)
        attention_hidden = tf.nn.tanh(self.W1(features) + self.W2(hidden_with_time_axis))
        weights = tf.nn.softmax(self.V(attention_hidden), axis=1)  # over the R regions
        context = tf.reduce_sum(weights * features, axis=1)
        return context, weights


class TutorialCaptioner(keras.Model):
    """The tutorial's ``CNN_Encoder`` and ``RNN_Decoder`` in one model, with its ``train_step``
    (:meth:`train_on`) and its ``evaluate`` (:meth:`evaluate`). ``words`` is the vocabulary,
    index to word (``""`` at 0, as ``TextVectorization`` gives it)."""

    def __init__(self, vocab_size: int = VOCABULARY, *, max_length: int = MAX_LENGTH,
                 embedding_dim: int = EMBEDDING_DIM, units: int = UNITS, start_id: int = 2,
                 end_id: int = 3, words: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_length, self.units = max_length, units
        self.start_id, self.end_id = start_id, end_id
        self.encoder_fc = layers.Dense(embedding_dim)
        self.attention = TutorialAttention(units)
        self.embedding = layers.Embedding(vocab_size, embedding_dim)
        self.gru = layers.GRU(units, return_sequences=True, return_state=True,
                              recurrent_initializer="glorot_uniform")
        self.fc1 = layers.Dense(units)
        self.fc2 = layers.Dense(vocab_size)
        self.tutorial_optimizer = keras.optimizers.Adam()
        words = words or ["", "[UNK]", "<start>", "<end>"] + [
            f"w{i}" for i in range(4, vocab_size)]
        self.end_word = words[end_id] if end_id < len(words) else None  # None: never stops
        self.index_to_word = layers.StringLookup(mask_token="", vocabulary=words, invert=True)
        self._train_step = tf.function(self.train_step_eagerly)

    # -- the model ---------------------------------------------------------------------------

    def encode(self, features):
        """``CNN_Encoder``: ``float[B, R, C]`` -> ``[B, R, E]``."""
        return tf.nn.relu(self.encoder_fc(tf.cast(features, "float32")))

    def decode_step(self, x, features, hidden):
        """``RNN_Decoder.call``: ``x int[B, 1]`` -> ``(logits [B, V], state [B, U], weights
        [B, R, 1])``."""
        context, weights = self.attention(features, hidden)
        x = self.embedding(x)
        x = tf.concat([tf.expand_dims(context, 1), x], axis=-1)
        output, state = self.gru(x)  # no initial_state: the tutorial's GRU starts from zeros
        x = self.fc1(output)
        x = tf.reshape(x, (-1, x.shape[2]))
        return self.fc2(x), state, weights

    def reset_state(self, batch_size: int):
        return tf.zeros((batch_size, self.units))

    def build_for(self, features) -> None:
        """Create every variable (and the optimizer's) with one eager step on ``features[:1]``."""
        encoded = self.encode(tf.convert_to_tensor(features[:1]))
        self.decode_step(tf.fill([1, 1], self.start_id), encoded, self.reset_state(1))
        self.tutorial_optimizer.build(self.trainable_variables)

    # -- training ------------------------------------------------------------------------------

    @staticmethod
    def loss_function(real, pred):
        """The masked cross-entropy of one step, averaged over the whole batch."""
        mask = tf.cast(tf.math.logical_not(tf.math.equal(real, 0)), "float32")
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=real, logits=pred)
        return tf.reduce_mean(loss * mask)

    def loss_on(self, features, target):
        """The sum over steps of :meth:`loss_function`, teacher forced through every position
        of ``target int[B, T]`` (padding included)."""
        hidden = self.reset_state(target.shape[0])
        dec_input = tf.expand_dims(tf.fill([target.shape[0]], self.start_id), 1)
        encoded = self.encode(features)
        loss = 0.0
        for i in range(1, target.shape[1]):
            predictions, hidden, _ = self.decode_step(dec_input, encoded, hidden)
            loss += self.loss_function(target[:, i], predictions)
            dec_input = tf.expand_dims(target[:, i], 1)  # teacher forcing
        return loss

    def train_step_eagerly(self, features, target):
        """The tutorial's ``train_step`` (without its ``@tf.function``): ``(loss, loss / T)``."""
        with tf.GradientTape() as tape:
            loss = self.loss_on(features, target)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.tutorial_optimizer.apply_gradients(zip(gradients, variables))
        return loss, loss / int(target.shape[1])

    def train_on(self, features, captions) -> tf.Tensor:
        """One optimiser step on a batch, captions padded to ``max_length`` as the tutorial's
        ``TextVectorization`` pads them; returns the tutorial's summed loss."""
        captions = tf.convert_to_tensor(captions)
        padded = tf.pad(captions, [[0, 0], [0, self.max_length - captions.shape[1]]])
        return self._train_step(tf.convert_to_tensor(features), padded)[0]

    # -- captioning ----------------------------------------------------------------------------

    def evaluate(self, features, max_length: int | None = None) -> tuple[list[str], np.ndarray]:
        """The tutorial's ``evaluate`` from one image's features ``[R, C]``: eager, a word
        drawn from the logits at each step, until ``<end>`` or ``max_length`` words (default
        the model's). Returns the words and the attention weights ``[words, R]``."""
        max_length = max_length or self.max_length
        attention_plot = np.zeros((max_length, features.shape[0]))
        hidden = self.reset_state(1)
        encoded = self.encode(tf.expand_dims(features, 0))
        dec_input = tf.expand_dims([self.start_id], 0)
        result = []
        for i in range(max_length):
            predictions, hidden, weights = self.decode_step(dec_input, encoded, hidden)
            attention_plot[i] = tf.reshape(weights, (-1,)).numpy()
            predicted_id = tf.random.categorical(predictions, 1)[0][0].numpy()
            predicted_word = self.index_to_word(predicted_id).numpy().decode("utf-8")
            result.append(predicted_word)
            if predicted_word == self.end_word:
                break
            dec_input = tf.expand_dims([predicted_id], 0)
        return result, attention_plot[: len(result)]
