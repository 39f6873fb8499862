"""`python -m trainer second-opinion FIRST SECOND --defer-below L`: one served model out of two runs, where the
second looks again only at the faces the first is not sure of (core/second_opinion.py has the rule, shared with
the worker). Calibrated, decided and measured on the combined outputs exactly like a trained model
(`training.finalize`); the folder holds the first run's files and the second's in `second/`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.models import METADATA_FILE, MODEL_FILE
from core.second_opinion import SECOND_DIR, combine
from trainer.config import TrainConfig
from trainer.data import INPUT_SIZE, scan_split
from trainer.registry import model_dir, read_metadata, write_json_atomic

log = logging.getLogger("trainer.second_opinion")


def inner_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The short metadata.json of a network kept inside another model's folder (second/, crops/)."""
    return {**{k: meta.get(k) for k in ("name", "version", "arch", "image_size")}, "input_size": INPUT_SIZE}


class SecondOpinionModel:
    """The two networks as the trainer measures them: called like a Keras model (P(fake), shape (N, 1))."""

    def __init__(self, first, second, defer_below: float, second_meta: dict[str, Any]) -> None:
        self.first, self.second, self.defer_below = first, second, float(defer_below)
        self.second_meta = second_meta

    def __call__(self, x, training: bool = False) -> np.ndarray:
        x = np.asarray(x, np.float32)
        first = np.asarray(self.first(x, training=False)).reshape(-1)
        ask = lambda b: np.asarray(self.second(b, training=False)).reshape(-1)  # noqa: E731
        return combine(first, x, ask, self.defer_below).reshape(-1, 1)

    def count_params(self) -> int:
        return int(self.first.count_params() + self.second.count_params())

    def write(self, folder: Path, faces: list[np.ndarray]) -> dict[str, Any] | None:
        """Both networks into the model folder (the first as any model's, the second in second/, each with its
        LiteRT copy when it has one); the first one's LiteRT entry."""
        from trainer.litert_export import try_write_litert
        self.first.save(folder / MODEL_FILE)
        sub = folder / SECOND_DIR
        sub.mkdir()
        self.second.save(sub / MODEL_FILE)
        meta = inner_metadata(self.second_meta)
        litert = try_write_litert(sub, self.second, faces)
        if litert:
            meta["litert"] = litert
        write_json_atomic(sub / METADATA_FILE, meta)
        return try_write_litert(folder, self.first, faces)


def load(folder: Path, meta: dict[str, Any]) -> SecondOpinionModel:
    """A second-opinion model folder as written by `build` (what `load_model_folder` gives for one)."""
    import keras

    from core.second_opinion import read_entry
    defer_below = read_entry(meta["second_opinion"])
    second_meta = read_metadata(folder / SECOND_DIR)
    first, second = (keras.models.load_model(f / MODEL_FILE, compile=False) for f in (folder, folder / SECOND_DIR))
    return SecondOpinionModel(first, second, defer_below, second_meta)


def build(first: Path, second: Path, name: str, defer_below: float, data_dir: Path, models_dir: Path,
          overwrite: bool = False) -> Path:
    """Write models/<name>/: `first` answering every face, `second` asked where |logit(first)| < defer_below."""
    from core.second_opinion import read_entry
    from trainer.evaluation import load_network
    from trainer.training import finalize
    out = model_dir(models_dir, name)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pick another --name or pass --overwrite")
    metas = [read_metadata(f) for f in (first, second)]
    runs = [f"{m.get('name')}@{m.get('version')}" for m in metas]
    entry = {"folder": SECOND_DIR, "defer_below": float(defer_below), "of": runs}
    read_entry(entry)  # the worker's own check of what it will serve, before the networks load
    t0 = time.perf_counter()
    model = SecondOpinionModel(*(load_network(f, "one of a second opinion's two") for f in (first, second)),
                               defer_below, metas[1])
    # The first run's recipe: its seed picks the photo canvases the result is calibrated on, its size is the
    # size that every face is looked at.
    c = dataclasses.replace(TrainConfig.from_dict(metas[0].get("train_config") or {}), name=name,
                            data_dir=str(data_dir), models_dir=str(models_dir))
    splits = {s: scan_split(data_dir, s, c.limit_per_class) for s in ("train", "valid", "test")}
    log.info("second opinion of %s (asked where |logit| < %s): calibrating and measuring", " then ".join(runs),
             model.defer_below)
    training = {"device": "CPU", "second_opinion_of": runs, "wall_time_s": round(time.perf_counter() - t0, 1),
                "train_images": len(splits["train"])}
    return finalize(c, splits, model, {}, 0.0, "CPU", photos=c.framing == "detector",
                    extra={"second_opinion": entry, "training": training})
