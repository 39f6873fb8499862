"""trainer.feed, the TensorFlow-free input pipeline, against trainer.data's tf.data ops it stands in for."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer import data, feed
from trainer.data import KEEP_FRAMING, scan_split

REPO = Path(__file__).resolve().parent.parent
# Plausible detector landmarks of a 256-px dataset face (eyes, nose, mouth corners).
LANDMARKS = np.array([[90, 110], [166, 110], [128, 150], [100, 190], [156, 190]], np.float32)


def _landmarks(degrees: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
    r = np.deg2rad(degrees)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return ((LANDMARKS - 128) @ rot.T * scale + 128 + np.asarray(shift)).astype(np.float32)


def _params(lm: np.ndarray) -> np.ndarray:
    from trainer.framing import align_params
    return align_params(lm[None])[0]


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32))


@pytest.fixture(scope="module")
def faces(data_dir) -> list[np.ndarray]:
    return [feed.decode(str(p)) for p in sorted((data_dir / "valid" / "real").glob("*.jpg"))[:2]]


class Script:
    """Unit draws in order, shared by a scripted numpy Generator and a scripted tf.random.uniform."""

    def __init__(self, units):
        self.units = list(units)

    def pop(self) -> float:
        return self.units.pop(0)


class FakeRng:
    """The Generator methods feed uses, answering from a Script with TF's formulas for the same unit."""

    def __init__(self, script: Script):
        self.s = script

    def random(self):
        return self.s.pop()

    def uniform(self, lo=0.0, hi=1.0, size=None):
        if size is None:
            return lo + self.s.pop() * (hi - lo)
        return np.array([lo + self.s.pop() * (hi - lo) for _ in range(size)])

    def integers(self, lo, hi):
        return lo + int(math.floor(self.s.pop() * (hi - lo)))


@pytest.fixture
def scripted_tf(monkeypatch):
    """Make every tf.random.uniform (data.py's own and tf.image's random flip/JPEG) answer from a Script."""
    import tensorflow as tf
    from tensorflow.python.ops import random_ops

    def install(script: Script):
        def uniform(shape=(), minval=0, maxval=None, dtype=tf.float32, seed=None, name=None):
            shape = tuple(shape)
            u = np.array([script.pop() for _ in range(int(np.prod(shape)))]).reshape(shape)
            if tf.as_dtype(dtype).is_integer:
                return tf.constant(minval + np.floor(u * (maxval - minval)).astype(np.int64), dtype)
            maxval = 1.0 if maxval is None else maxval
            return tf.constant(minval + u * (maxval - minval), tf.float32)
        monkeypatch.setattr(random_ops, "random_uniform", uniform)
        monkeypatch.setattr(tf.random, "uniform", uniform)
    return install


@pytest.fixture
def accurate_tf_jpeg(monkeypatch):
    """TF's JPEG round trip decoding with the accurate DCT, as Pillow does (its default is the fast one)."""
    import tensorflow as tf
    from tensorflow.python.ops import image_ops_impl
    plain = image_ops_impl.adjust_jpeg_quality

    def accurate(image, quality, dct_method="", name=None):
        return plain(image, quality, dct_method=dct_method or "INTEGER_ACCURATE", name=name)
    monkeypatch.setattr(image_ops_impl, "adjust_jpeg_quality", accurate)  # random_jpeg_quality's
    monkeypatch.setattr(tf.image, "adjust_jpeg_quality", accurate)  # data.shrink_and_enlarge's


# ---------------------------------------------------------------- pixel ops against TensorFlow

@pytest.mark.parametrize("lm", [_landmarks(), _landmarks(7, 1.0, (3, -4)), _landmarks(-10, 0.7, (40, 30)),
                                _landmarks(3, 1.4, (-5, 5))], ids=["straight", "rotated", "zoomed-in", "far-outside"])
