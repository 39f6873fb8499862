"""Two ways to make one served model out of several runs, each calibrated, decided and measured exactly like a
freshly trained model (`training.finalize`):

- a weight average ("model soup"): runs fine-tuned from the same ImageNet weights tend to land in one basin, so
  the mean of their weights behaves like an ensemble of them at the cost of one model (Wortsman et al., 2022).
  The mean of the runs' BatchNorm statistics is not the statistics of the mean network, so `refresh_bn`
  re-measures them on training batches, as SWA does (Izmailov et al., 2018);
- an output average (an ensemble): one resize, every run's network, P(fake) averaged. Runs from different
  seeds make different mistakes, so their mean is rarely sure where one of them is wrongly sure
  (Lakshminarayanan et al., 2017), at the cost of all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.data import scan_split
from trainer.registry import model_dir, read_metadata

log = logging.getLogger("trainer.soup")
# The working size is not here: it is the resize at the model's front, which has no weights, so runs fine-tuned
# at different sizes can be averaged (average_weights still refuses weights of different shapes), and the soup
# works at the first run's size.
MUST_MATCH = ("arch", "flip_average", "width", "stem_stride", "activation")
# An ensemble keeps each network whole and resizes for each (ensemble_of), so only what the metadata describes
# for all of them must match.
ENSEMBLE_MUST_MATCH = ("arch", "flip_average")


def average_weights(models) -> list[np.ndarray]:
    """The element-wise mean of each weight (BatchNorm statistics included) over models of one architecture."""
    per_model = [m.get_weights() for m in models]
    shapes = [[w.shape for w in ws] for ws in per_model]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("the models' weights differ in shape: only runs of one architecture can be averaged")
    return [np.mean(np.stack(ws), axis=0).astype(ws[0].dtype) for ws in zip(*per_model)]


def soup_of(models):
    """The first model, its weights replaced by the mean of all the models' weights."""
    models[0].set_weights(average_weights(models))
    return models[0]


def _sublayers(layer):
    yield layer
    for sub in getattr(layer, "layers", None) or []:
        yield from _sublayers(sub)


def refresh_batchnorm(model, batches, max_batches: int) -> int:
    """Re-measure the moving mean and variance of every trainable BatchNorm layer as the plain mean of their
    batch statistics over up to `max_batches` of `batches` (augmented training faces, as in training); returns
    the number of batches used. Frozen layers kept their ImageNet statistics in training and keep them here;
    dropout is off so that it does not skew the statistics of the layers after it."""
    import keras
    layers = list(_sublayers(model))
    bns = [x for x in layers if isinstance(x, keras.layers.BatchNormalization) and x.trainable]
    drops = [(x, x.rate) for x in layers if isinstance(x, keras.layers.Dropout)]
    if not bns:
        raise ValueError("the averaged network has no trainable BatchNorm layers: nothing to re-measure")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    for d, _ in drops:
        d.rate = 0.0
    used = 0
    try:
        for x, _ in batches:
            if used == max_batches:
                break
            used += 1
            # moving = moving * m + batch * (1 - m) with m = (k-1)/k is the running mean of the k batches so far.
            for bn in bns:
                bn.momentum = (used - 1) / used
            model(x, training=True)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for d, rate in drops:
            d.rate = rate
    if used == 0:
        raise ValueError("no training batches to measure BatchNorm statistics on")
    return used


def ensemble_of(models):
    """One Keras model: one resize to the largest working size among the members (when they have one), then
    every member's network, P(fake) averaged. A member that works at a smaller size gets a second, plain
    bilinear resize inside its own branch: the model's first layer stays its only antialiased resize, which
    is what lets the LiteRT export and the worker treat the ensemble like any model."""
    import keras

    from trainer.architectures import resize_layer
    from trainer.litert_export import body
    nets = [body(m)[1] for m in models]
    inp = keras.Input(shape=models[0].input_shape[1:], name="image")
    sizes = [int(net.input.shape[1]) for net in nets]
    shared = max(sizes)
    x = resize_layer(inp, shared) if shared != inp.shape[1] else inp
    outs = []
    for i, (net, size) in enumerate(zip(nets, sizes)):
        xi = x if size == shared else keras.layers.Resizing(size, size, name=f"member_{i}_resize")(x)
        # Each member's network gets its own name: the runs' networks are all called e.g. "efficientnet_lite0".
        outs.append(keras.Model(net.input, net.output, name=f"member_{i}")(xi))
    out = keras.layers.Average(name="ensemble_average", dtype="float32")(outs)
    return keras.Model(inp, out, name=f"ensemble_of_{len(models)}")


