"""The training input pipeline of `trainer.data` without TensorFlow: Pillow + numpy `keras.utils.PyDataset`s.

Keras 3 on the JAX (or torch) backend trains from these on a machine that has no TensorFlow. Each op
mirrors its tf.data twin in `trainer.data` (same probabilities, ranges and order of the random choices;
same pixels for the geometric ops: the projective sampler below is TensorFlow's
ImageProjectiveTransformV3, the resizers use tf.image.resize's conventions). Random draws derive from
(seed, epoch, position in the epoch), so a batch does not depend on how many workers made it.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from trainer.data import INPUT_SIZE, KEEP_FRAMING, REALIGN_PAD, Split

log = logging.getLogger("trainer.feed")


# ---------------------------------------------------------------- pixel ops

def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) tf.image.resize "area" matrix: how much of each input pixel an output pixel covers.

    Positions are computed in float32 as TF does: float64 weights differ from TF's by ~1e-5, which flipped
    ~0.4 % of the final roundings; in float32 about 1 in 100,000 flips.
    """
    s = np.float32(n_in) / np.float32(n_out)
    i = np.arange(n_in, dtype=np.float32)[None, :]
    o = np.arange(n_out, dtype=np.float32)[:, None]
    return np.clip(np.minimum((o + 1) * s, i + 1) - np.maximum(o * s, i), 0, None)


def _resize_area(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """img (H, W, C) area-resized to (h, w) as float32 with TF's values, rows then columns.

    Applied tap by tap (a few nonzero weights per output pixel) rather than as a matrix product: on
    matrices this small, multithreaded BLAS took 15 ms a pass against ~2 ms for this. (Pillow's BOX filter
    is not TF's area: up to 49 grey levels apart.)
    """
    out = img.astype(np.float32)
    for axis, n in ((0, h), (1, w)):
        m = _area_weights(out.shape[axis], n)
        taps = np.argsort(m == 0, axis=1, kind="stable")[:, :int((m != 0).sum(axis=1).max())]
        wts = np.take_along_axis(m, taps, axis=1)
        shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
        out = sum(np.take(out, taps[:, k], axis=axis) * wts[:, k].reshape(shape) for k in range(taps.shape[1]))
    # TF sums the covered areas' values, then scales by 1 / (area of an output pixel)
    sy, sx = np.float32(img.shape[0]) / np.float32(h), np.float32(img.shape[1]) / np.float32(w)
    return out * (np.float32(1) / (sy * sx))


def _enlarge(img: np.ndarray, h: int, w: int, kind: Image.Resampling) -> np.ndarray:
    """img (H, W, C) enlarged to (h, w) as float32 by Pillow on float images, channel by channel.

    Bilinear gives tf.image.resize's values (to 2e-5) at 2.5x the speed of numpy taps; bicubic stays within
    2e-4 of Keys' kernel (a = -0.5). Enlarging only: shrinking, Pillow antialiases where TF does not. No
    matrix product either: BLAS threads in every feed process made 2 processes slower than 1.
    """
    a = img.astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F").resize((w, h), kind))
                     for c in range(a.shape[2])], axis=-1)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)  # rint rounds half to even, as tf.round does


def decode(path: str) -> np.ndarray:
    """The file as (256, 256, 3) uint8 RGB like `data._decode` (area-resized if another size); raises if corrupt."""
    # Pillow's JPEG decoder uses the accurate integer DCT, like the worker's decode; tf.io.decode_image uses
    # the fast one, ~1 grey level off on average (at most 4 on the test faces). Pillow cannot be told to.
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    if a.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        a = _to_uint8(_resize_area(a, INPUT_SIZE, INPUT_SIZE))
    return a


