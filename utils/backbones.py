"""Pretrained CNNs as region encoders: each backbone's registry entry, the network with its top
cut off (so the last feature map survives as a grid of regions), and the two encoders that put
one in front of a decoder: from cached features, or run (and fine-tuned) inside the captioner.

The registry and :func:`build_backbone` are explained in chapters 2 and 3; the encoders and
their optimizer are built in chapter 5 (section "5.16 The same pipeline on Flickr8k"). The code
between a ``# >>>`` and a ``# <<<`` line is that chapter's cell, copied here by ``make code``
(``book/chapter_code.py``): edit the chapter, not these lines.
Shapes: ``B`` batch, ``S`` input side in pixels, ``R`` regions, ``C`` channels per region.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable

import keras
from keras import layers, ops

from .encoders import RegionEncoder

serializable = keras.saving.register_keras_serializable(package="image_understanding")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """How one CNN is built and fed.

    ``constructor`` is the ``keras.applications`` function (``None`` for the book's own CNN);
    ``preprocess_input`` maps pixels 0..255 to the range the network was trained on (some
    networks, e.g. EfficientNet, normalise inside themselves and their function returns its input).
    """

    name: str
    input_size: int  # S: the network sees S x S pixels
    grid: tuple[int, int]  # rows and columns of the last feature map
    channels: int  # C
    constructor: Callable[..., keras.Model] | None
    preprocess_input: Callable | None
    summary: str

    @property
    def regions(self) -> int:
        """R, the number of grid cells."""
        return self.grid[0] * self.grid[1]

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(R, C)``, the shape of one image's features."""
        return self.regions, self.channels


_apps = keras.applications
BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("inception_v3", 299, (8, 8), 2048, _apps.InceptionV3,
             _apps.inception_v3.preprocess_input,
             "InceptionV3, the encoder of most Show-Attend-Tell reimplementations"),
    Backbone("resnet50", 224, (7, 7), 2048, _apps.ResNet50, _apps.resnet50.preprocess_input,
             "ResNet-50 (caffe-style input: BGR, ImageNet mean subtracted)"),
    Backbone("mobilenet_v3", 224, (7, 7), 960, _apps.MobileNetV3Large,
             _apps.mobilenet_v3.preprocess_input,
             "MobileNetV3-Large, small and fast (normalises pixels inside the network)"),
    Backbone("efficientnet_b0", 224, (7, 7), 1280, _apps.EfficientNetB0,
             _apps.efficientnet.preprocess_input,
             "EfficientNet-B0 (normalises pixels inside the network)"),
    Backbone("shapes_cnn", 64, (8, 8), 128, None, None,
             "the book's small CNN (utils.encoders.RegionEncoder), trained with the decoder"),
]}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded (usually: no internet); says what to do."""


def get_backbone(name: str) -> Backbone:
    """The registry entry ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def preprocess(name: str, pixels):
    """Normalise ``[B, S, S, 3]`` pixels (0..255, uint8 or float) as backbone ``name`` expects.

    Models from :func:`build_backbone` call this themselves as their first layer: feed them raw
    pixels. Call it directly only to look at what the network sees.
    """
    backbone = get_backbone(name)
    # A float copy first: keras' preprocess_input edits NumPy float arrays in place.
    floats = ops.cast(pixels, "float32")
    return floats if backbone.preprocess_input is None else backbone.preprocess_input(floats)