def test_realign_matches_tensorflow(faces, lm):
    """The worker's framing, pixel for pixel: plain, tilted, zoomed in, and reaching far past the picture.

    "far-outside" samples 43 % of its pixels beyond the 32-px mirrored padding (the transform's own reflect)."""
    params = _params(lm)
    ours, theirs = feed.realign(faces[0], params), data.realign(faces[0], params).numpy()
    d = _diff(ours, theirs)
    assert ours.dtype == np.uint8 and ours.shape == (256, 256, 3)
    assert d.max() <= 1 and d.mean() < 0.01  # measured: identical (0 differing values)
    assert _diff(ours, faces[0]).mean() > 5  # and it really moved the face


def test_identity_params_leave_the_face_as_it_is(faces):
    assert np.array_equal(feed.realign(faces[0], KEEP_FRAMING), faces[0])
    # A foreign background only shows where the crop reaches past the face: never with the identity.
    assert np.array_equal(feed.realign(faces[0], KEEP_FRAMING, np.random.default_rng(0)), faces[0])


def test_foreign_background_replaces_the_mirrored_surroundings_only(faces):
    params = np.array([1.1, 0, 128 * (1 - 1.1), 0, 1.1, 128 * (1 - 1.1), 0, 0], np.float32)  # ~13 px past each side
    mirrored = feed.realign(faces[0], params)
    foreign = feed.realign(faces[0], params, np.random.default_rng(3))
    assert _diff(mirrored, data.realign(faces[0], params).numpy()).max() <= 1
    assert _diff(mirrored, foreign)[20:-20, 20:-20].max() == 0
    assert _diff(mirrored, foreign)[:8].mean() > 20 and _diff(mirrored, foreign)[-8:].mean() > 20
    assert not np.array_equal(foreign, feed.realign(faces[0], params, np.random.default_rng(4)))


@pytest.mark.parametrize("amount,units", [(0.06, [0.8, 0.3, 0.9, 0.15]), (0.3, [0.05, 0.97, 0.02, 0.99])])
def test_jitter_matches_tensorflow_draw_for_draw(faces, scripted_tf, amount, units):
    """data.jitter_framing with scripted draws against feed's, and against its explicit similarity()."""
    scripted_tf(Script(units))
    theirs = data.jitter_framing(faces[1], amount).numpy()
    ours = feed.jitter_framing(faces[1], amount, FakeRng(Script(units)))
    u = np.float32(units)
    explicit = feed.similarity(faces[1], 1 - amount + u[0] * 2 * amount, (u[1] * 2 - 1) * amount * 0.75,
                               (u[2] * 2 - 1) * amount * 128, (u[3] * 2 - 1) * amount * 128)
    assert _diff(ours, theirs).max() <= 1 and _diff(ours, theirs).mean() < 0.01  # measured: identical
    assert _diff(explicit, theirs).max() <= 1
    assert _diff(ours, faces[1]).mean() > 3


@pytest.mark.parametrize("side", [141, 200, 256])
def test_shrink_and_enlarge_matches_tensorflow(faces, side):
    d = _diff(feed.shrink_and_enlarge(faces[0], side), data.shrink_and_enlarge(faces[0], side).numpy())
    assert d.max() <= 1 and d.mean() < 0.001  # measured: 0-2 values of 196608 off by 1 (float32 rounding)


def test_jpeg_differs_from_tensorflow_only_by_its_decoder(faces, accurate_tf_jpeg):
    """Same encoder bytes; TF decodes with the fast DCT, Pillow with the accurate one: ~1 level, a few at most."""
    import tensorflow as tf
    for q in (30, 90):
        fast = tf.image.adjust_jpeg_quality(faces[0], q, dct_method="INTEGER_FAST").numpy()
        assert 0.5 < _diff(feed.jpeg(faces[0], q), fast).mean() < 1.5  # measured: mean 0.98-1.08, max 3-6
        assert np.array_equal(feed.jpeg(faces[0], q), tf.image.adjust_jpeg_quality(faces[0], q).numpy())
    d = _diff(feed.shrink_and_enlarge(faces[0], 150, 70), data.shrink_and_enlarge(faces[0], 150, 70).numpy())
    assert d.mean() < 0.01 and d.max() <= 8  # measured: identical (a rounding tie before the JPEG could show)


