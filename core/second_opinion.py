"""A second opinion: a second network looks again at the faces the first one is not sure of (numpy only).

A model folder whose metadata has `second_opinion` holds a second network in its `second/` folder. The first
network answers every face; where its raw P(fake) is within `defer_below` of even odds in logits, the second
one also looks at that face and the face's raw P(fake) is the mean of the two, as in an output average. Most
faces are settled by the first network, so this costs a fraction of running both (cascades of this kind often
match the full average: Wang et al., 2021, "Wisdom of Committees"). The calibration is fitted on these combined
outputs, so temperature, band and a clip's mean logit apply to them unchanged. Kept here, not in either role,
so the trainer measures exactly what the worker serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from core.calibration import logit

SECOND_DIR = "second"  # the second network's own model folder inside the model folder


def read_entry(entry: Any) -> float:
    """`defer_below` of a metadata `second_opinion` entry; ValueError for anything a worker must not serve."""
    if not isinstance(entry, dict) or entry.get("folder") != SECOND_DIR:
        raise ValueError(f"second_opinion must name the folder {SECOND_DIR!r}: {entry!r}")
    defer_below = entry.get("defer_below")
    if not isinstance(defer_below, (int, float)) or not defer_below > 0:
        raise ValueError(f"second_opinion.defer_below must be a number above 0: {defer_below!r}")
    return float(defer_below)


def asked(first_raw: np.ndarray, defer_below: float) -> np.ndarray:
    """Which faces the second network is asked about: |logit| of the first network's raw P(fake) under the bar."""
    return np.abs(logit(first_raw)) < defer_below


def combine(first_raw: np.ndarray, batch: np.ndarray, second: Callable[[np.ndarray], np.ndarray],
            defer_below: float) -> np.ndarray:
    """Raw P(fake) of each face: the first network's, or the mean of both where the second was asked.

    `second` runs on the asked faces only (none: it is not called)."""
    out = np.array(first_raw, np.float32).reshape(-1)
    ask = asked(out, defer_below)
    if ask.any():
        out[ask] = (out[ask] + np.asarray(second(batch[ask]), np.float32).reshape(-1)) / 2
    return out
