"""The caption loss: cross-entropy per word, counted on real words only.

Captions in a batch have different lengths and are padded with id 0; the padding must not count,
or the loss (and its gradient) would change with nothing but the amount of padding in a batch.
``targets`` are ``int[B, T]`` word ids, ``logits`` ``float[B, T, V]``.
"""
from __future__ import annotations

import tensorflow as tf


def token_cross_entropy(targets, logits, label_smoothing: float = 0.0):
    """Per-token cross-entropy ``[B, T]``. With ``label_smoothing`` = eps the target is
    ``(1 - eps) * one_hot + eps / V``: the model is never pushed to infinite confidence."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    target_nll = -tf.gather(log_probs, targets, batch_dims=2)
    uniform_nll = -tf.reduce_mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * target_nll + label_smoothing * uniform_nll


def real_token_mask(targets, pad_id: int = 0, dtype="float32"):
    """1 where ``targets [B, T]`` holds a word (``<end>`` included), 0 on padding."""
    return tf.cast(tf.not_equal(targets, pad_id), dtype)


def masked_cross_entropy(targets, logits, pad_id: int = 0, label_smoothing: float = 0.0):
    """Mean cross-entropy over the real tokens of ``targets [B, T]``; padding never counts."""
    per_token = token_cross_entropy(targets, logits, label_smoothing)
    mask = real_token_mask(targets, pad_id, per_token.dtype)
    return tf.reduce_sum(per_token * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def doubly_stochastic_penalty(weights, mask):
    """``sum_i (1 - sum_t alpha_ti)^2`` averaged over captions, for ``weights [B, T, R]`` and
    ``mask [B, T]`` (1 on real steps): it asks every region to receive, over the caption, about
    one step's worth of attention, so no part of the image is ignored (Xu et al., 4.2.1)."""
    coverage = tf.reduce_sum(weights * mask[:, :, None], axis=1)  # [B, R]
    return tf.reduce_mean(tf.reduce_sum(tf.square(1.0 - coverage), axis=-1))