def test_photo_face_takes_the_same_draws_as_tensorflow(faces, scripted_tf, accurate_tf_jpeg):
    """A photo face: side and quality drawn from the canvases' ranges by both pipelines alike; detail is lost."""
    for units, side, q in (([0.0, 0.0], 96, 75), ([0.999, 0.999], 208, 95), ([0.5, 0.3], 152, 81)):
        theirs_script, ours_script = Script(units), Script(units)
        scripted_tf(theirs_script)
        theirs = data.photo_face(faces[0]).numpy()
        ours = feed.photo_face(faces[0], FakeRng(ours_script))
        assert theirs_script.units == [] and ours_script.units == []
        assert np.array_equal(ours, feed.shrink_and_enlarge(faces[0], side, q))
        d = _diff(ours, theirs)
        assert d.mean() < 0.01 and d.max() <= 8

    def detail(img):  # mean step between neighbouring pixels: what a small face enlarged again has less of
        return np.abs(np.diff(img.astype(np.float64), axis=1)).mean()
    assert detail(feed.photo_face(faces[0], FakeRng(Script([0.0, 0.5])))) < 0.8 * detail(faces[0])


def test_decode_is_tensorflows_with_the_accurate_dct(data_dir, tmp_path):
    import tensorflow as tf
    path = str(sorted((data_dir / "valid" / "fake").glob("*.jpg"))[0])
    ours = feed.decode(path)
    raw = tf.io.read_file(path)
    assert np.array_equal(ours, tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE").numpy())
    assert _diff(ours, data._decode(path, 0)[0].numpy()).mean() < 1.5  # measured 0.95 (fast DCT), max 4
    from PIL import Image
    for size in ((512, 384), (200, 180)):  # other sizes: TF's area resize (a PNG, so the decoders agree)
        png = tmp_path / f"{size[0]}.png"
        Image.fromarray(ours).resize(size, Image.Resampling.BICUBIC).save(png)
        d = _diff(feed.decode(str(png)), data._decode(str(png), 0)[0].numpy())
        assert d.max() <= 1 and d.mean() < 0.001  # measured: identical


# Unit draws in data.chat_augment's order; each comment says which branch it takes (threshold in brackets).
SCRIPTS = {
    "geometry": [0.2,  # flip [.5]
                 0.1, 0.8, 0.3, 0.9, 0.15,  # jitter [.7]: scale, angle, tx, ty
                 0.3, 0.4, 0.5, 0.9,  # rescale [.5]: side, q, small JPEG [.3] no
                 0.1, 0.6,  # blur [.2]: alpha
                 0.95],  # JPEG [.6] no
    "jpegs": [0.7, 0.8, 0.2, 0.1, 0.3, 0.1, 0.5, 0.3, 0.99],  # rescale with a small JPEG, no blur, JPEG q 94
    "nothing": [0.6, 0.9, 0.6, 0.5, 0.7],
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_chat_augment_takes_the_same_draws_in_the_same_order(faces, scripted_tf, accurate_tf_jpeg, name):
    """Both pipelines fed the same draws take the same branches, consume exactly them, and agree on the pixels."""
    theirs_script, ours_script = Script(SCRIPTS[name]), Script(SCRIPTS[name])
    scripted_tf(theirs_script)
    theirs = data.chat_augment(faces[1], 60, 95, framing=0.06, rescale_min=0.55, small_jpeg=0.3).numpy()
    ours = feed.chat_augment(faces[1], FakeRng(ours_script), 60, 95, 0.06, 0.55, 0.3)
    assert theirs_script.units == [] and ours_script.units == []
    d = _diff(ours, theirs)
    assert d.max() <= 1 and d.mean() < 0.01  # measured: identical but for 1 value (in "geometry")
    assert np.array_equal(ours, faces[1]) == (name == "nothing")


def test_chat_augment_odds_and_ranges(monkeypatch):
    """Over many faces each step happens about as often as in data.py, with its parameters in range."""
    seen: dict[str, list] = {"jitter": [], "shrink": [], "blur": [], "jpeg": []}
    monkeypatch.setattr(feed, "jitter_framing", lambda img, a, rng: (seen["jitter"].append(a), img)[1])
    monkeypatch.setattr(feed, "shrink_and_enlarge", lambda img, s, q=None: (seen["shrink"].append((s, q)), img)[1])
    monkeypatch.setattr(feed, "blur", lambda img, a: (seen["blur"].append(a), img)[1])
    monkeypatch.setattr(feed, "jpeg", lambda img, q: (seen["jpeg"].append(q), img)[1])
    img = np.zeros((256, 256, 3), np.uint8)
    img[:, :128] = 255  # bright left half: a flip shows
    n, flips = 2000, 0
    for i in range(n):
        flips += feed.chat_augment(img, np.random.default_rng([7, i]), 60, 95, 0.06, 0.55, 0.25)[0, 0, 0] == 0
    share = {k: len(v) / n for k, v in seen.items()}
    # Within ~3 standard deviations (fixed seeds: measured .493, .691, .504, .187, .585, .278).
    assert abs(flips / n - 0.5) < 0.033 and abs(share["jitter"] - 0.7) < 0.03 and abs(share["shrink"] - 0.5) < 0.033
    assert abs(share["blur"] - 0.2) < 0.027 and abs(share["jpeg"] - 0.6) < 0.033
    sides = [s for s, _ in seen["shrink"]]
    assert min(sides) >= round(256 * 0.55) and max(sides) <= 256 and max(sides) - min(sides) > 100
    small = [q for _, q in seen["shrink"] if q is not None]
    assert abs(len(small) / len(sides) - 0.25) < 0.04
    # tf.image.random_jpeg_quality draws from [lo, hi): 95 never comes up, 60 and 94 do.
    assert set(seen["jpeg"]) == set(range(60, 95)) and set(small) <= set(range(60, 95))
    assert 0.3 <= min(seen["blur"]) and max(seen["blur"]) < 1.0


def test_chat_augment_changes_the_faces_it_should(faces):
    """Real ops: a face comes out as it went in (or mirrored) only when no rescale, blur or JPEG touched it."""
    untouched = 0
    for i in range(60):
        out = feed.chat_augment(faces[0], np.random.default_rng([11, i]), 60, 95)
        untouched += np.array_equal(out, faces[0]) or np.array_equal(out, faces[0][:, ::-1])
        assert out.dtype == np.uint8 and out.shape == (256, 256, 3) and out.flags.c_contiguous
    assert 0.04 <= untouched / 60 <= 0.35  # expected 0.5 * 0.8 * 0.4 = 0.16


# ---------------------------------------------------------------- the Keras datasets

@pytest.fixture
def split(data_dir, tmp_path):
    """12 + 12 dataset faces in the 140k layout."""
    for cls in ("real", "fake"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for p in sorted((data_dir / "train" / cls).glob("*.jpg"))[:12]:
            shutil.copy(p, tmp_path / "train" / cls / p.name)
    return scan_split(tmp_path, "train")


def _which(x: np.ndarray, decoded: np.ndarray) -> list[int]:
    """The file index of each unaugmented image of a batch (exact match)."""
    flat = decoded.reshape(len(decoded), -1).astype(np.float32)
    return [int(np.flatnonzero((flat == img.reshape(-1)).all(axis=1))[0]) for img in x]


def _epoch(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [ds[i] for i in range(len(ds))]


def test_train_feed_batches_shuffles_and_reproduces(split):
    decoded = np.stack([feed.decode(p) for p in split.paths])
    ds = feed.train_feed(split, 5, "none", (60, 95), seed=3)
    assert len(ds) == 5  # 24 faces
    epochs = []
    for _ in range(2):
        batches = _epoch(ds)
        assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 4]
        for x, y in batches:
            assert x.dtype == np.uint8 and x.shape[1:] == (256, 256, 3) and y.dtype == np.float32
            assert y.shape == (len(x), 1) and x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.rint(x))
        order = [i for x, _ in batches for i in _which(x, decoded)]
        assert sorted(order) == list(range(24))  # every face once an epoch, with its own label
        assert [float(y) for _, ys in batches for y in ys[:, 0]] == [float(split.labels[i]) for i in order]
        epochs.append(order)
        ds.on_epoch_end()
    assert epochs[0] != epochs[1]
    again = feed.train_feed(split, 5, "none", (60, 95), seed=3)
    assert [i for x, _ in _epoch(again) for i in _which(x, decoded)] == epochs[0]
    other = feed.train_feed(split, 5, "none", (60, 95), seed=4)
    assert [i for x, _ in _epoch(other) for i in _which(x, decoded)] != epochs[0]


def test_uint8_batches_get_the_answers_float32_batches_get(split):
    """The feed hands Keras uint8 (a quarter of the bytes between processes); the model's input casts them."""
    from trainer.architectures import build_model
    from trainer.config import TrainConfig
    x, _ = feed.train_feed(split, 6, "chat", (60, 95), seed=1)[0]
    model = build_model(TrainConfig(arch="tiny", image_size=32, weights="none").resolved())
    want = np.asarray(model(x.astype(np.float32), training=False))
    assert want.std() > 0  # six faces, six answers
    np.testing.assert_array_equal(np.asarray(model.predict_on_batch(x)), want)


@pytest.mark.parametrize("processes", [True, False])
def test_train_feed_is_the_same_whatever_the_workers(split, processes):
    """Batches made by 2 workers, processes or threads (Keras's own enqueuer, two epochs), equal those made
    in-process."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    kw = dict(augment="chat", jpeg_quality=(60, 95), seed=5, framing=0.06, small_jpeg=0.3,
              align=np.tile(_params(_landmarks(5)), (len(split), 1)), realign_share=0.5, foreign_share=0.5)
    one = feed.train_feed(split, 8, **kw)
    two = feed.train_feed(split, 8, workers=2, processes=processes, **kw)
    assert (two.workers, two.use_multiprocessing, one.use_multiprocessing) == (2, processes, False)
    adapter = PyDatasetAdapter(two, shuffle=False)
    for epoch in range(2):
        adapter.on_epoch_begin()
        got = list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        want = _epoch(one)
        one.on_epoch_end()
        assert len(got) == len(want) == 3
        for (gx, gy), (wx, wy) in zip(got, want):
            assert np.array_equal(gx, wx) and np.array_equal(gy, wy)
    assert two.epoch == one.epoch == 2


def test_train_feed_realigns_its_share_with_foreign_backgrounds(split, monkeypatch):
    calls = []
    monkeypatch.setattr(feed, "decode", lambda path: np.zeros((256, 256, 3), np.uint8))
    monkeypatch.setattr(feed, "realign", lambda img, params, background=None: (calls.append(
        (params.copy(), background is not None)), img)[1])
    align = np.tile(KEEP_FRAMING, (len(split), 1))
    align[3] = _params(_landmarks(4))
    ds = feed.train_feed(split, 24, "none", (60, 95), seed=0, align=align, realign_share=0.4, foreign_share=0.25)
    for _ in range(50):
        ds[0]
        ds.on_epoch_end()
    assert abs(len(calls) / (50 * 24) - 0.4) < 0.04
    assert abs(np.mean([f for _, f in calls]) - 0.25) < 0.06
    assert any(np.array_equal(p, align[3]) for p, _ in calls)  # each face with its own params
    calls.clear()
    ds = feed.train_feed(split, 24, "none", (60, 95), seed=0, align=None, realign_share=0.4)
    ds[0]
    assert calls == []  # no landmarks, no re-alignment


def test_train_feed_shows_its_share_of_realigned_faces_as_photo_faces(split, monkeypatch):
    shown = []
    monkeypatch.setattr(feed, "decode", lambda path: np.zeros((256, 256, 3), np.uint8))
    monkeypatch.setattr(feed, "realign", lambda img, params, background=None: img + 1)
    monkeypatch.setattr(feed, "photo_face", lambda img, rng: (shown.append(img[0, 0, 0]), img)[1])
    align = np.tile(_params(_landmarks(4)), (len(split), 1))
    ds = feed.train_feed(split, 24, "none", (60, 95), seed=0, align=align, realign_share=0.5, photo_faces=0.5)
    for _ in range(50):
        ds[0]
        ds.on_epoch_end()
    assert abs(len(shown) / (50 * 24) - 0.25) < 0.04 and set(shown) == {1}  # re-aligned faces only
    # Off (the default), no draw is taken for it: an earlier recipe's batches stay what they were.
    kw = dict(augment="chat", jpeg_quality=(60, 95), seed=3, align=align, realign_share=0.5)
    assert np.array_equal(feed.train_feed(split, 24, **kw)[0][0],
                          feed.train_feed(split, 24, photo_faces=0.0, **kw)[0][0])
    assert not np.array_equal(feed.train_feed(split, 24, **kw)[0][0],
                              feed.train_feed(split, 24, photo_faces=0.5, **kw)[0][0])


def test_an_undecodable_file_is_left_out_with_a_warning(split, caplog):
    bad = Path(split.paths[0]).parent / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # a JPEG's magic number, then garbage
    split = scan_split(bad.parent.parent.parent, "train")
    assert str(bad) in split.paths  # the header check lets it through, as in training
    with caplog.at_level(logging.WARNING, logger="trainer.feed"):
        x, y = feed.train_feed(split, len(split), "chat", (60, 95), seed=0)[0]
        ex, ey = feed.eval_feed(split, len(split))[0]
    assert len(x) == len(y) == len(ex) == len(ey) == len(split) - 1
    assert sum(r.name == "trainer.feed" and "zz_corrupt.jpg" in r.getMessage() for r in caplog.records) == 2


def test_eval_feed_is_ordered_as_is_then_realigned(split):
    align = np.tile(KEEP_FRAMING, (len(split), 1))
    has = [0, 5, 17]
    for i, deg in zip(has, (3, -6, 9)):
        align[i] = _params(_landmarks(deg, 1.05, (2, -3)))
    ds = feed.eval_feed(split, 10, align=align)
    assert len(ds) == 3 and feed.eval_feed(split, 10).__len__() == 3  # 27 and 24 items
    batches = _epoch(ds)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])[:, 0]
    assert list(y) == [float(v) for v in split.labels] + [float(split.labels[i]) for i in has]
    for k, p in enumerate(split.paths):  # as decoded, nothing else
        assert np.array_equal(x[k], feed.decode(p))
    for k, i in enumerate(has):
        tf_realigned = data.realign(data._decode(split.paths[i], 0)[0], align[i]).numpy()
        assert np.array_equal(x[len(split) + k], feed.realign(feed.decode(split.paths[i]), align[i]))
        assert _diff(x[len(split) + k], tf_realigned).mean() < 1.5  # only the JPEG decoders differ
    assert _epoch(ds)[1][0].tobytes() == batches[1][0].tobytes()  # no randomness


def test_feed_needs_no_tensorflow():
    code = "import sys, trainer.feed; sys.exit('tensorflow' in sys.modules)"
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=60).returncode == 0
