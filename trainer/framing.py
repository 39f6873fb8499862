"""Train = serve framing: the worker's own detector and FFHQ aligner, run once over the training faces.

The worker judges a face in a forwarded photo on a crop that its detector's landmarks framed, which is a few
pixels and degrees off the dataset's own FFHQ framing; a model trained only on the dataset's exact crops
lost ~10 points on such faces. So each training and validation face is pasted into a small random canvas
(random size, background and JPEG quality), the worker's `Detector` finds it, and its 5 landmarks are
mapped back into the 256-px face's coordinates. Training then shows part of the faces re-aligned from
those landmarks with the worker's `ffhq_quad`, i.e. exactly the framing the worker would produce, and
`predict_photos` scores valid faces cut out of the same canvases by the worker itself, for the second
calibration that the worker applies to faces it found inside larger pictures.

Detection costs ~10 ms per face (it was ~0.1 s with MTCNN), and the landmarks are cached per split (keyed by
the detector and the list of files) and computed once; a failed detection is stored as NaN and that face is only shown as-is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from pathlib import Path

import numpy as np

from trainer.data import INPUT_SIZE, KEEP_FRAMING, Split

log = logging.getLogger("trainer.framing")

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
FACE_PX = (96, 208)  # pasted face size range: the worker's crops come from faces of about this size
CANVAS_RATIO = (1.2, 1.8)  # canvas side / face side
JPEG_Q = (75, 95)


def cache_file(cache_dir: Path, split: Split, seed: int) -> Path:
    from inference_worker.detector import DETECTOR_ID
    h = hashlib.sha256(f"{seed}\n{DETECTOR_ID}\n".encode())  # another detector's landmarks are not these
    for p in split.paths:
        h.update(f"{Path(p).parent.name}/{Path(p).name}\n".encode())
    return cache_dir / f"landmarks-{split.name}-{len(split)}-{h.hexdigest()[:16]}.npy"


def _canvas(face_bytes: bytes, rng: np.random.Generator):
    """(JPEG bytes of the face pasted into a random canvas, paste x, y, pasted size, the file's own size)."""
    from PIL import Image, ImageFilter
    with Image.open(io.BytesIO(face_bytes)) as im:
        face = im.convert("RGB")
    native = face.width
    s = int(rng.integers(FACE_PX[0], FACE_PX[1] + 1))
    side = int(s * rng.uniform(*CANVAS_RATIO))
    w, h = side, int(side * rng.uniform(0.75, 1.33))
    h = max(h, s + 2)
    noise = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # smooth colour noise: a face-free background
    canvas = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    if s != face.width:
        face = face.resize((s, s), Image.Resampling.LANCZOS)
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    canvas.paste(face, (x, y))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=int(rng.integers(JPEG_Q[0], JPEG_Q[1] + 1)))
    return buf.getvalue(), x, y, s, native


def _photo(path: str, seed: int):
    """(decoded canvas as the worker sees it, paste x, y, pasted size, the file's own size) of one face.

    The canvas depends only on the seed and the file's name, so it can be made again at any time (the
    landmarks are cached, the canvases are not) and does not depend on how the work was split up.
    """
    from inference_worker.decode import decode_image
    rng = np.random.default_rng([seed, int(hashlib.sha256(Path(path).name.encode()).hexdigest()[:12], 16)])
    jpeg, x, y, s, native = _canvas(Path(path).read_bytes(), rng)
    return decode_image(jpeg, 50 << 20, 50_000_000).image, x, y, s, native  # the worker's decode path


def _pasted_face(faces, x: int, y: int, s: int):
    """The detected face that is the pasted one (its box holds the paste's centre), or None."""
    cx, cy = x + s / 2, y + s / 2
    for f in faces:
        bx, by, bw, bh = f.box
        if bx <= cx <= bx + bw and by <= cy <= by + bh:  # not a "face" found in the background noise
            return f
    return None


def photo_crops(split: Split, seed: int, detector=None, left_out: dict[str, int] | None = None):
    """(aligned 256-px face, label, pasted side in px) of each of the split's faces pasted into a photo and cut
    out exactly as the worker does.

    Each face's canvas (shrunk to 96-208 px, JPEG-compressed; the same canvases the landmarks came from)
    goes through the worker's detector and `align_face`. Faces the worker would call too small to judge
    (box under MIN_FACE_PX) are left out, as the worker never calls them real or fake; so are misses; both
    are counted in `left_out` when given.
    """
    from inference_worker.detector import Detector
    from inference_worker.faces import MIN_FACE_PX, align_face
    detector = detector or Detector()
    left_out = {} if left_out is None else left_out
    for p, y in zip(split.paths, split.labels):
        try:
            image, x, yy, s, _ = _photo(p, seed)
        except OSError:
            left_out["not_found"] = left_out.get("not_found", 0) + 1
            continue
        face = _pasted_face(detector.detect(image), x, yy, s)
        if face is None or face.size_px < MIN_FACE_PX:
            why = "not_found" if face is None else "too_small"
            left_out[why] = left_out.get(why, 0) + 1
            continue
        yield np.asarray(align_face(image, face.landmarks, INPUT_SIZE), np.uint8), y, int(s)


