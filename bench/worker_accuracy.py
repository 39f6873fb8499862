"""Accuracy and calibration (ECE, log-loss) of the worker pipeline -- exactly what `python -m inference_worker check`
does -- on the shared sample's TEST split, as sent and after the transformations pictures go through.

    .venv/bin/python bench/worker_accuracy.py [--models-dir models] [--limit 0] [--variants asis,photo,telegram]

Variants: asis (the dataset file), photo (the face at 160-220 px pasted into a 1024x768 picture, JPEG q85:
what users forward; the detector has to find it and the worker re-aligns it), telegram (long side <= 1280 px,
JPEG q85, as Telegram re-encodes photos), paste256 / paste128 (the face at 256 / 128 px pasted into a
1280x960 picture, JPEG q90). "conf. wrong" = a face answered with >= 90 % confidence for the wrong class;
"ll" = the calibrated log-loss, which weighs every answer by how sure it was.
Not a test; never used to tune anything.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACES_DATA_DIR", REPO.parent / "shared/data/faces140k-sample/real-vs-fake"))


def _jpeg(im, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def transform(data: bytes, variant: str, rng: random.Random) -> bytes:
    from PIL import Image, ImageFilter

    if variant == "asis":
        return data
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if variant == "telegram":
        scale = min(1.0, 1280 / max(im.size))
        if scale < 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        return _jpeg(im, 85)
    if variant == "photo":
        size, (w, h), quality = rng.randrange(160, 221), (1024, 768), 85
    else:
        size, (w, h), quality = int(variant.removeprefix("paste")), (1280, 960), 90
    # A busy but face-free background: smooth colour noise, different for every picture.
    noise = np.asarray([[rng.randrange(256) for _ in range(3)] for _ in range(48 * 64)], np.uint8).reshape(48, 64, 3)
    canvas = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    face = im if size == im.width else im.resize((size, size), Image.Resampling.LANCZOS)
    canvas.paste(face, (rng.randrange(0, w - size), rng.randrange(0, h - size)))
    return _jpeg(canvas, quality)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path(os.environ.get("MODELS_DIR", REPO / "models")))
    ap.add_argument("--limit", type=int, default=0, help="images per class (0: the whole test split)")
    ap.add_argument("--variants", default="asis,photo,telegram")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    args = ap.parse_args()
    from core.logs import configure_logging
    from inference_worker.pipeline import Pipeline
    from core.settings import Settings
    from trainer.calibration import confidently_wrong, expected_calibration_error, nll

    configure_logging("WARNING")
    pipe = Pipeline(Settings(models_dir=args.models_dir))
    clf = pipe.models.current
    files = []
    for cls, y in (("real", 0), ("fake", 1)):
        fs = sorted((DATA / args.split / cls).glob("*.jpg"))
        files += [(f, y) for f in (fs[: args.limit] if args.limit else fs)]
    d, dr = clf.decision, clf.decision_realigned
    print(f"model {clf.ident}  {args.split} split {len(files)} images  as sent: threshold {d.threshold} unsure "
          f"[{d.unsure_lo}, {d.unsure_hi}]  re-aligned: threshold {dr.threshold} "
          f"unsure [{dr.unsure_lo}, {dr.unsure_hi}]")
    print(f"{'variant':<10} {'n':>5} {'found':>6} {'acc':>6} {'acc|found':>9} {'ece|found':>9} {'ll|found':>8} "
          f"{'unsure':>7} {'acc|sure':>8} {'conf.wrong':>13} {'p50 ms':>7}")
    for variant in args.variants.split(","):
        rng = random.Random(1)
        ps, ys, found, labels, ms, thresholds = [], [], [], [], [], []
        t0 = time.perf_counter()
        for f, y in files:
            v = pipe.check(transform(f.read_bytes(), variant, rng), f.name).verdict
            ms.append(v.timings_ms.get("total", 0.0))
            found.append(bool(v.faces))
            ys.append(y)
            # The largest face is the dataset's face (pasting adds none); p_fake over all faces would do too.
            ps.append(v.faces[0].p_fake if v.faces else np.nan)
            thresholds.append(clf.decision_for(v.faces[0].realigned).threshold if v.faces else 0.5)
            labels.append(v.label)
        ps_a, ys_a, found_a = np.array(ps), np.array(ys), np.array(found)
        pred = np.where(found_a, (np.nan_to_num(ps_a) >= np.array(thresholds)).astype(int), -1)
        acc = float((pred == ys_a).mean())
        acc_found = float((pred[found_a] == ys_a[found_a]).mean()) if found_a.any() else float("nan")
        ece = expected_calibration_error(ps_a[found_a], ys_a[found_a]) if found_a.any() else float("nan")
        log_loss = nll(ps_a[found_a], ys_a[found_a]) if found_a.any() else float("nan")
        sure = np.array([lab in ("fake", "real") for lab in labels])
        acc_sure = float((pred[sure] == ys_a[sure]).mean()) if sure.any() else float("nan")
        unsure = float(np.mean([lab == "unsure" for lab in labels]))
        conf_wrong = confidently_wrong(np.nan_to_num(ps_a, nan=0.5), ys_a)
        print(f"{variant:<10} {len(files):>5} {found_a.mean():>6.1%} {acc:>6.1%} {acc_found:>9.1%} {ece:>9.3f} "
              f"{log_loss:>8.4f} "
              f"{unsure:>7.1%} {acc_sure:>8.1%} {conf_wrong:>7.2%} ({round(conf_wrong * len(files))}) "
              f"{np.median(ms):>7.0f}   "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
