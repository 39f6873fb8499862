"""What each model's classifier costs the worker, side by side: ms for one face and ms per face at batch 32.

    .venv/bin/python bench/classifier_cost.py models/effnet-lite0-224-soup-v10v24v25-bn models/CANDIDATE [--rounds 3]

Not a test. Promotion rules compare a candidate's cost with the default's "measured in the same run": the models
are loaded once and timed in interleaved rounds, so a busy or slow host slows every model alike. Each model is
called the way the worker calls it (`Classifier.raw`, LiteRT when the model has a sound model.tflite).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def time_call(fn, x: np.ndarray, repeats: int) -> float:
    """Mean ms per call of fn(x) after one warm-up call."""
    fn(x)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+", help="model folders (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model")
    ap.add_argument("--runtime", default="litert", choices=("litert", "tensorflow", "auto"))
    args = ap.parse_args()
    from core.logs import configure_logging
    from inference_worker.classifier import Classifier

    configure_logging("WARNING")
    folders = {folder.name: folder for folder in args.models}
    clfs = {name: Classifier(folder, runtime=args.runtime) for name, folder in folders.items()}
    rng = np.random.default_rng(0)
    ones: dict[str, list[float]] = {k: [] for k in clfs}
    batch: dict[str, list[float]] = {k: [] for k in clfs}
    for _ in range(args.rounds):
        for name, clf in clfs.items():
            x = rng.uniform(0, 255, (32, clf.input_size, clf.input_size, 3)).astype(np.float32)
            ones[name].append(time_call(clf.raw, x[:1], 30))
            batch[name].append(time_call(clf.raw, x, 5) / 32)
    base = next(iter(clfs))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.rounds} interleaved rounds "
          f"(goal <= 15 ms for 1 face, <= 8 ms per face at batch 32)")
    for name, clf in clfs.items():
        size = {f.name: f.stat().st_size / 1e6 for f in folders[name].glob("model.*")}
        print(f"{name:<28} {clf.runtime:<10} @{clf.metadata.get('image_size')} px  "
              f"1 face {min(ones[name]):5.1f}-{max(ones[name]):5.1f} ms "
              f"({np.median(ones[name]) / np.median(ones[base]):.2f}x {base})  "
              f"batch 32 {min(batch[name]):5.2f}-{max(batch[name]):5.2f} ms/face "
              f"({np.median(batch[name]) / np.median(batch[base]):.2f}x)  "
              + ", ".join(f"{k} {v:.1f} MB" for k, v in sorted(size.items())))


if __name__ == "__main__":
    main()