def _reflect(c: np.ndarray, n: int) -> np.ndarray:
    """TensorFlow's FILL_REFLECT coordinate map (mirror about -0.5 and n - 0.5: dcba|abcd|dcba), then clamped."""
    s = np.float32(2 * n)
    lo = c + s * np.trunc(-c / s)
    lo = np.where(lo < -n, lo + s, -lo - 1)
    hi = c - s * np.trunc(c / s)
    hi = np.where(hi >= n, s - hi - 1, hi)
    return np.clip(np.where(c < 0, lo, np.where(c > n - 1, hi, c)), 0, n - 1)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel coordinates (ys, xs) as float32, made once per size (a quarter of a transform's time)."""
    if size not in _GRIDS:
        _GRIDS[size] = tuple(np.mgrid[0:size, 0:size].astype(np.float32))
    return _GRIDS[size]


def transform(img: np.ndarray, params: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """ImageProjectiveTransformV3 (bilinear, fill_mode REFLECT) in numpy: float32 (size, size, C).

    Output pixel (x, y) samples the input at ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
    k = c0 x + c1 y + 1, integer coordinates being pixel centres. The arithmetic is TF's, in float32.
    """
    t = np.asarray(params, np.float32)
    h, w, _ = img.shape
    ys, xs = _grid(size)
    x, y = t[0] * xs + t[1] * ys + t[2], t[3] * xs + t[4] * ys + t[5]
    vanish = None
    if t[6] or t[7]:  # projective; our re-alignments and jitters are affine, k = 1 (dividing by 1 is exact)
        k = t[6] * xs + t[7] * ys + 1
        vanish = k == 0  # TF outputs fill_value 0 where the projection is 0
        k[vanish] = 1
        x, y = x / k, y / k
    if x.min() < 0 or x.max() > w - 1:  # inside the picture the reflection is the identity: skip its cost
        x = _reflect(x, w)
    if y.min() < 0 or y.max() > h - 1:
        y = _reflect(y, h)
    x0, y0 = np.floor(x), np.floor(y)
    ix, iy = x0.astype(np.intp), y0.astype(np.intp)
    ix1, iy1 = np.minimum(ix + 1, w - 1), np.minimum(iy + 1, h - 1)  # only where its weight is 0
    flat = img.astype(np.float32, copy=False).reshape(h * w, -1)  # np.take on flat indices: 4x faster than f[iy, ix]
    wx0, wx1 = (x0 + 1 - x)[..., None], (x - x0)[..., None]
    row, row1 = iy * w, iy1 * w
    top = wx0 * np.take(flat, row + ix, axis=0) + wx1 * np.take(flat, row + ix1, axis=0)
    bottom = wx0 * np.take(flat, row1 + ix, axis=0) + wx1 * np.take(flat, row1 + ix1, axis=0)
    out = (y0 + 1 - y)[..., None] * top + (y - y0)[..., None] * bottom
    if vanish is not None:
        out[vanish] = 0
    return out


def realign(img: np.ndarray, params: np.ndarray, background: np.random.Generator | None = None) -> np.ndarray:
    """`data.realign`: the face cropped by 8 projective params; `background` draws a foreign surround, None mirrors."""
    n, pad = INPUT_SIZE, REALIGN_PAD
    face = np.pad(img.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")  # = tf.pad REFLECT
    if background is not None:  # smooth colour noise plus grain in the border, the face inside
        side = n + 2 * pad
        bg = _enlarge(background.uniform(0, 255, (6, 8, 3)), side, side, Image.Resampling.BICUBIC)
        bg += (background.standard_normal((side, side, 1)) * background.uniform(0, 12)).astype(np.float32)
        inside = np.zeros((side, side, 1), bool)
        inside[pad:-pad, pad:-pad] = True
        face = np.where(inside, face, bg)
    shift = np.array([0, 0, pad, 0, 0, pad, 0, 0], np.float32)  # the same transform in padded coordinates
    return _to_uint8(transform(face, np.asarray(params, np.float32) + shift))


def similarity(img: np.ndarray, scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    """`data.jitter_framing`'s transform for given draws: zoom 1/scale, rotate `angle` rad about the centre, shift."""
    scale, angle, tx, ty = (np.float32(v) for v in (scale, angle, tx, ty))
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    c = np.float32((INPUT_SIZE - 1) / 2)
    t = [cos, -sin, c - cos * c + sin * c + tx, sin, cos, c - sin * c - cos * c + ty, 0, 0]
    return _to_uint8(transform(img, np.array(t, np.float32)))


def jitter_framing(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """`data.jitter_framing`: a random similarity transform with its ranges (mirrored borders)."""
    a = np.float32(amount)
    scale = np.float32(rng.uniform(1 - amount, 1 + amount))
    angle = np.float32(rng.uniform(-1, 1)) * a * np.float32(0.75)
    tx, ty = rng.uniform(-1, 1, 2).astype(np.float32) * a * np.float32(0.5) * np.float32(INPUT_SIZE)
    return similarity(img, scale, angle, tx, ty)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at `quality`, 4:2:0 chroma like tf.image.adjust_jpeg_quality."""
    # The encoded bytes are TF's to the byte; decoding differs as in `decode` (accurate vs fast DCT).
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0")
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def shrink_and_enlarge(img: np.ndarray, side: int, jpeg_quality: int | None = None) -> np.ndarray:
    """`data.shrink_and_enlarge`: area down to side px, JPEG there if a quality is given, bilinear back up."""
    small = _resize_area(img, side, side)
    if jpeg_quality is not None:
        small = jpeg(_to_uint8(small), jpeg_quality)
    return _to_uint8(_enlarge(small, INPUT_SIZE, INPUT_SIZE, Image.Resampling.BILINEAR))


def photo_face(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`data.photo_face`: shrunk to a pasted photo face's size, JPEG-compressed there, enlarged again."""
    from trainer.framing import FACE_PX, JPEG_Q
    side = int(rng.integers(FACE_PX[0], FACE_PX[1] + 1))
    return shrink_and_enlarge(img, side, int(rng.integers(JPEG_Q[0], JPEG_Q[1] + 1)))


def blur(img: np.ndarray, alpha: float) -> np.ndarray:
    """`chat_augment`'s mild blur: separable [1,2,1]/4 wrapping round the edges, mixed in at `alpha`."""
    xf = img.astype(np.float32)
    b = (2 * xf + np.roll(xf, 1, 0) + np.roll(xf, -1, 0)) / 4
    b = (2 * b + np.roll(b, 1, 1) + np.roll(b, -1, 1)) / 4
    a = np.float32(alpha)
    return np.rint(a * b + (1 - a) * xf).astype(np.uint8)


def chat_augment(img: np.ndarray, rng: np.random.Generator, jpeg_lo: int, jpeg_hi: int, framing: float = 0.0,
                 rescale_min: float = 0.55, small_jpeg: float = 0.0) -> np.ndarray:
    """`data.chat_augment`: flip, reframe, rescale, blur, recompress, with the same odds and in the same order."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if framing > 0 and rng.random() < 0.7:
        img = jitter_framing(img, framing, rng)
    if rng.random() < 0.5:
        side = int(np.rint(INPUT_SIZE * np.float32(rng.uniform(rescale_min, 1.0))))
        q = None
        if small_jpeg > 0:
            q = int(rng.integers(jpeg_lo, jpeg_hi))  # drawn either way, as data.py does
            q = q if rng.random() < small_jpeg else None
        img = shrink_and_enlarge(img, side, q)
    if rng.random() < 0.2:
        img = blur(img, rng.uniform(0.3, 1.0))
    if rng.random() < 0.6:
        img = jpeg(img, int(rng.integers(jpeg_lo, jpeg_hi)))  # [lo, hi): tf.image.random_jpeg_quality's bounds
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------- Keras datasets

class _Feed(keras.utils.PyDataset):
    """Batches of decoded, then `_make`-processed files; one that fails to decode is left out with a warning."""

    def __init__(self, split: Split, batch_size: int, workers: int, processes: bool = True):
        # Processes, Keras's own way: on 2 cores they made 1.81x one process's faces/s against 1.69x for threads
        # (bench/feed_throughput.py), and threads share one GIL however many cores there are. A queued batch
        # is 12.6 MB at 64 faces, so a couple beyond the busy workers is enough.
        # processes=False: threads, for where forking the trainer is unsafe (JAX warns that it may deadlock).
        super().__init__(workers=workers, use_multiprocessing=processes and workers > 1,
                         max_queue_size=workers + 2)
        self.paths, self.labels = list(split.paths), np.asarray(split.labels, np.float32)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(self._count() / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for pos in range(index * self.batch_size, min((index + 1) * self.batch_size, self._count())):
            i = self._file(pos)
            try:
                img = decode(self.paths[i])
            except Exception as e:  # whatever Pillow raises on a corrupt file: skipped, as by ignore_errors
                log.warning("feed skipped an undecodable file=%s error=%s", Path(self.paths[i]).name,
                            type(e).__name__)
                continue
            xs.append(self._make(pos, img))
            ys.append(self.labels[i])
        # uint8, not float32: a quarter of what worker processes pickle to the trainer (Keras casts at the
        # model's float32 input, giving the very same answers).
        x = np.stack(xs) if xs else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        return x, np.array(ys, np.float32).reshape(-1, 1)

    def _count(self) -> int:
        return len(self.paths)

    def _file(self, pos: int) -> int:
        raise NotImplementedError

    def _make(self, pos: int, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TrainFeed(_Feed):
    """`data.train_dataset` as a PyDataset: reshuffled each epoch, augmented, reproducible from the seed."""

    def __init__(self, split: Split, batch_size: int, augment: str, jpeg_quality: tuple[int, int], seed: int,
                 framing: float, align: np.ndarray | None, realign_share: float, foreign_share: float,
                 rescale_min: float, small_jpeg: float, workers: int, processes: bool = True,
                 photo_faces: float = 0.0):
        if augment not in ("chat", "flip", "none"):
            raise ValueError(f"augment must be chat, flip or none, not {augment!r}")
        lo, hi = jpeg_quality
        if augment == "chat" and not 0 <= lo < hi <= 100:  # what tf.image.random_jpeg_quality accepts
            raise ValueError(f"jpeg_quality needs 0 <= lo < hi <= 100, got {jpeg_quality}")
        super().__init__(split, batch_size, workers, processes)
        if align is None:
            align, realign_share = np.tile(KEEP_FRAMING, (len(split), 1)), 0.0
        self.params = np.asarray(align, np.float32)
        self.augment, self.jpeg_quality, self.seed, self.framing = augment, (lo, hi), seed, framing
        self.realign_share, self.foreign_share = realign_share, foreign_share
        self.rescale_min, self.small_jpeg, self.photo_faces = rescale_min, small_jpeg, photo_faces
        self.epoch = 0
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))

    def on_epoch_end(self) -> None:
        """Next epoch, next order (Keras forks its worker processes again each epoch, so they see it)."""
        self.epoch += 1
        self._order = self._shuffle()

    def _file(self, pos: int) -> int:
        return int(self._order[pos])

    def _make(self, pos: int, img: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, pos])  # not shared state: any worker, same draws
        if self.realign_share > 0 and rng.random() < self.realign_share:
            img = realign(img, self.params[self._file(pos)], rng if rng.random() < self.foreign_share else None)
            if self.photo_faces > 0 and rng.random() < self.photo_faces:  # no draw at 0: old recipes unchanged
                img = photo_face(img, rng)
        if self.augment == "chat":
            img = chat_augment(img, rng, *self.jpeg_quality, self.framing, self.rescale_min, self.small_jpeg)
        elif self.augment == "flip" and rng.random() < 0.5:
            img = img[:, ::-1]
        return img


class EvalFeed(_Feed):
    """`data.eval_dataset` as a PyDataset: every face as-is, then those with landmarks again, re-aligned."""

    def __init__(self, split: Split, batch_size: int, align: np.ndarray | None, workers: int,
                 processes: bool = True):
        super().__init__(split, batch_size, workers, processes)
        self.params = None if align is None else np.asarray(align, np.float32)
        has = np.zeros(len(split), bool) if align is None else ~np.all(self.params == KEEP_FRAMING, axis=1)
        self.again = np.flatnonzero(has)  # the file of each re-aligned item, after the len(paths) as-is ones

    def _count(self) -> int:
        return len(self.paths) + len(self.again)

    def _file(self, pos: int) -> int:
        return pos if pos < len(self.paths) else int(self.again[pos - len(self.paths)])

    def _make(self, pos: int, img: np.ndarray) -> np.ndarray:
        return img if pos < len(self.paths) else realign(img, self.params[self._file(pos)])


def train_feed(split: Split, batch_size: int, augment: str, jpeg_quality: tuple[int, int], seed: int,
               framing: float = 0.0, align: np.ndarray | None = None, realign_share: float = 0.0,
               foreign_share: float = 0.0, rescale_min: float = 0.55, small_jpeg: float = 0.0,
               workers: int = 1, processes: bool = True, photo_faces: float = 0.0) -> keras.utils.PyDataset:
    """Shuffled, augmented (uint8 (b, 256, 256, 3), float32 (b, 1)) batches; see `data.train_dataset`."""
    return TrainFeed(split, batch_size, augment, jpeg_quality, seed, framing, align, realign_share,
                     foreign_share, rescale_min, small_jpeg, workers, processes, photo_faces)


def eval_feed(split: Split, batch_size: int, align: np.ndarray | None = None, workers: int = 1,
              processes: bool = True) -> keras.utils.PyDataset:
    """Ordered, unaugmented batches; with `align` the faces with landmarks follow again, re-aligned."""
    return EvalFeed(split, batch_size, align, workers, processes)
