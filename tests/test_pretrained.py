"""The ImageNet-pretrained backbone (converted from a pip package without torch) and train = serve framing."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from trainer import efficientnet_lite as lite
from trainer.torch_weights import MAGIC_NUMBER, PROTOCOL_VERSION, UnsafeWeightsFile, read_state_dict

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {504, 967, 968}  # coffee mug, espresso, cup
ROCKETS = {657, 744, 812}  # missile, projectile, space shuttle


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """A private Keras cache, so the test sees the conversion happen (and not a cache from an earlier run)."""
    home = tmp_path_factory.mktemp("keras-home")
    old = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("KERAS_HOME", None)
    else:
        os.environ["KERAS_HOME"] = old


def _top5(model, rgb: np.ndarray, size: int) -> list[int]:
    from PIL import Image
    im = Image.fromarray(rgb).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    x = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), np.float32)[None]
    return np.argsort(-np.asarray(model(x))[0])[:5].tolist()


@pytest.mark.parametrize("variant,size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_converted_backbone_is_the_imagenet_model(keras_home, variant, size):
    from skimage import data
    model = lite.build_imagenet_classifier(variant, size)
    cache = lite.cache_path(variant)
    assert cache.is_file() and str(cache).startswith(str(keras_home))  # converted once, cached
    cat, cup, rocket = (_top5(model, img, size) for img in (data.chelsea(), data.coffee(), data.rocket()))
    assert cat[0] in CATS, cat
    assert cup[0] in CUPS, cup
    assert set(rocket) & ROCKETS, rocket
    # The second build reads the cache and gives the very same network.
    again = lite.build_imagenet_classifier(variant, size)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    params = sum(int(np.prod(w.shape)) for w in model.get_weights())
    assert params > {"efficientnet_lite0": 4_600_000, "efficientnet_lite2": 6_000_000}[variant]


def test_classifier_starts_from_imagenet_with_frozen_first_blocks(keras_home):
    from trainer.architectures import build_model
    from trainer.config import TrainConfig
    c = TrainConfig(arch="efficientnet_lite0", image_size=96, freeze_blocks=3, models_dir="x").resolved()
    assert c.weights == "imagenet"  # the pretrained recipe is the default for this arch
    model = build_model(c)
    ref = lite.imagenet_weights("efficientnet_lite0")
    np.testing.assert_array_equal(model.get_layer("b5_dw").get_weights()[0], ref["b5_dw"][0])
    assert not model.get_layer("b2_project").trainable and model.get_layer("b3_project").trainable
    assert not model.get_layer("stem_conv").trainable
    out = np.asarray(model(np.zeros((2, 256, 256, 3), np.float32)))
    assert out.shape == (2, 1) and np.all((out > 0) & (out < 1))


def _legacy_file(state_pickle: bytes, keys: list[str] = (), storages: bytes = b"") -> bytes:
    head = pickle.dumps(MAGIC_NUMBER) + pickle.dumps(PROTOCOL_VERSION) + pickle.dumps({"little_endian": True})
    return head + state_pickle + pickle.dumps(list(keys)) + storages


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/zhenjia-pwned",))


def test_reader_refuses_a_pickle_naming_any_other_class(tmp_path):
    marker = "/tmp/zhenjia-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    with pytest.raises(UnsafeWeightsFile, match="refusing to load"):
        read_state_dict(_legacy_file(pickle.dumps({"w": _Evil()}, protocol=2)))
    assert not os.path.exists(marker)
    # Any class outside the allow-list, even a harmless-looking one, is refused by name.
    with pytest.raises(UnsafeWeightsFile, match="collections.Counter"):
        read_state_dict(_legacy_file(pickle.dumps({"w": __import__("collections").Counter()}, protocol=2)))


def test_reader_refuses_files_that_are_not_legacy_state_dicts(tmp_path):
    with pytest.raises(UnsafeWeightsFile, match="zip"):
        read_state_dict(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(UnsafeWeightsFile, match="magic"):
        read_state_dict(pickle.dumps(12345) + pickle.dumps(1001))
    with pytest.raises(UnsafeWeightsFile):
        read_state_dict(b"not a pickle at all")
    real = lite.package_weights_file("efficientnet_lite0").read_bytes()
    with pytest.raises(UnsafeWeightsFile, match="truncated"):
        read_state_dict(real[: len(real) - 1000])


def test_reader_returns_the_tensors_of_the_package_file():
    sd = read_state_dict(lite.package_weights_file("efficientnet_lite0"))
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_conv_stem.weight"].dtype == np.float32
    assert sd["_fc.weight"].shape == (1000, 1280)
    var = sd["_bn0.running_var"]  # real statistics (a few dead channels are 0), not a misread storage
    assert np.all(var >= 0) and np.mean(var > 0) > 0.8 and 0.1 < float(np.median(var)) < 100


def test_training_realignment_is_the_workers_crop():
    """Train = serve: the tf.data re-alignment crops exactly what the worker's align_face crops."""
    from PIL import Image
    from skimage import data

    from inference_worker.detector import Detector
    from inference_worker.faces import crop_quad, ffhq_quad
    from trainer.data import realign
    from trainer.framing import LANDMARKS, align_params
    photo = Image.fromarray(data.astronaut()).convert("RGB")  # 512 px, one face
    face = Detector().detect(photo)[0]
    # A 256-px face picture around the detected face, like the dataset's files, with its landmarks.
    x0, y0 = face.box[0] - 40, face.box[1] - 60
    crop = photo.crop((x0, y0, x0 + 256, y0 + 256))
    lm = np.array([[face.landmarks[n][0] - x0, face.landmarks[n][1] - y0] for n in LANDMARKS], np.float32)
    served = np.asarray(crop_quad(crop, ffhq_quad(dict(zip(LANDMARKS, map(tuple, lm)))), 256), np.float32)
    trained = np.asarray(realign(np.asarray(crop), align_params(lm[None])[0]), np.float32)
    inner = (slice(24, -24), slice(24, -24))  # borders: Pillow and TF pad a quad outside the picture differently
    assert np.abs(served - trained)[inner].mean() < 1.5
    assert np.abs(served - np.asarray(crop, np.float32))[inner].mean() > 10  # it really did move the face


