"""How each model does on faces in photos by the size the face had there: where the photo accuracy is lost.

    .venv/bin/python bench/photo_sizes.py models/effnet-lite0-224-second-v22 models/CANDIDATE --data-dir DIR [--seed 1337]

Not a test, and it chooses nothing. The valid faces are pasted into the same canvases `trainer calibrate-photos
--seed 1337` uses (96-208 px, JPEG q75-95), cut out by the worker's detector and alignment, answered by each
model's Keras network and calibrated with its own `calibration_realigned` temperature and `decision_realigned`
threshold, as the worker would. Printed per band of pasted size: faces, accuracy, answered >= 90 % wrong, log-loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BANDS = ((96, 120), (120, 150), (150, 180), (180, 209))  # px, lower bound included, upper excluded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+", help="model folders")
    ap.add_argument("--data-dir", type=Path, required=True, help="the dataset's real-vs-fake folder")
    ap.add_argument("--seed", type=int, default=1337, help="canvases' seed (1337: the promotion rule's)")
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    args = ap.parse_args()
    from core.logs import configure_logging
    from inference_worker.detector import Detector
    from trainer.calibration import apply_temperature
    from trainer.data import scan_split
    from trainer.evaluation import load_model_folder
    from trainer.framing import predict_photos
    from trainer.report import classification_metrics
    configure_logging()
    split, detector = scan_split(args.data_dir, args.split), Detector()
    print(f"{args.split} faces in photos (canvases seed {args.seed}), by pasted size; each model calibrated "
          "as the worker calibrates re-aligned faces")
    for folder in args.models:
        model, meta = load_model_folder(folder, realigned=True)
        sizes: list[int] = []
        p_raw, y, left_out = predict_photos(model, split, args.seed, detector, sizes=sizes)
        p = apply_temperature(p_raw, float(meta["calibration_realigned"]["temperature"]))
        threshold = float(meta["decision_realigned"]["threshold"])
        size = np.asarray(sizes)
        print(f"{folder.name}  (left out {left_out})")
        bands = [(f"{lo}-{hi - 1}px", (size >= lo) & (size < hi)) for lo, hi in BANDS]
        for name, m in bands + [("all", np.ones(size.shape, bool))]:
            r = classification_metrics(p[m], y[m], threshold)  # what calibrate-photos reports, per band
            print(f"    {name} n={r['n']} {100 * r['accuracy']:.1f}% "
                  f"wrong>=90%:{round(r['confidently_wrong'] * r['n'])} ll={r['log_loss']:.4f}")


if __name__ == "__main__":
    main()
