"""The served network as a LiteRT file (model.tflite): what CPU workers run, about twice as cheap per face.

TensorFlow's per-call overhead dominates one small face on a 2-core host; LiteRT with XNNPACK runs the same
float32 network without it (EfficientNet-Lite was designed for it). The model's first layer, an antialiased
resize, has no LiteRT kernel (TF's ScaleAndTranslate), so the file holds the network from the resize's output
on and the worker resizes with the model's own Keras layer first. Keras' `model.export(format="litert")` does
the conversion; the file is only written when it gives the Keras model's output on a probe batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from core.models import LITERT_FILE, METADATA_FILE, RESIZE_LAYER, file_sha256
from trainer.data import INPUT_SIZE
from trainer.registry import read_metadata, utc_now, write_json_atomic

log = logging.getLogger("trainer.litert_export")

MAX_ABS_DIFF = 1e-4  # of P(fake) against Keras on the probe; float32 re-ordering gives ~1e-6


class NotExportable(ValueError):
    """A model the LiteRT file cannot serve (the worker keeps TensorFlow for it)."""


def probe_batch(faces: list[np.ndarray] | None = None) -> np.ndarray:
    """Real faces where given (their P(fake) spans the range, so a wrong conversion shows), plus the worker's
    own load-time probe (noise and a gradient, which exercise every op)."""
    from inference_worker.litert_net import probe_inputs
    return np.concatenate([np.asarray(f, np.float32)[None] for f in faces or []] + [probe_inputs(INPUT_SIZE)])


def body(model):
    """(resize layer or None, the network LiteRT runs): the part after the model's own resize."""
    import keras
    names = [layer.name for layer in model.layers]
    if RESIZE_LAYER not in names:
        return None, model
    if names.index(RESIZE_LAYER) != 1 or len(model.inputs) != 1:
        raise NotExportable(f"{model.name}: the resize is not the model's first layer")
    resize = model.get_layer(RESIZE_LAYER)
    return resize, keras.Model(resize.output, model.output, name=f"{model.name}_body")


def convert(model, faces: list[np.ndarray] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The LiteRT file's bytes and its metadata entry, checked against the Keras model on the probe batch
    through the worker's own LiteRT runner."""
    from inference_worker.litert_net import LiteNet
    resize, net = body(model)
    x = probe_batch(faces)
    xin = np.asarray(resize(x)) if resize is not None else x
    with tempfile.TemporaryDirectory(prefix="zhenjia-litert-") as tmp:
        path = Path(tmp) / LITERT_FILE
        try:
            net.export(str(path), format="litert", verbose=False)
        except Exception as exc:  # the converter raises many types for an op it cannot map
            why = " ".join(str(exc).split())  # one line: the converter's message spans many
            ops = why.split("Custom ops: ", 1)[1].split(" Details:", 1)[0] if "Custom ops: " in why else why[-200:]
            raise NotExportable(f"model {model.name!r} has no LiteRT form (ops LiteRT lacks: {ops}); "
                                "workers serve it with TensorFlow") from None
        blob = path.read_bytes()
        got = LiteNet(path, threads=1)(xin)
    diff = float(np.max(np.abs(got - np.asarray(model(x, training=False)).reshape(-1))))
    if not diff <= MAX_ABS_DIFF:
        raise NotExportable(f"{model.name}: LiteRT output differs from Keras by {diff:.2e} on the probe batch")
    entry = {"file": LITERT_FILE, "resize_to": int(xin.shape[1]) if resize is not None else None,
             "max_abs_diff_vs_keras": float(f"{diff:.3g}")}
    return blob, entry


def write_litert(folder: Path, model, faces: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Write folder/model.tflite for `model` (atomically); the metadata entry for it, with the file's hash."""
    blob, entry = convert(model, faces)
    tmp = folder / f".{LITERT_FILE}.tmp"
    tmp.write_bytes(blob)
    os.replace(tmp, folder / LITERT_FILE)
    return {**entry, "sha256": file_sha256(folder / LITERT_FILE), "exported_at": utc_now()}


def try_write_litert(folder: Path, model, faces: list[np.ndarray] | None = None) -> dict[str, Any] | None:
    """As write_litert, but a model LiteRT cannot serve gets no file (its workers keep TensorFlow)."""
    try:
        return write_litert(folder, model, faces)
    except NotExportable as exc:
        log.warning("no LiteRT file: %s", exc)
        return None


def split_faces(split, per_class: int = 4) -> list[np.ndarray]:
    """The first few decodable faces of each class of a split, for the probe."""
    from trainer.data import load_image_pillow
    picked = [p for cls in (0, 1) for p in [q for q, y in zip(split.paths, split.labels) if y == cls][:per_class]]
    return [img for img in map(load_image_pillow, picked) if img is not None]


def export_model_folder(folder: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """`python -m trainer export-litert`: add model.tflite to an existing model folder; returns its metadata.

    With a dataset, its first valid faces join the probe; without one, noise and a gradient only."""
    from trainer.data import scan_split
    from trainer.evaluation import load_network
    model = load_network(folder, "exported again (trainer second-opinion wrote its LiteRT files)")
    faces = split_faces(scan_split(Path(data_dir), "valid")) if data_dir is not None else []
    entry = write_litert(folder, model, faces)
    meta = read_metadata(folder)  # again: the least time between reading and replacing the file
    meta["litert"] = entry
    write_json_atomic(folder / METADATA_FILE, meta)
    return meta
