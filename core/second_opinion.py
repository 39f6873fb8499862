"""A second opinion: a second network looks again at the faces the first one is not sure of (numpy only).

A model folder whose metadata has `second_opinion` holds a second network in its `second/` folder. The first
network answers every face; where its raw P(fake) is within `defer_below` of even odds in logits, the second
one also looks at that face and the face's raw P(fake) is the mean of the two, as in an output average. Most
faces are settled by the first network, so this costs a fraction of running both (cascades of this kind often
match the full average: Wang et al., 2021, "Wisdom of Committees"). The calibration is fitted on these combined
outputs, so temperature, band and a clip's mean logit apply to them unchanged. Kept here, not in either role,
so the trainer measures exactly what the worker serves.

A model folder whose metadata also has `crops` (written by `python -m trainer by-framing`) holds a third network
in `crops/`, which answers the faces the worker passes through as sent (dataset-style crops) in place of the
folder's own first network; the second network is asked about those where the crop network's |logit| is under
the entry's own `defer_below` (0: never). Re-aligned faces (photos, clips) are answered as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from core.calibration import logit

SECOND_DIR = "second"  # the second network's own model folder inside the model folder
CROPS_DIR = "crops"  # by-framing: the network that answers passed-through crops


def read_entry(entry: Any) -> float:
    """`defer_below` of a metadata `second_opinion` entry; ValueError for anything a worker must not serve."""
    if not isinstance(entry, dict) or entry.get("folder") != SECOND_DIR:
        raise ValueError(f"second_opinion must name the folder {SECOND_DIR!r}: {entry!r}")
    defer_below = entry.get("defer_below")
    if not isinstance(defer_below, (int, float)) or not defer_below > 0:
        raise ValueError(f"second_opinion.defer_below must be a number above 0: {defer_below!r}")
    return float(defer_below)


def read_crops_entry(entry: Any, has_second: bool) -> float:
    """`defer_below` of a metadata `crops` entry (0: the second network never looks at crops); ValueError for
    anything a worker must not serve."""
    if not isinstance(entry, dict) or entry.get("folder") != CROPS_DIR:
        raise ValueError(f"crops must name the folder {CROPS_DIR!r}: {entry!r}")
    defer_below = entry.get("defer_below", 0)
    if not isinstance(defer_below, (int, float)) or not defer_below >= 0:
        raise ValueError(f"crops.defer_below must be a number, 0 or above: {defer_below!r}")
    if defer_below > 0 and not has_second:
        raise ValueError("crops.defer_below asks a second network the model does not have")
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
