"""How a recipe's valid numbers move with the number of training faces: is more data the lever left?

    # 1. nested random shares of train (symlinks; valid and test whole), one folder per share:
    .venv/bin/python bench/learning_curve.py subsets --data-dir DIR --out /tmp/lc --shares 0.5 0.25
    # 2. train the recipe on each (same seed), then measure its photo faces on the promotion rule's canvases:
    .venv/bin/python -m trainer --data-dir /tmp/lc/share-0.5/real-vs-fake --name lc-0.5 --seed 3 --models-dir /tmp/lcm
    .venv/bin/python -m trainer calibrate-photos --model lc-0.5 --models-dir /tmp/lcm --seed 1337 --data-dir DIR
    # 3. the table, with a power law fitted per metric and carried to the full dataset's 100,000 training faces:
    .venv/bin/python bench/learning_curve.py table /tmp/lcm/lc-0.25 /tmp/lcm/lc-0.5 models/FULL_RUN [--at 100000]

Not a test, and it chooses nothing. It reads each model folder's metadata: the training faces it saw
(`training.train_images`), its valid metrics as sent (`metrics.valid`) and in photos (`metrics.valid_realigned`).
The fit is least squares of log(metric) on log(training faces); its value at --at is an extrapolation over a
range the runs did not cover, printed as such: a trend to weigh, not a measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.data import CLASS_NAMES, scan_split  # noqa: E402  (after the path: bench/ runs as a script)
from trainer.registry import read_metadata  # noqa: E402

# (label, metrics key, metric key): error rates and log-losses fall roughly as a power of the data size.
COLUMNS = (("as sent: error", "valid", "error"), ("as sent: log-loss", "valid", "log_loss"),
           ("as sent: conf. wrong", "valid", "confidently_wrong"),
           ("photos: error", "valid_realigned", "error"), ("photos: log-loss", "valid_realigned", "log_loss"),
           ("photos: conf. wrong", "valid_realigned", "confidently_wrong"))


def make_subsets(data_dir: Path, out: Path, shares: list[float], seed: int) -> None:
    """out/share-S/real-vs-fake: S of each train class by one shuffled order (smaller shares nest in larger)."""
    src = data_dir.resolve()
    train = scan_split(src, "train")  # the images a run on the whole split trains on, sorted by name
    for share in shares:
        root = out / f"share-{share:g}" / "real-vs-fake"
        root.mkdir(parents=True, exist_ok=True)
        for split in ("valid", "test"):
            if not (root / split).exists() and (src / split).is_dir():
                os.symlink(src / split, root / split)
        counts = {}
        for label, cls in enumerate(CLASS_NAMES):
            order = [Path(p) for p, y in zip(train.paths, train.labels) if y == label]
            random.Random(f"{cls}-{seed}").shuffle(order)
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            for path in order[:round(len(order) * share)]:
                link = root / "train" / cls / path.name
                if not link.exists():
                    os.symlink(path, link)
            counts[cls] = len(os.listdir(root / "train" / cls))
        print(f"{root}  train {counts}")


def _row(folder: Path) -> tuple[int, dict[str, float], dict[str, int]]:
    meta = read_metadata(folder)
    n_train = int(meta["training"]["train_images"])
    values, sizes = {}, {}
    for label, split, key in COLUMNS:  # keyed by label: two columns share a metric key
        m = meta.get("metrics", {}).get(split)
        if m is None:
            continue
        values[label] = 1.0 - m["accuracy"] if key == "error" else m[key]
        sizes[label] = int(m["n"])
    return n_train, values, sizes


def power_fit(ns: list[int], ys: list[float]) -> tuple[float, float] | None:
    """(exponent b, log-intercept a) of y = e^a n^b by least squares in logs; None where it cannot be fitted."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    b, a = np.polyfit(*zip(*pts), 1)
    return float(b), float(a)


def table(folders: list[Path], at: int) -> None:
    rows = sorted((_row(f) + (f.name,) for f in folders), key=lambda r: r[0])
    shown = [(lab, key) for lab, _, key in COLUMNS if any(lab in r[1] for r in rows)]
    labels = [lab for lab, _ in shown]
    print(f"{'model':28s} {'train':>7s} " + " ".join(f"{lab:>20s}" for lab in labels))
    for n, values, sizes, name in rows:
        cells = []
        for lab, key in shown:
            v = values.get(lab)
            if v is None:
                cells.append(f"{'-':>20s}")
            elif key == "confidently_wrong":
                cells.append(f"{f'{v:.2%} ({round(v * sizes[lab])})':>20s}")
            elif key == "error":
                cells.append(f"{v:>20.2%}")
            else:
                cells.append(f"{v:>20.4f}")
        print(f"{name:28s} {n:>7d} " + " ".join(cells))
    print(f"\npower law per metric (y = c * n^b), fitted on the {len(rows)} runs above; value at n = {at:,} is "
          f"extrapolated, not measured:")
    for lab in labels:
        pts = [(n, v[lab]) for n, v, _, _ in rows if lab in v]
        fit = power_fit([n for n, _ in pts], [y for _, y in pts])
        if fit is None:
            print(f"  {lab:22s} too few runs with a nonzero value to fit")
            continue
        b, a = fit
        print(f"  {lab:22s} b = {b:+.2f} (x{2 ** b:.2f} per doubling)  at {at:,}: {math.exp(a + b * math.log(at)):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subsets", help="nested random shares of train as symlinked dataset folders")
    s.add_argument("--data-dir", type=Path, required=True, help="the dataset's real-vs-fake folder")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.25])
    s.add_argument("--seed", type=int, default=0, help="the shuffle's seed")
    t = sub.add_parser("table", help="the runs' valid metrics by training faces, with a power-law fit")
    t.add_argument("models", type=Path, nargs="+", help="model folders")
    t.add_argument("--at", type=int, default=100_000, help="extrapolate to this many training faces")
    args = ap.parse_args()
    if args.cmd == "subsets":
        make_subsets(args.data_dir, args.out, args.shares, args.seed)
    else:
        table(args.models, args.at)


if __name__ == "__main__":
    main()