class Preprocess(keras.layers.Layer):
    """:func:`preprocess` as a layer, so a backbone model takes raw pixels."""

    def __init__(self, backbone_name: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone_name = backbone_name

    def call(self, pixels):
        return preprocess(self.backbone_name, pixels)

    def get_config(self):
        return {**super().get_config(), "backbone_name": self.backbone_name}


def build_backbone(name: str, weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """A model mapping ``[B, S, S, 3]`` pixels (0..255, uint8 or float) to ``float32[B, R, C]``
    (float16 under a mixed-precision policy).

    ``weights``: ``"imagenet"`` (downloaded by Keras once, into its cache), ``None`` (random
    initialisation) or the path of a weights file. The network is built with
    ``include_top=False``: no global pooling, no classifier, so the last feature map survives
    as a grid of regions. This is the working form of the seed article's
    ``model.layers.pop()``, which does not cut a Keras model: popping from the ``layers`` list
    leaves the computation graph, and so the model's output, unchanged.

    ``shapes_cnn`` is the book's small CNN (:class:`utils.encoders.RegionEncoder`). It has no
    ImageNet weights: it is meant to be trained jointly with the decoder, and features from a
    randomly initialised copy are only useful for tests.

    Offline, ``"imagenet"`` raises :class:`WeightsUnavailableError` saying where to put the file.
    """
    backbone = get_backbone(name)
    _check_weights_argument(backbone, weights)
    side = backbone.input_size
    pixels = keras.Input((side, side, 3), name="pixels")
    normalised = Preprocess(name, name="preprocess")(pixels)
    if backbone.constructor is None:
        regions = RegionEncoder(name="region_encoder")(normalised)
    else:
        grid = _pretrained_cnn(backbone, weights)(normalised)
        regions = keras.layers.Reshape(backbone.feature_shape, name="regions")(grid)
    model = keras.Model(pixels, regions, name=f"{name}_regions")
    if backbone.constructor is None and weights is not None:
        model.load_weights(weights)
    return model


def _check_weights_argument(backbone: Backbone, weights) -> None:
    if weights == "imagenet" and backbone.constructor is None:
        raise ValueError(
            f"{backbone.name} has no ImageNet weights: it is trained from scratch together with "
            "the decoder. Pass weights=None for a fresh copy, or the path of saved weights.")
    if weights not in (None, "imagenet") and not pathlib.Path(weights).is_file():
        raise FileNotFoundError(f"weights file for {backbone.name} not found: {weights}")


# keras.utils.get_file raises a bare Exception with this text when a download fails.
_FETCH_FAILURE = re.compile(r"URL fetch failure on (\S+?): (.*)", re.DOTALL)


def _pretrained_cnn(backbone: Backbone, weights) -> keras.Model:
    side = backbone.input_size
    try:
        return backbone.constructor(include_top=False, weights=weights, input_shape=(side, side, 3))
    except Exception as error:
        failure = _FETCH_FAILURE.search(str(error))
        if failure is None:
            raise
        raise WeightsUnavailableError(
            _weights_advice(backbone.name, failure.group(1), failure.group(2))) from error


def _weights_advice(name: str, url: str, reason: str) -> str:
    filename = url.rsplit("/", 1)[-1]
    reason = reason.split(" -- ")[-1].strip()  # Keras writes "<errno> -- <reason>"
    return (
        f"ImageNet weights for {name} are not available: Keras could not download {url} "
        f"({reason}). Without internet: copy {filename} (fetched on a machine that has "
        f"internet) into {_keras_cache_folder()}/, where Keras looks first, or pass "
        f"weights='/path/to/{filename}'. Or run the book on the embedded Shapes dataset "
        "(BOOK_DATASET=shapes, the default of the cpu and smoke profiles), whose small CNN "
        "needs no downloaded weights.")


def _keras_cache_folder() -> pathlib.Path:
    """Where ``keras.utils.get_file`` keeps models: ``$KERAS_HOME/models``, by default
    ``~/.keras/models``."""
    try:
        from keras.src.backend.config import keras_home  # Keras 3 has no public accessor
        home = keras_home()
    except ImportError:
        home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return pathlib.Path(os.path.expanduser(home)) / "models"


# >>> chapters/05_implementation.ipynb, section 5.16: edit it there, then `make code`
class PositionedRegions(keras.layers.Layer):
    """What the two backbone encoders share: a ReLU projection of
    ``[B, R, C]`` backbone features to ``[B, R, dim]``, dropout, and a
    learned position embedding per region (a backbone's features say *what*
    is in a cell much more clearly than *where* the cell is)."""

    # no batch normalisation, or (backbones) in inference mode
    trains_batch_norm = False

    def __init__(self, dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dropout_rate = dim, dropout
        self.project = layers.Dense(dim, activation="relu")
        self.dropout = layers.Dropout(dropout)

    def add_position(self, regions_count):
        self.position = self.add_weight(
            shape=(regions_count, self.dim),
            initializer="zeros",
            name="position",
        )

    def positioned(self, features, training):
        regions = self.dropout(self.project(features), training=training)
        return regions + ops.cast(self.position, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "dropout": self.dropout_rate,
        }


@serializable
class FeatureEncoder(PositionedRegions):
    """Features cached ahead of training
    (:class:`utils.features.FeatureCache`), ``float[B, R, C]`` (float16 on
    disk), -> ``[B, R, dim]``. The backbone never runs while training, which
    is what makes an ImageNet backbone affordable: InceptionV3 costs far more
    than the whole decoder."""

    def build(self, input_shape):
        self.add_position(input_shape[1])

    def call(self, features, training=False):
        return self.positioned(
            ops.cast(features, self.compute_dtype), training
        )


@serializable
class BackboneEncoder(PositionedRegions):
    """A backbone run inside the captioner, so that its last
    ``trainable_layers`` layers can be fine-tuned with the decoder:
    ``uint8[B, S, S, 3]`` -> ``[B, R, dim]``.

    Batch normalisation inside the backbone always runs in inference mode:
    its statistics were estimated on ImageNet, and re-estimating them from
    small captioning batches hurts. The fine-tuned layers learn at
    ``learning_rate_factor`` times the decoder's rate
    (:class:`FineTuningAdam`): they start from good values that a full-size
    step would wreck. ``weights`` is what the backbone starts from
    (``"imagenet"``, ``None``, a file); a saved captioner holds the
    backbone's weights itself, so it is reloaded with ``weights=None``.
    """

    def __init__(
        self,
        backbone,
        dim,
        dropout=0.0,
        trainable_layers=0,
        weights="imagenet",
        learning_rate_factor=0.1,
        **kwargs,
    ):
        super().__init__(dim, dropout, **kwargs)
        self.backbone_name, self.trainable_layers = (
            backbone,
            trainable_layers,
        )
        self.learning_rate_factor = learning_rate_factor
        self.grid = get_backbone(backbone).grid
        self.backbone = build_backbone(backbone, weights)
        self.backbone.trainable = trainable_layers > 0
        inner = [layer for layer in self.backbone.layers if layer.weights]
        for index, layer in enumerate(inner):
            layer.trainable = index >= len(inner) - trainable_layers

    def build(self, input_shape):
        self.add_position(self.grid[0] * self.grid[1])

    def call(self, images, training=False):
        # batch normalisation: inference mode
        features = self.backbone(images, training=False)
        return self.positioned(features, training)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": self.backbone_name,
            "trainable_layers": self.trainable_layers,
            "weights": None,
            "learning_rate_factor": self.learning_rate_factor,
        }


@serializable
class FineTuningAdam(keras.optimizers.Adam):
    """Adam with a second, lower learning rate for some variables (a
    fine-tuned backbone).

    Scaling those variables' gradients would not do it: Adam divides each
    gradient by its own running size, so the step length is set by the
    learning rate alone. ``slow_factor`` multiplies the learning rate of the
    variables given to :meth:`set_slow_variables`.
    """

    def __init__(self, learning_rate=1e-3, slow_factor=0.1, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.slow_factor = slow_factor
        self.slow_keys = set()

    def set_slow_variables(self, variables):
        # _var_key names a variable the same way whether update_step is
        # handed the Keras variable, its TensorFlow variable, or one
        # replica's copy under a strategy.
        self.slow_keys = {self._var_key(variable) for variable in variables}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self.slow_keys:
            learning_rate = learning_rate * self.slow_factor
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "slow_factor": self.slow_factor}


def make_optimizer(model, learning_rate, **kwargs):
    """Adam for ``model`` (``kwargs`` such as ``clipnorm`` passed on); with a
    fine-tuned backbone, :class:`FineTuningAdam`, giving the backbone its
    lower learning rate."""
    encoder = model.encoder
    if (
        not isinstance(encoder, BackboneEncoder)
        or not encoder.trainable_layers
    ):
        return keras.optimizers.Adam(learning_rate, **kwargs)
    optimizer = FineTuningAdam(
        learning_rate, slow_factor=encoder.learning_rate_factor, **kwargs
    )
    optimizer.set_slow_variables(encoder.backbone.trainable_variables)
    return optimizer
# <<< chapters/05_implementation.ipynb