# kind -> (how the loaded runs become one model, what their recipes must share)
KINDS: dict[str, tuple[Callable, tuple[str, ...]]] = {"soup": (soup_of, MUST_MATCH),
                                                      "ensemble": (ensemble_of, ENSEMBLE_MUST_MATCH)}


def combine(folders: list[Path], name: str, data_dir: Path, models_dir: Path, kind: str = "soup",
            overwrite: bool = False, refresh_bn: int = 0) -> Path:
    """Write models/<name>/: the folders' runs combined (kind "soup" or "ensemble"), calibrated and measured on
    data_dir; a soup's BatchNorm statistics re-measured on `refresh_bn` batches of the first run's training
    recipe when it is above 0."""
    from trainer.evaluation import load_network
    from trainer.litert_export import body
    from trainer.training import finalize
    build, must_match = KINDS[kind]
    if len(folders) < 2:
        raise ValueError(f"a {kind} needs at least two models")
    out = model_dir(models_dir, name)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pick another --name or pass --overwrite")
    metas = [read_metadata(f) for f in folders]
    configs = [TrainConfig.from_dict(m.get("train_config") or {}) for m in metas]
    for field in must_match:
        values = {str(getattr(c, field)) for c in configs}
        if len(values) > 1:
            raise ValueError(f"the models differ in {field} ({', '.join(sorted(values))}): they cannot be combined")
    if refresh_bn and kind != "soup":
        raise ValueError("--refresh-bn is for a soup: an ensemble keeps each run's own statistics")
    t0 = time.perf_counter()
    model = build([load_network(f, f"part of a {kind}") for f in folders])
    # The first run's recipe: its seed picks the photo canvases the result is calibrated on. The working size
    # recorded is read off the combined model (what its network is fed after its own resize), so it cannot
    # drift from what the build did: a soup keeps the first run's, an ensemble resizes to the largest.
    c = dataclasses.replace(configs[0], name=name, data_dir=str(data_dir), models_dir=str(models_dir),
                            image_size=int(body(model)[1].input.shape[1]))
    splits = {s: scan_split(data_dir, s, c.limit_per_class) for s in ("train", "valid", "test")}
    runs = [f"{m.get('name')}@{m.get('version')}" for m in metas]
    extra: dict = {f"{kind}_of": runs}
    if refresh_bn:
        extra["bn_refreshed_on_batches"] = _refresh(model, c, splits, refresh_bn)
    log.info("%s of %s: calibrating and measuring", kind, ", ".join(runs))
    # wall_time_s: loading and combining the runs (calibrating and measuring the result come after)
    training = {"device": "CPU", f"{kind}_of": runs, "wall_time_s": round(time.perf_counter() - t0, 1),
                "train_images": len(splits["train"])}
    return finalize(c, splits, model, {}, 0.0, "CPU", photos=c.framing == "detector",
                    extra={**extra, "training": training})


def _refresh(model, c: TrainConfig, splits, max_batches: int) -> int:
    """refresh_batchnorm on the first run's training batches (its augmentation, framing and seed)."""
    from trainer.training import _inputs, detector_landmarks
    framing = detector_landmarks(c, splits, ("train",)) if c.framing == "detector" else {}
    t0 = time.perf_counter()
    used = refresh_batchnorm(model, _inputs(c, splits["train"], splits["valid"], framing)[0], max_batches)
    log.info("BatchNorm statistics re-measured on %d training batches wall_s=%.1f", used,
             time.perf_counter() - t0)
    return used
