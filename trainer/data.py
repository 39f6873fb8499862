"""Datasets in the 140k layout: scanning with clear errors, tf.data pipelines, chat-app augmentation."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("trainer.data")

CLASS_NAMES = ("real", "fake")  # label 1 = fake, the positive class
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
INPUT_SIZE = 256  # what the saved model takes in (models/README.md)
GET_THE_DATASET = ("Get Kaggle's 140k Real and Fake Faces: "
                   "`kaggle datasets download -d xhlulu/140k-real-and-fake-faces`, unzip it and pass "
                   "--data-dir .../real-vs-fake (the default is data/real-vs-fake in the repository); "
                   "any dataset works in the layout DIR/{train,valid,test}/{real,fake}/*.jpg")
# Projective-transform parameters that leave a face as it is: how "no detector landmarks" is encoded.
KEEP_FRAMING = np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32)
UNBALANCED_RATIO = 1.5  # larger/smaller class count above this gets a warning in the scan report

# Magic numbers of the formats tf.io.decode_image reads; anything else is skipped as unreadable.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a")


class DatasetError(ValueError):
    """A dataset that cannot be trained on, with a message that says how to fix it."""


@dataclass
class Split:
    """Files and labels of one split, plus what was skipped while scanning."""

    name: str
    paths: list[str]
    labels: list[int]
    counts: dict[str, int]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _looks_like_image(path: Path) -> bool:
    try:
        if path.stat().st_size < 16:
            return False
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


def scan_split(root: Path, split: str, limit_per_class: int = 0) -> Split:
    """List root/split/{real,fake}; raise DatasetError on a missing folder or an empty class."""
    split_dir = root / split
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist. {GET_THE_DATASET}")
    if not split_dir.is_dir():
        raise DatasetError(f"missing split folder {split_dir}: the dataset needs {'/'.join(SPLITS)} "
                           f"each with {' and '.join(CLASS_NAMES)} subfolders")
    paths: list[str] = []
    labels: list[int] = []
    counts: dict[str, int] = {}
    skipped: list[str] = []
    for label, cls in enumerate(CLASS_NAMES):
        cls_dir = split_dir / cls
        if not cls_dir.is_dir():
            raise DatasetError(f"missing class folder {cls_dir}: each split needs {' and '.join(CLASS_NAMES)}")
        # Sorted so that a dataset fingerprint and a --limit-per-class slice are reproducible.
        files = sorted(p for p in cls_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        good = []
        for p in files:
            if limit_per_class and len(good) >= limit_per_class:
                break
            if _looks_like_image(p):
                good.append(p)
            else:
                skipped.append(str(p))
        if not good:
            raise DatasetError(f"class folder {cls_dir} has no readable images "
                               f"({len(files)} image files found, {len(files)} unreadable)")
        counts[cls] = len(good)
        paths += [str(p) for p in good]
        labels += [label] * len(good)
    if skipped:
        log.warning("split=%s skipped_unreadable=%d first=%s", split, len(skipped), Path(skipped[0]).name)
    big, small = max(counts.values()), min(counts.values())
    if big / small > UNBALANCED_RATIO:
        log.warning("split=%s unbalanced classes %s (ratio %.2f): class weights are applied in training",
                    split, counts, big / small)
    return Split(split, paths, labels, counts, skipped)


def scan_dataset(root: Path, splits: tuple[str, ...] = SPLITS, limit_per_class: int = 0) -> dict[str, Split]:
    return {s: scan_split(root, s, limit_per_class) for s in splits}


def balance_report(split: Split) -> dict[str, object]:
    big, small = max(split.counts.values()), min(split.counts.values())
    return {"counts": split.counts, "ratio": round(big / small, 3), "unbalanced": big / small > UNBALANCED_RATIO,
            "skipped_unreadable": len(split.skipped)}


def class_weights(split: Split) -> dict[int, float] | None:
    """Inverse-frequency weights when classes are unbalanced, else None (plain loss)."""
    big, small = max(split.counts.values()), min(split.counts.values())
    if big / small <= UNBALANCED_RATIO:
        return None
    n = len(split)
    return {i: n / (2 * split.counts[c]) for i, c in enumerate(CLASS_NAMES)}


def fingerprint(splits: dict[str, Split]) -> dict[str, object]:
    """Hash of relative paths and sizes (not contents: fast on 140k files) plus counts per split."""
    h = hashlib.sha256()
    out: dict[str, object] = {}
    for name, s in sorted(splits.items()):
        for p in s.paths:
            pp = Path(p)
            h.update(f"{name}/{pp.parent.name}/{pp.name}:{pp.stat().st_size}\n".encode())
        out[name] = {**s.counts, "skipped_unreadable": len(s.skipped)}
    return {"sha256": h.hexdigest(), "splits": out}


# ---------------------------------------------------------------- tf.data (training)

def _decode(path, label):
    import tensorflow as tf
    raw = tf.io.read_file(path)
    img = tf.io.decode_image(raw, channels=3, expand_animations=False)
    img = tf.image.resize(img, (INPUT_SIZE, INPUT_SIZE), method="area")  # no-op for 256-px faces
    img = tf.cast(tf.round(img), tf.uint8)
    img.set_shape((INPUT_SIZE, INPUT_SIZE, 3))
    return img, label


def jitter_framing(img, amount: float):
    """A small random similarity transform (scale, rotation, shift; mirrored borders), uint8 in/out.

    The dataset's faces are framed by FFHQ's own landmark alignment; the worker re-aligns faces it
    detects in forwarded pictures from MTCNN's landmarks, which lands a few pixels and degrees off.
    Without this, a model trained on the exact framing lost ~13 points of accuracy on faces pasted
    into larger pictures and re-aligned (valid split), against <1 point for JPEG recompression.
    """
    import tensorflow as tf
    n = float(INPUT_SIZE)
    scale = tf.random.uniform((), 1.0 - amount, 1.0 + amount)
    angle = tf.random.uniform((), -1.0, 1.0) * amount * 0.75  # radians: amount 0.06 -> +-2.6 degrees
    tx, ty = tf.unstack(tf.random.uniform((2,), -1.0, 1.0) * amount * 0.5 * n)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    c = (n - 1) / 2
    # Maps each output pixel to the input pixel it samples (ImageProjectiveTransform's convention).
    transform = tf.stack([cos, -sin, c - cos * c + sin * c + tx, sin, cos, c - sin * c - cos * c + ty, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(img, tf.float32)[None], transforms=transform[None],
        output_shape=tf.constant([INPUT_SIZE, INPUT_SIZE]), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT")[0]
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def shrink_and_enlarge(img, side, jpeg_quality=None):
    """The face shrunk to side x side px (area filter), JPEG-compressed at that size if a quality is given,
    and enlarged back to INPUT_SIZE (bilinear, as the worker's crop does); uint8 in and out."""
    import tensorflow as tf
    small = tf.image.resize(tf.cast(img, tf.float32), (side, side), method="area", antialias=True)
    if jpeg_quality is not None:
        small = tf.cast(tf.image.adjust_jpeg_quality(tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8),
                                                     jpeg_quality), tf.float32)
    big = tf.image.resize(small, (INPUT_SIZE, INPUT_SIZE), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(big), 0, 255), tf.uint8)