def test_training_realignment_can_surround_the_face_with_a_foreign_background():
    """A crop that reaches past the face's square sees noise there, not the face's mirror image; inside, the same."""
    import tensorflow as tf

    from trainer.data import realign
    rng = np.random.default_rng(0)
    face = np.repeat(np.linspace(0, 255, 256, dtype=np.float32)[None, :, None], 256, 0).repeat(3, 2).astype(np.uint8)
    face[:, :, 1] = rng.integers(100, 110, (256, 256))  # a smooth face-like picture
    a = 1.1  # zoom out 10 % around the centre: ~13 px past each side
    params = tf.constant([a, 0, 128 * (1 - a), 0, a, 128 * (1 - a), 0, 0], tf.float32)
    mirrored = np.asarray(realign(face, params), np.float32)
    foreign = np.asarray(realign(face, params, tf.constant(True)), np.float32)
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(mirrored - foreign)[inner].max() <= 1
    border = np.concatenate([np.abs(mirrored - foreign)[:8].ravel(), np.abs(mirrored - foreign)[-8:].ravel()])
    assert border.mean() > 20  # the surroundings really are something else
    assert np.abs(mirrored - np.asarray(realign(face, params, tf.constant(False)), np.float32)).max() == 0


def test_pretrained_training_with_detector_framing(tiny_dataset_dir, tmp_path, keras_home):
    """A tiny EfficientNet-Lite run through the real trainer: landmarks cached, both framings calibrated."""
    from trainer.config import TrainConfig
    from trainer.training import train
    c = TrainConfig(data_dir=str(tiny_dataset_dir), name="lite-tiny", arch="efficientnet_lite0", image_size=64,
                    epochs=1, batch_size=16, limit_per_class=6, models_dir=str(tmp_path / "models"),
                    checkpoints_dir=str(tmp_path / "ckpt"), framing_workers=1, verbose=0, evaluate_test=False)
    out = train(c)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["arch"] == "efficientnet_lite0" and meta["train_config"]["weights"] == "imagenet"
    assert meta["calibration"]["fitted_on"].startswith("valid as sent")
    # The same valid faces pasted into photos, found and cut out by the worker, calibrate re-aligned faces.
    assert meta["calibration_realigned"]["fitted_on"].startswith("valid faces pasted into photos")
    left_out = meta["calibration_realigned"]["left_out"]
    assert meta["metrics"]["valid_realigned"]["n"] + left_out["too_small"] + left_out["not_found"] == 12
    assert meta["metrics"]["valid"]["n"] == 12 and meta["decision_realigned"]["unsure_band"]
    cached = list((tmp_path / "ckpt" / "framing").glob("landmarks-*.npy"))
    assert len(cached) == 2  # train and valid, kept for the next run
    lm = np.load(next(p for p in cached if "-train-" in p.name))
    assert lm.shape == (12, 5, 2) and np.isfinite(lm).mean() > 0.9
    # Dataset faces are FFHQ-aligned: the detected eyes sit near FFHQ's eye line (y ~ 0.47 of the side).
    assert abs(np.nanmedian(lm[:, :2, 1]) / 256 - 0.47) < 0.06
    from inference_worker.detector import DETECTOR_ID
    assert meta["calibration_realigned"]["detector"] == DETECTOR_ID
    # After a detector change the photo calibration is refitted on valid alone (`calibrate-photos`); with the
    # same detector and seed it gives back what training fitted.
    fitted = meta["calibration_realigned"]["temperature"], meta["decision_realigned"]
    meta["calibration_realigned"]["temperature"] = 9.0
    del meta["decision_realigned"]
    (out / "metadata.json").write_text(json.dumps(meta))
    from trainer.cli import main
    assert main(["calibrate-photos", "--model", str(out), "--data-dir", str(tiny_dataset_dir)]) == 0
    again = json.loads((out / "metadata.json").read_text())
    assert (again["calibration_realigned"]["temperature"], again["decision_realigned"]) == fitted
    assert again["calibration_realigned"]["calibrated_at"] and again["version"] == meta["version"]
    assert main(["calibrate-photos", "--model", str(tmp_path / "nothing-here")]) == 2
    # bench/photo_sizes.py bins the same faces by the size each was pasted at: one size per face kept, in order.
    from trainer.data import scan_split
    from trainer.evaluation import load_model_folder
    from trainer.framing import FACE_PX, _photo, predict_photos
    split, sizes = scan_split(tiny_dataset_dir, "valid", 6), []
    _, y, left_out = predict_photos(load_model_folder(out)[0], split, 1337, sizes=sizes)
    assert len(sizes) == len(y) == 12 - sum(left_out.values())
    assert all(FACE_PX[0] <= s <= FACE_PX[1] for s in sizes) and len(set(sizes)) > 1
    pasted = iter(_photo(path, 1337)[3] for path in split.paths)
    assert all(s in pasted for s in sizes)  # each face's own canvas size, in the split's order


def test_framing_landmarks_are_cached_per_detector(tmp_path, monkeypatch):
    """Landmarks of another detector are another framing: never read back as this one's."""
    import inference_worker.detector as detector
    from trainer.data import Split
    from trainer.framing import cache_file
    split = Split("train", ["real/a.jpg", "fake/b.jpg"], [0, 1], {"real": 1, "fake": 1})
    ours = cache_file(tmp_path, split, 0)
    monkeypatch.setattr(detector, "DETECTOR_ID", "another-detector")
    assert cache_file(tmp_path, split, 0) != ours
