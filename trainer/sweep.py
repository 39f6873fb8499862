"""Short training runs over a design of (lr, optimizer, activation) levels, scored on valid."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

from trainer.config import TrainConfig
from trainer.data import predict_split, scan_split

log = logging.getLogger("trainer.sweep")


def run_sweep(base: TrainConfig, levels: dict[str, list], design: tuple[tuple[int, int, int], ...]) -> list[dict]:
    """One short fit per design row; returns rows with valid accuracy/loss and wall seconds."""
    from trainer.calibration import nll
    from trainer.training import _strategy_and_precision, fit
    c0 = dataclasses.replace(base, name=base.name or "sweep").resolved()
    train = scan_split(Path(c0.data_dir), "train", c0.limit_per_class)
    valid = scan_split(Path(c0.data_dir), "valid", c0.limit_per_class)
    strategy, _ = _strategy_and_precision(c0)
    rows = []
    for i, (a, b, d) in enumerate(design, 1):
        c = dataclasses.replace(c0, lr=levels["lr"][a], optimizer=levels["optimizer"][b],
                                activation=levels["activation"][d])
        ckpt = Path(tempfile.mkdtemp(prefix="sweep-"))
        try:
            t0 = time.perf_counter()
            model, _, _ = fit(c, train, valid, ckpt, strategy)
            seconds = time.perf_counter() - t0
            p, y = predict_split(model, valid)
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
        row = {"run": i, "lr": c.lr, "optimizer": c.optimizer, "activation": c.activation,
               "val_accuracy": float(((p >= 0.5) == y).mean()), "val_loss": nll(p, y.astype(float)),
               "seconds": seconds}
        log.info("sweep run=%d lr=%s optimizer=%s activation=%s val_accuracy=%.4f", i, c.lr, c.optimizer,
                 c.activation, row["val_accuracy"])
        rows.append(row)
    return rows
