"""The small CNN encoder: an image becomes a grid of region vectors.

Built in chapter 5 (section "5.4 The encoder"). The code between a ``# >>>`` and a ``# <<<``
line is that chapter's cell, copied here by ``make code`` (``book/chapter_code.py``): edit the
chapter, not these lines. ``tests/test_chapter_code.py`` keeps the two equal.
"""
from __future__ import annotations

import keras
from keras import layers, ops

serializable = keras.saving.register_keras_serializable(package="image_understanding")


# >>> chapters/05_implementation.ipynb, section 5.4: edit it there, then `make code`
@serializable
class RegionEncoder(keras.layers.Layer):
    """A small CNN trained from scratch: ``uint8[B, H, W, 3]`` ->
    ``float[B, R, D]``.

    A stride-2 stem and two 2x2 max-poolings turn a 64x64 image into an 8x8
    grid; the expensive full-resolution layers are kept few and narrow,
    because on a CPU they dominate. Each grid cell becomes one region vector,
    to which a learned position embedding is added: attention mixes regions
    by weight, so without it the decoder could not tell *where* the attended
    object is ("left of", "above").
    """

    #: Its batch normalisation uses each training batch's own statistics, so
    #: training batches must be random samples of the data (section 5.10
    #: shows why).
    trains_batch_norm = True

    def __init__(
        self, filters=(32, 64, 128), dim=128, synchronized=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = tuple(filters)
        self.dim, self.synchronized = dim, synchronized
        stem, mid, top = self.filters
        # pixels 0..255 -> -1..1
        self.rescale = layers.Rescaling(1 / 127.5, offset=-1.0)
        self.convs = [
            self.conv_block(stem, 5, strides=2),
            self.conv_block(stem, 3),
            layers.MaxPooling2D(),
            self.conv_block(mid, 3),
            layers.MaxPooling2D(),
            self.conv_block(top, 3),
        ]
        self.project = layers.Dense(dim)

    def conv_block(self, filters, size, strides=1):
        """Convolution, batch normalisation, ReLU. With ``synchronized``, the
        statistics are those of the whole batch when several devices share it
        (section 5.10)."""
        return keras.Sequential(
            [
                layers.Conv2D(
                    filters,
                    size,
                    strides=strides,
                    padding="same",
                    use_bias=False,
                ),
                layers.BatchNormalization(
                    momentum=0.9, synchronized=self.synchronized
                ),
                layers.ReLU(),
            ]
        )

    def build(self, input_shape):
        self.grid = (input_shape[1] // 8, input_shape[2] // 8)
        self.position = self.add_weight(
            shape=(self.grid[0] * self.grid[1], self.dim),
            initializer="zeros",
            name="position",
        )

    def call(self, images, training=False):
        x = self.rescale(ops.cast(images, "float32"))
        for layer in self.convs:
            x = layer(x, training=training)
        regions = ops.reshape(
            x, (-1, self.grid[0] * self.grid[1], x.shape[-1])
        )
        position = ops.cast(self.position, self.compute_dtype)
        return self.project(regions) + position

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "dim": self.dim,
            "synchronized": self.synchronized,
        }
# <<< chapters/05_implementation.ipynb