def chat_augment(img, jpeg_lo: int, jpeg_hi: int, framing: float = 0.0, rescale_min: float = 0.55,
                 small_jpeg: float = 0.0):
    """What a chat app (and our own face re-alignment) does to a face: reframe, rescale, blur, recompress.

    `small_jpeg`: share of the shrunk faces JPEG-compressed while small, before they are enlarged again. A
    face in a forwarded photo was compressed at its size in the photo (often ~100 px) and the worker then
    enlarges it to 256 px, so its 8-px JPEG blocks arrive 2-3x magnified; compressing only at 256 px never
    shows the model that.
    """
    import tensorflow as tf
    img = tf.image.random_flip_left_right(img)
    if framing > 0:
        img = tf.cond(tf.random.uniform(()) < 0.7, lambda: jitter_framing(img, framing), lambda: img)
    # Down- then up-scaling (a thumbnail re-enlarged): half of the images, to rescale_min-100 % size.
    def rescale(x):
        s = tf.cast(tf.round(INPUT_SIZE * tf.random.uniform((), rescale_min, 1.0)), tf.int32)
        if small_jpeg <= 0:
            return shrink_and_enlarge(x, s)
        q = tf.random.uniform((), jpeg_lo, jpeg_hi, dtype=tf.int32)  # as random_jpeg_quality draws
        return tf.cond(tf.random.uniform(()) < small_jpeg, lambda: shrink_and_enlarge(x, s, q),
                       lambda: shrink_and_enlarge(x, s))
    img = tf.cond(tf.random.uniform(()) < 0.5, lambda: rescale(img), lambda: img)
    # Mild blur, a fifth of the images: a random mix with a separable [1,2,1]/4 blur. Rolls instead of a
    # depthwise convolution: TF's CPU depthwise conv costs ~3 ms per 256-px image, this ~1 ms.
    def blur(x):
        xf = tf.cast(x, tf.float32)
        b = (2 * xf + tf.roll(xf, 1, 0) + tf.roll(xf, -1, 0)) / 4
        b = (2 * b + tf.roll(b, 1, 1) + tf.roll(b, -1, 1)) / 4
        a = tf.random.uniform((), 0.3, 1.0)
        return tf.cast(tf.round(a * b + (1 - a) * xf), tf.uint8)
    img = tf.cond(tf.random.uniform(()) < 0.2, lambda: blur(img), lambda: img)
    # JPEG recompression, the commonest degradation: 60 % of the images.
    img = tf.cond(tf.random.uniform(()) < 0.6,
                  lambda: tf.image.random_jpeg_quality(img, jpeg_lo, jpeg_hi),
                  lambda: img)
    img.set_shape((INPUT_SIZE, INPUT_SIZE, 3))
    return img


