"""Temperature scaling: the one formula the trainer fits and the worker applies (numpy only).

p = sigmoid(logit(raw) / T), documented in models/README.md. Kept here, not in either role, so the
probability a user reads is computed by exactly the code its calibration was fitted with.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # raw sigmoid outputs of exactly 0 or 1 would make the logit infinite

# The bot answers "real" or "fake" only at 2:1 odds or better (calibrated); closer than that it says "unsure",
# whatever band was fitted. A fitted band shrinks to nothing once a model is 98 % right at its threshold alone
# (effnet-lite0-224-v10 as sent), and "looks real (probability of AI: 48 %)" contradicts itself.
ANSWER_MIN_P = 2 / 3


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(p_raw: np.ndarray, temperature: float) -> np.ndarray:
    """p = sigmoid(logit(raw) / T)."""
    return 1.0 / (1.0 + np.exp(-logit(p_raw) / temperature))


def served_band(lo: float, hi: float) -> tuple[float, float]:
    """The unsure band as served: the fitted [lo, hi], widened to every calibrated P(fake) under 2:1 odds."""
    return min(float(lo), 1 - ANSWER_MIN_P), max(float(hi), ANSWER_MIN_P)