def predict_photos(model, split: Split, seed: int, detector=None, batch_size: int = 64,
                   sizes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Raw P(fake) and labels of the split's faces pasted into photos and cut out as the worker does
    (`photo_crops`), and the counts of faces left out. With `sizes`, the pasted side (px) of each face that
    was kept is appended to it, in the same order.
    """
    probs, labels, batch, ys = [], [], [], []
    left_out = {"too_small": 0, "not_found": 0}

    def flush():
        probs.append(np.asarray(model(np.stack(batch).astype(np.float32), training=False)).reshape(-1))
        labels.extend(ys)
        batch.clear()
        ys.clear()

    for face, y, s in photo_crops(split, seed, detector, left_out):
        batch.append(face)
        ys.append(y)
        if sizes is not None:
            sizes.append(s)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    p_raw = np.concatenate(probs).astype(np.float64) if probs else np.zeros(0)
    return p_raw, np.array(labels, np.int64), left_out


def detect_landmarks(paths: list[str], seed: int, detector=None, progress_every: int = 500) -> np.ndarray:
    """(N, 5, 2) float32 landmarks of each face in its own 256-px coordinates; NaN where none was found."""
    if detector is None:
        from inference_worker.detector import Detector
        detector = Detector()
    out = np.full((len(paths), len(LANDMARKS), 2), np.nan, np.float32)
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        try:
            image, x, y, s, native = _photo(p, seed)
        except OSError:
            continue
        f = _pasted_face(detector.detect(image), x, y, s)
        if f is not None:
            k = native / s  # back to the file's pixels (256 for the dataset)
            out[i] = [((f.landmarks[n][0] - x) * k, (f.landmarks[n][1] - y) * k) for n in LANDMARKS]
        if progress_every and (i + 1) % progress_every == 0:
            log.info("framing detected=%d/%d found=%.3f elapsed_s=%.0f", i + 1, len(paths),
                     float(np.mean(~np.isnan(out[: i + 1, 0, 0]))), time.perf_counter() - t0)
    return out


def _detect_part(args: tuple[list[str], int]) -> np.ndarray:
    paths, seed = args
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)  # one core per process (the detector uses one)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from core.logs import configure_logging
    configure_logging()
    return detect_landmarks(paths, seed)


def split_landmarks(split: Split, cache_dir: Path, seed: int, detector=None, workers: int = 1) -> np.ndarray:
    """The split's detector landmarks, computed once (in `workers` processes) and then read from the cache."""
    path = cache_file(cache_dir, split, seed)
    if path.is_file():
        arr = np.load(path, allow_pickle=False)
        if arr.shape == (len(split), len(LANDMARKS), 2):
            return arr
    log.info("framing split=%s images=%d: running the worker's face detector once (cached in %s)",
             split.name, len(split), path.parent)
    if workers > 1 and detector is None:
        import multiprocessing as mp
        parts = [(split.paths[i::workers], seed) for i in range(workers)]
        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_detect_part, parts)
        arr = np.empty((len(split), len(LANDMARKS), 2), np.float32)
        for i, r in enumerate(results):
            arr[i::workers] = r
    else:
        arr = detect_landmarks(split.paths, seed, detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    log.info("framing split=%s found=%.3f", split.name, float(np.mean(~np.isnan(arr[:, 0, 0]))))
    return arr


def align_params(landmarks: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(N, 8) ImageProjectiveTransform parameters that crop each face like the worker's `align_face`.

    `ffhq_quad` gives the rotated square (TL, BL, BR, TR) the worker samples with Pillow's QUAD
    transform; output pixel centre (u+.5, v+.5) comes from TL + (u+.5)/n (TR-TL) + (v+.5)/n (BL-TL).
    TensorFlow's transform samples at pixel-centre coordinates, hence the half-pixel shifts. Rows
    without landmarks get the identity.
    """
    from inference_worker.faces import ffhq_quad
    out = np.tile(KEEP_FRAMING, (len(landmarks), 1))
    for i, lm in enumerate(landmarks):
        if np.isnan(lm).any():
            continue
        tl, bl, _, tr = ffhq_quad({n: tuple(map(float, p)) for n, p in zip(LANDMARKS, lm)})
        ax, ay = (tr - tl) / size
        bx, by = (bl - tl) / size
        # input = tl + (u + .5) a + (v + .5) b: Pillow's +.5 on the quad and TF's centred pixels cancel
        c0, c1 = tl + 0.5 * np.array([ax + bx, ay + by])
        out[i] = [ax, bx, c0, ay, by, c1, 0, 0]
    return out