def photo_face(img):
    """A re-aligned face at the resolution the worker gets it from a forwarded photo; uint8 in and out.

    `trainer.framing`'s canvases paste a face at 96-208 px and JPEG the whole picture; the worker cuts it out
    and enlarges it again. Re-aligning the 256-px original only moves its framing: its detail stays that of
    the original, which a 100-px face in a photo no longer has. So the face is shrunk to a pasted size drawn
    from the same range, JPEG-compressed there at the canvases' qualities, and enlarged (`shrink_and_enlarge`).
    """
    import tensorflow as tf
    from trainer.framing import FACE_PX, JPEG_Q
    side = tf.random.uniform((), FACE_PX[0], FACE_PX[1] + 1, dtype=tf.int32)
    q = tf.random.uniform((), JPEG_Q[0], JPEG_Q[1] + 1, dtype=tf.int32)
    return shrink_and_enlarge(img, side, q)


REALIGN_PAD = 32  # px of surroundings a re-aligned crop may reach into (MTCNN's quad: p90 ~4 % past the face)


def realign(img, params, foreign_background=None):
    """Crop a face like the worker's `align_face` from 8 projective parameters (`trainer.framing`).

    The worker's crop reaches a few pixels past the face's own square (its landmarks are not FFHQ's).
    In a photo those pixels continue the scene; in a screenshot or a face pasted into a layout they are
    something else entirely. With `foreign_background` (a bool tensor) the face is surrounded by smooth
    colour noise with a little grain instead of its own mirror image: on valid faces pasted into
    photos, a model trained on mirrored borders only was right 90.5 % against 94.7 % for the same faces
    with mirrored surroundings, i.e. a 3-px foreign border cost it 4 points.
    """
    import tensorflow as tf
    n, pad = INPUT_SIZE, REALIGN_PAD
    face = tf.pad(tf.cast(img, tf.float32), [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")

    def surround(x):
        side = n + 2 * pad
        bg = tf.image.resize(tf.random.uniform((1, 6, 8, 3), 0.0, 255.0), (side, side), method="bicubic")[0]
        bg = bg + tf.random.normal((side, side, 1)) * tf.random.uniform((), 0.0, 12.0)
        inside = tf.pad(tf.ones((n, n, 1)), [[pad, pad], [pad, pad], [0, 0]])
        return inside * x + (1 - inside) * bg

    if foreign_background is not None:  # the noise is made only for the faces that get it
        face = tf.cond(foreign_background, lambda: surround(face), lambda: face)
    shift = tf.constant([0, 0, pad, 0, 0, pad, 0, 0], tf.float32)  # same transform, padded coordinates
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=face[None], transforms=(params + shift)[None],
        output_shape=tf.constant([n, n]), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT")[0]  # the worker mirror-pads a quad that reaches outside the picture, too
    out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    out.set_shape((n, n, 3))
    return out


def train_dataset(split: Split, batch_size: int, augment: str, jpeg_quality: tuple[int, int],
                  cache: bool, seed: int, framing: float = 0.0, align: np.ndarray | None = None,
                  realign_share: float = 0.0, foreign_share: float = 0.0, rescale_min: float = 0.55,
                  small_jpeg: float = 0.0, photo_faces: float = 0.0):
    """Shuffled, augmented, batched (float32 0-255, label) pairs; decoded in parallel, prefetched.

    With `align` ((N, 8) parameters from `trainer.framing.align_params`, identity where no face was
    found), a `realign_share` of the faces is shown re-aligned the way the worker frames detected faces,
    `foreign_share` of those inside a foreign background (see `realign`), and `photo_faces` of those at
    a photo face's resolution (see `photo_face`).
    """
    import tensorflow as tf
    auto = tf.data.AUTOTUNE
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    paths = np.array(split.paths)[order]
    labels = np.array(split.labels, dtype=np.float32)[order]
    if align is None:
        align = np.tile(KEEP_FRAMING, (len(split), 1))
        realign_share = 0.0
    params = np.asarray(align, np.float32)[order]
    ds = tf.data.Dataset.from_tensor_slices((paths, labels, params))
    if not cache:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    # ignore_errors: a file that passed the header check but fails to decode is skipped, not a crash.
    ds = ds.map(lambda p, y, a: (*_decode(p, y), a), num_parallel_calls=auto,
                deterministic=False).ignore_errors(log_warning=True)
    if cache:
        # Decoded uint8 256-px images (~190 KB each) stay in memory: epochs become compute-bound.
        ds = ds.cache().shuffle(min(len(split), 4096), seed=seed, reshuffle_each_iteration=True)
    if realign_share > 0:
        def realigned(x, a):
            x = realign(x, a, tf.random.uniform(()) < foreign_share)
            if photo_faces <= 0:  # no extra random ops: earlier recipes draw exactly as before
                return x
            return tf.cond(tf.random.uniform(()) < photo_faces, lambda: photo_face(x), lambda: x)
        ds = ds.map(lambda x, y, a: (tf.cond(tf.random.uniform(()) < realign_share,
                                             lambda: realigned(x, a), lambda: x), y),
                    num_parallel_calls=auto, deterministic=False)
    else:
        ds = ds.map(lambda x, y, a: (x, y))
    lo, hi = jpeg_quality
    if augment == "chat":
        ds = ds.map(lambda x, y: (chat_augment(x, lo, hi, framing, rescale_min, small_jpeg), y), num_parallel_calls=auto, deterministic=False)
    elif augment == "flip":
        ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x), y), num_parallel_calls=auto)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y[None]), num_parallel_calls=auto)
    return ds.batch(batch_size).prefetch(auto)


