"""A weight average ("model soup"): one model whose weights are the element-wise mean of several runs.

Runs fine-tuned from the same ImageNet weights tend to land in one basin, so the mean of their weights
behaves like an ensemble of them at the cost of one model (Wortsman et al., 2022, "Model soups"). The
soup is calibrated, decided and measured exactly like a freshly trained model (`training.finalize`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.data import scan_split
from trainer.registry import model_dir, read_metadata

log = logging.getLogger("trainer.soup")
MUST_MATCH = ("arch", "image_size", "flip_average", "width", "stem_stride", "activation")


def average_weights(models) -> list[np.ndarray]:
    """The element-wise mean of each weight (BatchNorm statistics included) over models of one architecture."""
    per_model = [m.get_weights() for m in models]
    shapes = [[w.shape for w in ws] for ws in per_model]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("the models' weights differ in shape: only runs of one architecture can be averaged")
    return [np.mean(np.stack(ws), axis=0).astype(ws[0].dtype) for ws in zip(*per_model)]


def make_soup(folders: list[Path], name: str, data_dir: Path, models_dir: Path, overwrite: bool = False) -> Path:
    """Write models/<name>/: the mean of the folders' weights, calibrated and measured on data_dir."""
    from trainer.evaluation import load_model_folder
    from trainer.training import finalize
    if len(folders) < 2:
        raise ValueError("a soup needs at least two models")
    out = model_dir(models_dir, name)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pick another --name or pass --overwrite")
    metas = [read_metadata(f) for f in folders]
    configs = [TrainConfig.from_dict(m.get("train_config") or {}) for m in metas]
    for field in MUST_MATCH:
        values = {str(getattr(c, field)) for c in configs}
        if len(values) > 1:
            raise ValueError(f"the models differ in {field} ({', '.join(sorted(values))}): they cannot be averaged")
    t0 = time.perf_counter()
    models = [load_model_folder(f)[0] for f in folders]
    soup = models[0]
    soup.set_weights(average_weights(models))
    # The first ingredient's recipe: its seed picks the photo canvases the soup is calibrated on.
    c = dataclasses.replace(configs[0], name=name, data_dir=str(data_dir), models_dir=str(models_dir))
    splits = {s: scan_split(data_dir, s, c.limit_per_class) for s in ("train", "valid", "test")}
    ingredients = [f"{m.get('name')}@{m.get('version')}" for m in metas]
    log.info("soup of %s: calibrating and measuring", ", ".join(ingredients))
    # wall_time_s: loading and averaging the runs (calibrating and measuring the soup come after)
    training = {"device": "CPU", "soup_of": ingredients, "wall_time_s": round(time.perf_counter() - t0, 1),
                "train_images": len(splits["train"])}
    return finalize(c, splits, soup, {}, 0.0, "CPU", photos=c.framing == "detector",
                    extra={"soup_of": ingredients, "training": training})
