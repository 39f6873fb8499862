"""The seed's 3x3 grid of labelled samples, optionally with a model's calibrated P(fake)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data import CLASS_NAMES, load_image_pillow, scan_split


def write_preview(root: Path, split_name: str, out: Path, seed: int = 0, model_folder: Path | None = None) -> Path:
    split = scan_split(root, split_name)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(split), size=min(9, len(split)), replace=False)
    images = [load_image_pillow(split.paths[i]) for i in idx]
    keep = [(i, im) for i, im in zip(idx, images) if im is not None]
    probs = None
    if model_folder is not None:
        from trainer.calibration import apply_temperature
        from trainer.evaluation import load_model_folder
        model, meta = load_model_folder(model_folder)
        raw = np.asarray(model(np.stack([im for _, im in keep]).astype(np.float32), training=False)).reshape(-1)
        probs = apply_temperature(raw, meta["calibration"]["temperature"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 3, figsize=(8, 8.6))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(keep):
            continue
        i, im = keep[k]
        ax.imshow(im)
        title = CLASS_NAMES[split.labels[i]]
        if probs is not None:
            title += f" · P(fake) {probs[k]:.2f}"
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