def eval_dataset(split: Split, batch_size: int, cache: bool = True, align: np.ndarray | None = None):
    """Unaugmented, ordered batches for Keras validation during fit (decoded once when cached).

    With `align`, every face that has landmarks is there twice: as-is and re-aligned like the worker.
    """
    import tensorflow as tf
    auto = tf.data.AUTOTUNE
    labels = np.array(split.labels, dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices((np.array(split.paths), labels))
    ds = ds.map(_decode, num_parallel_calls=auto).ignore_errors(log_warning=True)
    if align is not None:
        has = ~np.all(np.asarray(align) == KEEP_FRAMING, axis=1)
        again = tf.data.Dataset.from_tensor_slices((np.array(split.paths)[has], labels[has],
                                                    np.asarray(align, np.float32)[has]))
        again = again.map(lambda p, y, a: (realign(_decode(p, y)[0], a), y), num_parallel_calls=auto)
        ds = ds.concatenate(again.ignore_errors(log_warning=True))
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y[None]), num_parallel_calls=auto)
    if cache:
        ds = ds.cache()
    return ds.batch(batch_size).prefetch(auto)


# ---------------------------------------------------------------- Pillow (evaluation, like the worker)

def recompress_like_telegram(data: bytes) -> bytes:
    """Telegram's photo path: long side at most 1280 px, then JPEG quality 85."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if max(im.size) > 1280:
            im.thumbnail((1280, 1280), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def load_image_pillow(path: str, recompress: bool = False) -> np.ndarray | None:
    """256x256x3 uint8 RGB as the worker would feed it, or None when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        data = Path(path).read_bytes()
        if recompress:
            data = recompress_like_telegram(data)
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (INPUT_SIZE, INPUT_SIZE):
                im = im.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def iter_batches(split: Split, batch_size: int = 64, recompress: bool = False
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images float32, labels) batches; undecodable files are left out (counted by the caller)."""
    imgs: list[np.ndarray] = []
    labs: list[int] = []
    for p, y in zip(split.paths, split.labels):
        a = load_image_pillow(p, recompress)
        if a is None:
            continue
        imgs.append(a)
        labs.append(y)
        if len(imgs) == batch_size:
            yield np.stack(imgs).astype(np.float32), np.array(labs)
            imgs, labs = [], []
    if imgs:
        yield np.stack(imgs).astype(np.float32), np.array(labs)


def predict_split(model, split: Split, batch_size: int = 64, recompress: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Raw model outputs P(fake) and labels of every decodable image of a split."""
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for x, y in iter_batches(split, batch_size, recompress):
        probs.append(np.asarray(model(x, training=False)).reshape(-1))
        labels.append(y)
    if not probs:
        raise DatasetError(f"no decodable images in split {split.name}")
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64)
