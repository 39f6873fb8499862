"""Temperature scaling, expected calibration error, and the decision threshold / unsure band (numpy only)."""

from __future__ import annotations

import numpy as np

from core.calibration import EPS as _EPS
from core.calibration import apply_temperature, logit, served_band

__all__ = ["apply_temperature", "choose_threshold", "choose_unsure_band", "expected_calibration_error",
           "confidently_wrong", "fit_temperature", "logit", "nll"]


def nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_temperature(p_raw: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the negative log-likelihood on held-out data (golden-section search on log T)."""
    z = logit(p_raw)
    y = np.asarray(y, dtype=np.float64)

    def loss(log_t: float) -> float:
        q = 1.0 / (1.0 + np.exp(-z / np.exp(log_t)))
        return nll(q, y)

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(80):  # the NLL is unimodal in log T; 80 steps shrink the bracket below 1e-15
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE of the predicted class confidence: sum over equal-width bins of |accuracy - confidence| x share."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    pred = (p >= 0.5).astype(int)
    conf = np.where(pred == 1, p, 1 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def confidently_wrong(p: np.ndarray, y: np.ndarray) -> float:
    """Share of faces answered with >= 90 % for the wrong class: what costs the bot its credibility."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y)
    return float((((p >= 0.9) & (y == 0)) | ((p <= 0.1) & (y == 1))).mean())


def choose_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold on calibrated P(fake) with the best balanced accuracy on valid (ties: nearest 0.5)."""
    cands = np.unique(np.concatenate([np.linspace(0.05, 0.95, 181), [0.5]]))
    best_t, best = 0.5, -1.0
    for t in cands:
        pred = p >= t
        tpr = pred[y == 1].mean() if (y == 1).any() else 0.0
        tnr = (~pred[y == 0]).mean() if (y == 0).any() else 0.0
        score = (tpr + tnr) / 2
        if score > best + 1e-9 or (abs(score - best) <= 1e-9 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = score, float(t)
    return round(best_t, 4)


def choose_unsure_band(p: np.ndarray, y: np.ndarray, threshold: float, target_accuracy: float,
                       max_unsure_share: float = 0.5) -> tuple[list[float], dict[str, float]]:
    """Narrowest band around the threshold whose outside answers reach target accuracy on valid.

    The band is symmetric in log-odds, not in probability: around a threshold away from 0.5 (0.715 for a
    model whose photo faces lean fake) a band of +-d in probability hits 1.0 on one side long before it is
    wide enough, and then every face on that side is unsure. The band never swallows more than
    max_unsure_share of valid: past that the model is just weak, and saying "unsure" to most people would
    hide it rather than help them. The result always covers 1/3..2/3 (`core.calibration.served_band`).
    """
    pred = (p >= threshold).astype(int)
    correct = pred == y
    chosen = (threshold, threshold)
    z = float(logit(threshold))
    for d in np.arange(0.0, 10.0, 0.02):  # log-odds half-width; 0.02 is ~0.005 in probability near 0.5
        lo, hi = 1 / (1 + np.exp(-(z - d))), 1 / (1 + np.exp(-(z + d)))
        sure = (p < lo) | (p > hi) if d > 0 else np.ones_like(correct)
        if sure.mean() < 1 - max_unsure_share:
            break
        chosen = (lo, hi)
        if sure.any() and correct[sure].mean() >= target_accuracy:
            break
    lo, hi = served_band(*chosen)  # what the worker will serve, so the reported shares are the served ones
    sure = (p < lo) | (p > hi)
    stats = {"unsure_share_valid": round(float(1 - sure.mean()), 4),
             "accuracy_when_sure_valid": round(float(correct[sure].mean()) if sure.any() else 0.0, 4)}
    return [round(float(lo), 4), round(float(hi), 4)], stats
