"""Attention over image regions: additive (Bahdanau) and scaled dot-product scoring.

Built in chapter 5 (section "5.5 Attention"). The code between a ``# >>>`` and a ``# <<<`` line
is that chapter's cell, copied here by ``make code`` (``book/chapter_code.py``): edit the
chapter, not these lines. ``tests/test_chapter_code.py`` keeps the two equal.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

serializable = keras.saving.register_keras_serializable(package="image_understanding")


# >>> chapters/05_implementation.ipynb, section 5.5: edit it there, then `make code`
class RegionAttention(keras.layers.Layer):
    """What every scoring shares: softmax weights over the regions and their
    weighted mean.

    Subclasses give ``project_keys`` (once per image: the regions do not
    change while the caption is written) and ``scores`` (one number per
    region, at every step).
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def call(self, projected_keys, regions, query, return_scores=False):
        """The context ``[B, D]`` and the weights ``[B, R]`` for
        ``query [B, Q]`` (and, with ``return_scores``, the scores ``[B, R]``
        that the weights are the softmax of)."""
        # Scores and weights stay float32 under mixed precision: a float16
        # softmax over many regions loses the small weights. (Softmax over
        # the last axis also compiles under XLA.)
        scores = ops.cast(self.scores(projected_keys, query), "float32")
        weights = ops.softmax(scores, axis=-1)
        context = ops.sum(
            ops.cast(weights, regions.dtype)[:, :, None] * regions, axis=1
        )
        return (
            (context, weights, scores)
            if return_scores
            else (context, weights)
        )

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@serializable
class AdditiveAttention(RegionAttention):
    """Bahdanau scoring ``e_i = v^T tanh(W_k a_i + W_q q + b)``."""

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.key_dense = layers.Dense(units, use_bias=False)  # W_k
        self.query_dense = layers.Dense(units)  # W_q and b
        self.score_dense = layers.Dense(1, use_bias=False)  # v

    def project_keys(self, regions):
        """``[B, R, D]`` -> ``W_k a_i`` for every region,
        ``[B, R, units]``."""
        return self.key_dense(regions)

    def scores(self, projected_keys, query):
        hidden = ops.tanh(
            projected_keys + self.query_dense(query)[:, None, :]
        )
        return ops.squeeze(self.score_dense(hidden), -1)
# <<< chapters/05_implementation.ipynb


# >>> chapters/05_implementation.ipynb, section 5.5: edit it there, then `make code`
@serializable
class DotProductAttention(RegionAttention):
    """Scaled dot-product scoring
    ``e_i = (W_q q) . (W_k a_i) / sqrt(units)``.

    That is the bilinear score ``q^T W a_i`` with ``W = W_q^T W_k`` of rank
    ``units``; keeping the two factors lets ``W_k a_i`` be computed once per
    image, as in the additive form. Dividing by ``sqrt(units)`` keeps the
    spread of the scores, and so the sharpness of the softmax, independent of
    the width.
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.key_dense = layers.Dense(units, use_bias=False)
        self.query_dense = layers.Dense(units, use_bias=False)

    def project_keys(self, regions):
        return self.key_dense(regions)

    def scores(self, projected_keys, query):
        query = self.query_dense(query)[:, None, :]  # [B, 1, units]
        scores = ops.sum(projected_keys * query, axis=-1)
        return scores / math.sqrt(self.units)
# <<< chapters/05_implementation.ipynb
