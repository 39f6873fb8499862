"""Metrics (numpy) and the report PNGs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import served_band
from trainer.calibration import confidently_wrong, expected_calibration_error, nll


def roc_curve(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score, from (0,0) to (1,1)."""
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.where(np.diff(p))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = (1 + idx) - tps
    pos, neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    fpr, tpr = roc_curve(p, y)
    return float(np.trapezoid(tpr, fpr))


def confusion(pred: np.ndarray, y: np.ndarray) -> list[list[int]]:
    """[[real->real, real->fake], [fake->real, fake->fake]] (rows = truth)."""
    return [[int(((y == t) & (pred == q)).sum()) for q in (0, 1)] for t in (0, 1)]


def classification_metrics(p: np.ndarray, y: np.ndarray, threshold: float = 0.5,
                           unsure_band: list[float] | None = None, p_raw: np.ndarray | None = None
                           ) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 of `fake`, ROC-AUC, ECE, confusion matrix, unsure share."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(int)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out: dict[str, Any] = {
        "n": int(y.size),
        "accuracy": round(float((pred == y).mean()), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall) if precision + recall else 0.0, 4),
        "roc_auc": round(roc_auc(p, y), 4),
        "ece": round(expected_calibration_error(p, y), 4),
        "confusion_matrix": confusion(pred, y),
        "threshold": threshold,
        "confidently_wrong": round(confidently_wrong(p, y), 4),
        # Every answer weighted by how sure it was: confident mistakes cost most. Unlike the count of
        # answers >= 90 % wrong (10-20 faces on valid, too few to tell two models apart), it has the
        # statistical power to compare candidates on honesty.
        "log_loss": round(nll(p, y), 4),
    }
    if p_raw is not None:
        out["ece_uncalibrated"] = round(expected_calibration_error(np.asarray(p_raw), y), 4)
    if unsure_band is not None:
        lo, hi = served_band(*unsure_band)  # as the worker serves it, also for a band stored before the floor
        sure = (p < lo) | (p > hi)
        out["unsure_share"] = round(float(1 - sure.mean()), 4)
        out["accuracy_when_sure"] = round(float((pred[sure] == y[sure]).mean()) if sure.any() else 0.0, 4)
    return out


def format_metrics(name: str, m: dict[str, Any]) -> str:
    cm = m["confusion_matrix"]
    lines = [f"{name}: n={m['n']} accuracy={m['accuracy']:.4f} precision={m['precision']:.4f} "
             f"recall={m['recall']:.4f} f1={m['f1']:.4f} roc_auc={m['roc_auc']:.4f} ece={m['ece']:.4f}"
             + (f" (uncalibrated {m['ece_uncalibrated']:.4f})" if "ece_uncalibrated" in m else "")
             + (f" confidently_wrong={m['confidently_wrong']:.2%}" if "confidently_wrong" in m else "")
             + (f" log_loss={m['log_loss']:.4f}" if "log_loss" in m else "")
             + (f" unsure={m['unsure_share']:.1%} acc_when_sure={m['accuracy_when_sure']:.4f}"
                if "unsure_share" in m else ""),
             "  confusion (rows truth, cols predicted)   real   fake",
             f"  real {cm[0][0]:>41} {cm[0][1]:>6}",
             f"  fake {cm[1][0]:>41} {cm[1][1]:>6}"]
    return "\n".join(lines)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(range(1, len(history[prefix + key]) + 1), history[prefix + key], style,
                        label=("valid " if prefix else "train ") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (p, y) in curves.items():
        fpr, tpr = roc_curve(p, y)
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc(p, y):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake caught)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    a = np.array(cm)
    ax.imshow(a, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(a[i, j]), ha="center", va="center",
                    color="white" if a[i, j] > a.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_metrics_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
