"""What each model's classifier costs the worker, side by side: ms for one face and ms per face at batch 32.

    .venv/bin/python bench/classifier_cost.py models/effnet-lite0-224-second-v22 models/CANDIDATE [--rounds 3]
        [--faces 150 --data-dir DIR]

Not a test. Promotion rules compare a candidate's cost with the default's "measured in the same run": the models
are loaded once and timed in interleaved rounds, so a busy or slow host slows every model alike. Each model is
called the way the worker calls it (`Classifier.raw`, LiteRT when the model has a sound model.tflite; with
`--faces`, crops as passed through and photo faces as re-aligned, so a model with a crop network uses it).

By default the faces are noise. A model with a second opinion costs what its faces ask of it, so `--faces N`
times real ones instead: the first N valid faces of each class as sent and the same faces pasted into photos
and cut out as the worker does. Then "1 face" is the mean over those faces fed one at a time (the slowest one
is printed too), "batch 32" the mean per face over batches of 32 of them, and the share of faces that asked
the second network is printed per input.
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
    ap.add_argument("--faces", type=int, default=0, metavar="N",
                    help="time on the first N valid faces of each class, as sent and in photos (default: noise)")
    ap.add_argument("--data-dir", type=Path, default=None, help="dataset root for --faces")
    args = ap.parse_args()
    from core.logs import configure_logging
    from inference_worker.classifier import Classifier

    configure_logging("WARNING")
    folders = {folder.name: folder for folder in args.models}
    clfs = {name: Classifier(folder, runtime=args.runtime) for name, folder in folders.items()}
    faces = real_faces(args.faces, args.data_dir) if args.faces else {}
    every_face = np.concatenate(list(faces.values())) if faces else None
    # Each face goes the way the worker sends it: crops as sent, photo faces re-aligned (a model with a crop
    # network answers the two with different networks).
    framing = np.concatenate([np.full(len(v), k == "photos") for k, v in faces.items()]) if faces else None
    rng = np.random.default_rng(0)
    ones: dict[str, list[float]] = {k: [] for k in clfs}
    worst: dict[str, float] = {k: 0.0 for k in clfs}
    batch: dict[str, list[float]] = {k: [] for k in clfs}
    for _ in range(args.rounds):
        for name, clf in clfs.items():
            if every_face is not None:
                x, r = every_face, framing
                t = [time_call(lambda b, i=i: clf.raw(b, r[i:i + 1]), x[i:i + 1], 1) for i in range(len(x))]
                ones[name].append(float(np.mean(t)))
                worst[name] = max(worst[name], max(t))
                batch[name].append(sum(time_call(lambda b, i=i: clf.raw(b, r[i:i + 32]), x[i:i + 32], 1)
                                       for i in range(0, len(x), 32)) / len(x))
                continue
            x = rng.uniform(0, 255, (32, clf.input_size, clf.input_size, 3)).astype(np.float32)
            ones[name].append(time_call(clf.raw, x[:1], 30))
            batch[name].append(time_call(clf.raw, x, 5) / 32)
    base = next(iter(clfs))
    what = f"{sum(map(len, faces.values()))} valid faces" if faces else "noise"
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.rounds} interleaved rounds on {what} "
          f"(goal <= 15 ms for 1 face, <= 8 ms per face at batch 32)")
    for name, clf in clfs.items():
        size = {f.name: f.stat().st_size / 1e6 for f in folders[name].glob("model.*")}
        print(f"{name:<28} {clf.runtime:<10} @{clf.metadata.get('image_size')} px  "
              f"1 face {min(ones[name]):5.1f}-{max(ones[name]):5.1f} ms "
              f"({np.median(ones[name]) / np.median(ones[base]):.2f}x {base})  "
              f"batch 32 {min(batch[name]):5.2f}-{max(batch[name]):5.2f} ms/face "
              f"(median {np.median(batch[name]):.2f}, {np.median(batch[name]) / np.median(batch[base]):.2f}x)  "
              + ", ".join(f"{k} {v:.1f} MB" for k, v in sorted(size.items())))
        if faces:
            print(f"  slowest face {worst[name]:.1f} ms")
        if faces and clf.second is not None:
            from core.second_opinion import asked
            share = {k: asked(net.raw(v), bar) for k, v in faces.items() for net, bar in [clf.first(k == "photos")]}
            print("  asked the second network: " + ", ".join(f"{k} {100 * float(np.mean(a)):.1f} %"
                                                           for k, a in share.items()))


def real_faces(per_class: int, data_dir: Path | None) -> dict[str, np.ndarray]:
    """{"as sent": ..., "photos": ...}: float32 batches of the first valid faces of each class, passed through and
    pasted into photos then cut out by the worker's detector (the trainer's photo calibration canvases, seed 1337)."""
    from trainer.config import default_data_dir
    from trainer.data import load_image_pillow, scan_split
    from trainer.framing import photo_crops
    split = scan_split(data_dir or default_data_dir(), "valid", per_class)
    sent = [im for im in map(load_image_pillow, split.paths) if im is not None]
    photos = [face for face, _, _ in photo_crops(split, 1337)]
    return {"as sent": np.stack(sent).astype(np.float32), "photos": np.stack(photos).astype(np.float32)}


if __name__ == "__main__":
    main()
