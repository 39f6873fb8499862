"""Evaluating a model folder on a split, plain or after a Telegram-like recompression."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibration import apply_temperature
from trainer.data import INPUT_SIZE, Split, predict_split
from trainer.registry import MODEL_FILE, read_metadata
from trainer.report import classification_metrics


def load_model_folder(folder: Path, realigned: bool = False):
    """(keras model, or several networks called like one; metadata) of models/<name>/.

    A model with a network for each framing (trainer by-framing) answers as it does for faces passed through as
    sent (dataset-style crops: evaluate, preview) or, with `realigned`, for faces it cut out of a larger picture
    (calibrate-photos), exactly as the worker routes them.
    """
    import keras

    import inference_worker.layers  # noqa: F401  (registers the layers a served model may contain)
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {folder}")
    meta = read_metadata(folder)
    if "crops" in meta and not realigned:  # the crop network answers (trainer/by_framing.py)
        from trainer.by_framing import load_crop_path
        return load_crop_path(folder, meta), meta
    if "second_opinion" in meta:  # two networks, called as one (trainer/second_opinion.py)
        from trainer.second_opinion import load
        return load(folder, meta), meta
    return keras.models.load_model(folder / MODEL_FILE, compile=False), meta


def load_network(folder: Path, purpose: str):
    """The Keras network of a model folder that holds one; a model of several networks (called as one only) is
    refused with what it cannot be used for."""
    check_one_network(folder, purpose)
    return load_model_folder(folder)[0]


def check_one_network(folder: Path, purpose: str) -> None:
    """ValueError, saying why, when the model folder holds more than one network."""
    meta = read_metadata(folder)
    if "crops" in meta:
        raise ValueError(f"{folder.name} holds a network for each framing (by-framing): it cannot be {purpose}")
    if "second_opinion" in meta:
        raise ValueError(f"{folder.name} holds two networks (a second opinion): it cannot be {purpose}")


def evaluate_split(model, meta: dict[str, Any], split: Split, recompress: bool = False,
                   batch_size: int = 64) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Metrics with the model's own calibration and decision (as the worker applies them)."""
    p_raw, y = predict_split(model, split, batch_size, recompress)
    t = float(meta["calibration"]["temperature"])
    p = apply_temperature(p_raw, t)
    m = classification_metrics(p, y, meta["decision"]["threshold"], meta["decision"]["unsure_band"], p_raw)
    m["undecodable_skipped"] = len(split) - int(y.size)
    return m, p, y


def inference_ms_per_image(model, batch_size: int = 32, repeats: int = 3) -> float:
    """CPU (or GPU) milliseconds per 256-px face at the given batch size: best of a few timed batches."""
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
    model(x, training=False)  # warm-up: graph tracing and oneDNN kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(model(x, training=False))
        best = min(best, time.perf_counter() - t0)
    return round(1000 * best / batch_size, 3)
