"""The caption loss: cross-entropy per word, counted on real words only.

Captions in a batch have different lengths and are padded with id 0; the padding must not count,
or the loss (and its gradient) would change with nothing but the amount of padding in a batch.
``targets`` are ``int[B, T]`` word ids, ``logits`` ``float[B, T, V]``.

Built in chapter 3 (section 3.3) and chapter 5 (section 5.7, the attention regulariser). The code between a
``# >>>`` and a ``# <<<`` line is a chapter's cell, copied here by ``make code``
(``book/chapter_code.py``): edit the chapter, not these lines.
"""
from __future__ import annotations

from keras import ops


# >>> chapters/03_algorithms.ipynb, section 3.3: edit it there, then `make code`
def token_cross_entropy(targets, logits, label_smoothing=0.0):
    """The cross-entropy of every position, ``[B, T]``. With
    ``label_smoothing`` = eps the target is
    ``(1 - eps) * one_hot + eps / V``: the model is never pushed to infinite
    confidence."""
    if not label_smoothing:
        return ops.sparse_categorical_crossentropy(
            targets, logits, from_logits=True
        )
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, targets[..., None], axis=-1)
    target_nll = -picked[..., 0]
    uniform_nll = -ops.mean(log_probs, axis=-1)
    eps = label_smoothing
    return (1.0 - eps) * target_nll + eps * uniform_nll


def real_token_mask(targets, pad_id=0, dtype="float32"):
    """1 where ``targets [B, T]`` holds a word (``<end>`` included), 0 on
    padding."""
    return ops.cast(ops.not_equal(targets, pad_id), dtype)


def masked_cross_entropy(targets, logits, pad_id=0, label_smoothing=0.0):
    """The mean cross-entropy over the real words of ``targets [B, T]``;
    padding never counts."""
    per_token = token_cross_entropy(targets, logits, label_smoothing)
    mask = real_token_mask(targets, pad_id, per_token.dtype)
    return ops.sum(per_token * mask) / ops.maximum(ops.sum(mask), 1.0)
# <<< chapters/03_algorithms.ipynb


# >>> chapters/05_implementation.ipynb, section 5.7: edit it there, then `make code`
def doubly_stochastic_penalty(weights, mask):
    """``sum_i (1 - sum_t alpha_ti)^2`` averaged over captions, for
    ``weights [B, T, R]`` and ``mask [B, T]`` (1 on real steps): it asks
    every region to receive, over the caption, about one step's worth of
    attention, so that no part of the image is ignored (Xu et al., 4.2.1)."""
    coverage = ops.sum(weights * mask[:, :, None], axis=1)  # [B, R]
    return ops.mean(ops.sum(ops.square(1.0 - coverage), axis=-1))
# <<< chapters/05_implementation.ipynb
