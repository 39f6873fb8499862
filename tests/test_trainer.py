"""Trainer: tiny real training runs, the saved-model contract, dataset errors, calibration math, CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_model import TINY_MODEL, TINY_MODEL_2, make_tiny_dataset
from trainer.calibration import (apply_temperature, choose_threshold, choose_unsure_band,
                                 expected_calibration_error, fit_temperature)
from trainer.data import DatasetError, scan_split

REPO = Path(__file__).resolve().parent.parent


def _some_images(tiny_dataset_dir: Path, n: int = 6) -> np.ndarray:
    from trainer.data import load_image_pillow
    paths = sorted((tiny_dataset_dir / "test" / "real").iterdir())[:n // 2] + \
        sorted((tiny_dataset_dir / "test" / "fake").iterdir())[:n // 2]
    return np.stack([load_image_pillow(str(p)) for p in paths]).astype(np.float32)


# ------------------------------------------------------------------ the saved model contract

def test_tiny_model_folder_follows_the_contract(tiny_models_dir):
    folder = tiny_models_dir / TINY_MODEL
    meta = json.loads((folder / "metadata.json").read_text())
    for key in ("name", "version", "arch", "input_size", "image_size", "class_names", "positive_class",
                "calibration", "decision", "metrics", "data_fingerprint", "train_config",
                "library_versions", "created_at"):
        assert key in meta, key
    assert meta["name"] == TINY_MODEL and meta["input_size"] == 256 and meta["class_names"] == ["real", "fake"]
    assert meta["positive_class"] == "fake"
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", meta["version"])
    assert meta["calibration"]["method"] == "temperature" and meta["calibration"]["temperature"] > 0
    lo, hi = meta["decision"]["unsure_band"]
    assert 0 <= lo <= meta["decision"]["threshold"] <= hi <= 1
    assert set(meta["metrics"]) == {"valid", "test", "test_recompressed"}
    assert meta["train_config"]["arch"] == "tiny"
    for png in ("training_curves.png", "roc.png", "confusion_valid.png", "confusion_test.png"):
        assert (folder / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "report" / "metrics.json").read_text())["version"] == meta["version"]
    assert json.loads((tiny_models_dir / "promoted.json").read_text())["name"] == TINY_MODEL
    other = json.loads((tiny_models_dir / TINY_MODEL_2 / "metadata.json").read_text())
    assert other["version"] != meta["version"]


def test_saved_model_loads_without_the_trainer_and_gives_identical_predictions(tiny_models_dir, tiny_dataset_dir,
                                                                               tmp_path):
    import keras
    from trainer.config import TrainConfig
    from trainer.data import scan_split as scan
    from trainer.training import _strategy_and_precision, fit, serving_model
    c = TrainConfig(data_dir=str(tiny_dataset_dir), arch="tiny", image_size=32, epochs=1, batch_size=16,
                    verbose=0, flip_average=True).resolved()
    strategy, _ = _strategy_and_precision(c)
    model, history, _ = fit(c, scan(tiny_dataset_dir, "train"), scan(tiny_dataset_dir, "valid"), tmp_path / "ck",
                            strategy)
    assert len(history["loss"]) == 1
    path = tmp_path / "model.keras"
    served = serving_model(c, model)
    served.save(path)
    x = _some_images(tiny_dataset_dir)
    before = np.asarray(served(x, training=False))
    # The served model is the network's P(fake) averaged over the face and its mirror image.
    expected = (np.asarray(model(x, training=False)) + np.asarray(model(x[:, :, ::-1], training=False))) / 2
    np.testing.assert_allclose(before, expected, rtol=1e-5, atol=1e-6)
    # A fresh interpreter that never imports `trainer`: what the inference worker does.
    code = ("import sys, numpy as np, keras, inference_worker.layers; m = keras.models.load_model(sys.argv[1]); "
            "x = np.load(sys.argv[2]); np.save(sys.argv[3], np.asarray(m(x, training=False))); "
            "print('trainer' in sys.modules)")
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("False")
    after = np.load(tmp_path / "y.npy")
    assert before.shape == (6, 1) and after.shape == (6, 1)
    np.testing.assert_array_equal(before, after)
    assert ((after >= 0) & (after <= 1)).all()
    in_process = np.asarray(keras.models.load_model(path)(x, training=False))
    np.testing.assert_array_equal(before, in_process)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_from_its_backup(tiny_dataset_dir, tmp_path):
    import keras
    from trainer.config import TrainConfig
    from trainer.data import scan_split as scan
    from trainer.training import _strategy_and_precision, fit

    c = TrainConfig(data_dir=str(tiny_dataset_dir), arch="tiny", image_size=32, epochs=3, batch_size=16,
                    verbose=0, patience=99).resolved()
    strategy, _ = _strategy_and_precision(c)
    train, valid = scan(tiny_dataset_dir, "train"), scan(tiny_dataset_dir, "valid")
    ck = tmp_path / "ck"
    import trainer.training as tr
    orig = keras.callbacks.CSVLogger

    class CSVThenInterrupt(orig):  # rides along the real callbacks list to stop after epoch 2
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == 1:
                raise Interrupted("power cut")

    keras.callbacks.CSVLogger = CSVThenInterrupt
    try:
        with pytest.raises(Interrupted):
            fit(c, train, valid, ck, strategy)
    finally:
        keras.callbacks.CSVLogger = orig
    assert (ck / "backup").is_dir()
    _, history, _ = tr.fit(c, train, valid, ck, strategy)
    # Two epochs from the first run, the third from the resumed one: the curve continues.
    assert len(history["loss"]) == 3


# ------------------------------------------------------------------ dataset errors

def test_missing_split_folder(tmp_path, data_dir):
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=2, splits=("train",))
    with pytest.raises(DatasetError, match="missing split folder .*valid"):
        scan_split(root, "valid")
    with pytest.raises(DatasetError, match="does not exist"):
        scan_split(tmp_path / "nowhere", "train")


def test_missing_class_folder(tmp_path, data_dir):
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=2, splits=("train",))
    shutil.rmtree(root / "train" / "fake")
    with pytest.raises(DatasetError, match="missing class folder .*fake"):
        scan_split(root, "train")


def test_empty_class(tmp_path, data_dir):
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=2, splits=("train",))
    for p in (root / "train" / "real").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="has no readable images"):
        scan_split(root, "train")


def test_unreadable_images_are_skipped_and_counted(tmp_path, data_dir, caplog):
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=4, splits=("train",))
    (root / "train" / "real" / "zz-not-an-image.jpg").write_bytes(b"hello, this is text" * 10)
    (root / "train" / "fake" / "zz-empty.jpg").write_bytes(b"")
    with caplog.at_level("WARNING", logger="trainer.data"):
        split = scan_split(root, "train")
    assert len(split) == 8 and len(split.skipped) == 2
    assert "skipped_unreadable=2" in caplog.text


def test_truncated_image_is_dropped_by_the_pipeline_not_a_crash(tmp_path, data_dir):
    from trainer.data import predict_split, train_dataset
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=3, splits=("train",))
    victim = sorted((root / "train" / "real").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])  # a JPEG header with the scan data cut off
    split = scan_split(root, "train")
    assert len(split) == 6  # the header looks fine; decoding is what fails
    batches = list(train_dataset(split, 4, "chat", (60, 95), cache=True, seed=0))
    assert sum(int(x.shape[0]) for x, _ in batches) == 5
    assert batches[0][0].shape[1:] == (256, 256, 3) and batches[0][0].dtype.name == "float32"

    class Half:
        def __call__(self, x, training=False):
            return np.full((len(x), 1), 0.5)

    _, y = predict_split(Half(), split)
    assert y.size == 5


def test_photo_faces_blur_only_realigned_faces_in_the_tf_pipeline(tmp_path, data_dir):
    """--photo-faces 1 shows every re-aligned face at a photo face's size: less detail than re-aligned alone."""
    from trainer.config import TrainConfig
    from trainer.data import KEEP_FRAMING, train_dataset
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=4, splits=("train",))
    split = scan_split(root, "train")
    align = np.tile(KEEP_FRAMING, (len(split), 1))  # identity "re-alignment": the face as it is

    def detail(**kw):
        x = np.concatenate([b.numpy() for b, _ in train_dataset(split, 4, "none", (60, 95), True, 0, align=align,
                                                                  realign_share=1.0, **kw)])
        return np.abs(np.diff(x, axis=2)).mean()
    assert detail(photo_faces=1.0) < 0.8 * detail()
    with pytest.raises(ValueError, match="--photo-faces must be in 0..1"):
        TrainConfig(arch="tiny", photo_faces=1.5).resolved()


def test_unbalanced_classes_are_reported_and_weighted(tmp_path, data_dir, caplog):
    from trainer.data import balance_report, class_weights
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=6, splits=("train",))
    for p in sorted((root / "train" / "fake").iterdir())[:4]:
        p.unlink()
    with caplog.at_level("WARNING", logger="trainer.data"):
        split = scan_split(root, "train")
    assert "unbalanced classes" in caplog.text
    assert balance_report(split)["unbalanced"] is True
    w = class_weights(split)
    assert w is not None and w[1] == pytest.approx(3 * w[0])


def test_cli_reports_a_bad_dataset_in_one_line(tmp_path, data_dir):
    root = make_tiny_dataset(data_dir, tmp_path / "d", per_class=2, splits=("train",))
    out = subprocess.run([sys.executable, "-m", "trainer", "--data-dir", str(root), "--arch", "tiny",
                          "--models-dir", str(tmp_path / "m")], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 2
    assert "error: missing split folder" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ calibration math

def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)  # truth: well calibrated at T=1
    overconfident = 1 / (1 + np.exp(-2.5 * z))  # the model's logits are 2.5x too large
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(overconfident, y)
    after = expected_calibration_error(apply_temperature(overconfident, t), y)
    assert before > 0.05 and after < 0.02


def test_ece_by_hand_and_temperature_formula():
    # Two bins of confidence: 0.9 (4 predictions, 3 right) and 0.6 (2 predictions, both right).
    p = np.array([0.9, 0.9, 0.1, 0.1, 0.6, 0.4])
    y = np.array([1, 1, 0, 1, 1, 0])
    assert expected_calibration_error(p, y) == pytest.approx(4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6))
    assert apply_temperature(np.array([0.5]), 3.0)[0] == pytest.approx(0.5)
    raw = np.array([0.8])
    expect = 1 / (1 + np.exp(-np.log(0.8 / 0.2) / 2.0))
    assert apply_temperature(raw, 2.0)[0] == pytest.approx(expect)


def test_threshold_and_unsure_band_are_chosen_on_the_data():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(500, int), np.ones(500, int)]
    p = np.clip(np.r_[rng.normal(0.3, 0.15, 500), rng.normal(0.7, 0.15, 500)], 0, 1)
    t = choose_threshold(p, y)
    assert 0.45 <= t <= 0.55
    band, stats = choose_unsure_band(p, y, t, target_accuracy=0.95)
    assert band[0] < t < band[1]
    sure = (p < band[0]) | (p > band[1])
    assert ((p[sure] >= t) == y[sure]).mean() >= 0.95
    assert stats["unsure_share_valid"] == pytest.approx(1 - sure.mean(), abs=1e-3)
    # A useless model may not hide behind an unsure band covering most images.
    band, stats = choose_unsure_band(rng.uniform(size=1000), y, 0.5, target_accuracy=0.95)
    assert stats["unsure_share_valid"] <= 0.5


def test_an_accurate_model_still_gets_an_unsure_band_under_two_to_one_odds():
    # 99 % right at the threshold alone: the target needs no band, but a coin flip is still not an answer.
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(500, int), np.ones(500, int)]
    p = 1 / (1 + np.exp(-np.r_[rng.normal(-5, 1.5, 500), rng.normal(5, 1.5, 500)]))
    p[:5], p[500:505] = 0.45, 0.55  # a few faces right at the threshold
    band, stats = choose_unsure_band(p, y, 0.5, target_accuracy=0.98)
    assert band[0] <= 1 / 3 and band[1] >= 2 / 3
    sure = (p < band[0]) | (p > band[1])
    assert stats["unsure_share_valid"] == pytest.approx(1 - sure.mean(), abs=1e-3) and stats["unsure_share_valid"] >= 0.01


def test_unsure_band_reaches_the_target_around_a_threshold_far_from_one_half():
    # Calibrated P(fake) that leans fake, with a few real faces the model is sure are fake: the best threshold
    # is ~0.77. A band symmetric in probability hits 1.0 on the fake side (every fake face unsure) and still
    # misses the target; symmetric in log-odds it reaches it, and most fakes keep their answer.
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(600, int), np.ones(600, int)]
    z_real = rng.normal(-2, 2.0, 600)
    z_real[:12] = rng.uniform(6, 10, 12)
    p = 1 / (1 + np.exp(-np.r_[z_real, rng.normal(5, 2.0, 600)]))
    t = choose_threshold(p, y)
    assert t > 0.7
    band, stats = choose_unsure_band(p, y, t, target_accuracy=0.98)
    assert band[0] < t < band[1] < 0.99
    sure = (p < band[0]) | (p > band[1])
    assert ((p[sure] >= t) == y[sure]).mean() >= 0.98 and stats["accuracy_when_sure_valid"] >= 0.98
    assert stats["unsure_share_valid"] < 0.2 and (p[y == 1] > band[1]).mean() > 0.8


def test_metrics_count_confident_mistakes_on_both_sides():
    from trainer.report import classification_metrics
    p = np.array([0.95, 0.90, 0.89, 0.05, 0.10, 0.11, 0.99, 0.01])
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])  # two reals at >= 90 % fake, two fakes at <= 10 % fake
    assert classification_metrics(p, y)["confidently_wrong"] == 0.5


def test_metrics_count_unsure_answers_with_the_band_the_worker_serves():
    # A band stored before the 2:1 floor ([0.5, 0.5]) is served as 1/3..2/3: `trainer evaluate` must report that.
    from trainer.report import classification_metrics
    p, y = np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 1, 0, 1])
    m = classification_metrics(p, y, 0.5, [0.5, 0.5])
    assert m["unsure_share"] == 0.5 and m["accuracy_when_sure"] == 1.0 and m["accuracy"] == 0.5


def test_log_loss_tells_apart_mistakes_the_confidently_wrong_count_cannot():
    from trainer.report import classification_metrics
    y = np.array([0, 0, 1, 1])
    mild = classification_metrics(np.array([0.91, 0.2, 0.8, 0.9]), y)   # one real answered 91 % fake
    wild = classification_metrics(np.array([0.999, 0.2, 0.8, 0.9]), y)  # the same real answered 99.9 % fake
    assert mild["accuracy"] == wild["accuracy"] and mild["confidently_wrong"] == wild["confidently_wrong"] == 0.25
    assert wild["log_loss"] > mild["log_loss"] + 1.0


# ------------------------------------------------------------------ CLI: promote, evaluate, preview, sweep

def test_soup_cli_averages_the_weights_and_calibrates_the_result(fresh_models_dir, tiny_dataset_dir):
    from trainer.evaluation import load_model_folder
    out = subprocess.run([sys.executable, "-m", "trainer", "soup", TINY_MODEL, TINY_MODEL_2, "--name", "tiny-soup",
                          "--models-dir", str(fresh_models_dir), "--data-dir", str(tiny_dataset_dir)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    a, b = (load_model_folder(fresh_models_dir / n)[0].get_weights() for n in (TINY_MODEL, TINY_MODEL_2))
    soup, meta = load_model_folder(fresh_models_dir / "tiny-soup")
    for wa, wb, ws in zip(a, b, soup.get_weights(), strict=True):
        np.testing.assert_allclose(ws, (wa + wb) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0], b[0])  # two different runs, so the mean is neither of them
    assert [s.split("@")[0] for s in meta["soup_of"]] == [TINY_MODEL, TINY_MODEL_2]
    assert meta["name"] == "tiny-soup" and 0 < meta["decision"]["threshold"] < 1
    assert meta["calibration"]["temperature"] > 0 and meta["metrics"]["valid"]["n"] > 0
    assert json.loads((fresh_models_dir / "promoted.json").read_text())["name"] == TINY_MODEL  # not promoted


def test_ensemble_cli_averages_the_runs_answers_in_one_model_the_worker_serves(fresh_models_dir, tiny_dataset_dir):
    from inference_worker.classifier import Classifier
    from tests.conftest import valid_faces
    from trainer.evaluation import load_model_folder
    out = subprocess.run([sys.executable, "-m", "trainer", "ensemble", TINY_MODEL, TINY_MODEL_2, "--name", "tiny-ens",
                          "--models-dir", str(fresh_models_dir), "--data-dir", str(tiny_dataset_dir)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    x, _ = valid_faces(tiny_dataset_dir, 4)
    runs = [load_model_folder(fresh_models_dir / n)[0] for n in (TINY_MODEL, TINY_MODEL_2)]
    a, b = (np.asarray(m(x)).ravel() for m in runs)
    assert not np.allclose(a, b, atol=1e-3)  # two different runs, so the mean is neither of them
    ens, meta = load_model_folder(fresh_models_dir / "tiny-ens")
    np.testing.assert_allclose(np.asarray(ens(x)).ravel(), (a + b) / 2, rtol=1e-5, atol=1e-6)
    assert [s.split("@")[0] for s in meta["ensemble_of"]] == [TINY_MODEL, TINY_MODEL_2]
    assert meta["params"] == sum(m.count_params() for m in runs)
    assert meta["calibration"]["temperature"] > 0 and 0 < meta["decision"]["threshold"] < 1
    # One resize, then both networks: the LiteRT file exists and the worker serves the ensemble on it.
    assert meta["litert"]["resize_to"] == 32
    clf = Classifier(fresh_models_dir / "tiny-ens", runtime="litert")
    assert clf.runtime == "litert"
    np.testing.assert_allclose(clf.raw(x).ravel(), (a + b) / 2, atol=1e-4)


def test_ensemble_of_runs_at_different_sizes_gives_each_its_own_size_and_exports_to_litert(tiny_models_dir,
                                                                                        tiny_dataset_dir):
    import keras

    from tests.conftest import valid_faces
    from trainer.architectures import build_model
    from trainer.config import TrainConfig
    from trainer.evaluation import load_model_folder
    from trainer.litert_export import body, convert
    from trainer.soup import ensemble_of
    x, _ = valid_faces(tiny_dataset_dir, 3)
    big = load_model_folder(tiny_models_dir / TINY_MODEL)[0]  # 32 px
    keras.utils.set_random_seed(3)
    small = build_model(TrainConfig(arch="tiny", image_size=24, weights="none", models_dir=str(tiny_models_dir)
                                    ).resolved())
    ens = ensemble_of([big, small])
    # The shared first resize is the larger run's own; the smaller run looks at that, brought down to its size.
    at_32 = np.asarray(big.get_layer("resize")(x))
    seen_by_small = keras.layers.Resizing(24, 24)(at_32)
    small_net = body(small)[1]
    expected = (np.asarray(big(x)).ravel() + np.asarray(small_net(seen_by_small)).ravel()) / 2
    np.testing.assert_allclose(np.asarray(ens(x)).ravel(), expected, rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in ens.layers][1] == "resize"
    _, entry = convert(ens)  # raises when the LiteRT copy differs from the Keras model
    assert entry["resize_to"] == 32 and entry["max_abs_diff_vs_keras"] < 1e-4


def test_ensemble_cli_of_runs_at_different_sizes_records_the_shared_size_and_is_served(fresh_models_dir,
                                                                                     tiny_dataset_dir):
    from inference_worker.classifier import Classifier
    from trainer.config import TrainConfig
    from trainer.training import train
    train(TrainConfig(data_dir=str(tiny_dataset_dir), name="tiny-24", arch="tiny", image_size=24, epochs=1,
                      batch_size=16, models_dir=str(fresh_models_dir), verbose=0, framing="dataset",
                      checkpoints_dir=str(fresh_models_dir.parent / "ckpt"), evaluate_test=False))
    out = subprocess.run([sys.executable, "-m", "trainer", "ensemble", "tiny-24", TINY_MODEL, "--name", "tiny-mixed",
                          "--models-dir", str(fresh_models_dir), "--data-dir", str(tiny_dataset_dir)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    meta = json.loads((fresh_models_dir / "tiny-mixed" / "metadata.json").read_text())
    assert meta["train_config"]["image_size"] == 32 and meta["litert"]["resize_to"] == 32
    assert Classifier(fresh_models_dir / "tiny-mixed", runtime="litert").runtime == "litert"
    # A weight average of the same two runs is one network: it works at the first run's size, either way round.
    from trainer.evaluation import load_model_folder
    runs = [load_model_folder(fresh_models_dir / n)[0].get_weights() for n in ("tiny-24", TINY_MODEL)]
    for first, second, size in (("tiny-24", TINY_MODEL, 24), (TINY_MODEL, "tiny-24", 32)):
        out = subprocess.run([sys.executable, "-m", "trainer", "soup", first, second, "--name", f"soup-{size}",
                              "--models-dir", str(fresh_models_dir), "--data-dir", str(tiny_dataset_dir)],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        meta = json.loads((fresh_models_dir / f"soup-{size}" / "metadata.json").read_text())
        assert meta["train_config"]["image_size"] == size and meta["litert"]["resize_to"] == size
        soup = load_model_folder(fresh_models_dir / f"soup-{size}")[0]
        assert soup.get_layer("resize").output.shape[1] == size
        for w, a, b in zip(soup.get_weights(), *runs, strict=True):
            np.testing.assert_allclose(w, (a + b) / 2, rtol=1e-6, atol=1e-7)


def test_refresh_batchnorm_measures_the_statistics_of_the_network_as_it_is():
    import keras
    from trainer.soup import refresh_batchnorm
    rng = np.random.default_rng(0)
    inp = keras.Input((3,))
    frozen = keras.layers.BatchNormalization(trainable=False)
    dense = keras.layers.Dense(4)
    bn1, drop, bn2 = keras.layers.BatchNormalization(), keras.layers.Dropout(0.5), keras.layers.BatchNormalization()
    net = keras.Model(inp, keras.layers.Dense(1)(bn2(drop(bn1(dense(frozen(inp)))))))
    outer = keras.Input((3,))
    model = keras.Model(outer, net(outer))  # nested, as a served model's network is
    for bn in (frozen, bn1, bn2):
        bn.set_weights([rng.normal(size=w.shape).astype("float32") ** 2 + 0.5 for w in bn.get_weights()])
    frozen_before = [w.copy() for w in frozen.get_weights()]
    batches = [(rng.normal(2.0, 3.0, (8, 3)).astype("float32"), None) for _ in range(3)]
    assert refresh_batchnorm(model, batches, max_batches=2) == 2

    def train_bn(h, bn):  # a BatchNorm layer in training: normalized by the batch's own statistics
        g, b = bn.gamma.numpy(), bn.beta.numpy()
        return (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon) * g + b
    g0, b0, m0, v0 = frozen_before
    stats1, stats2 = [], []
    for x, _ in batches[:2]:  # the third batch is past max_batches
        h1 = dense((x - m0) / np.sqrt(v0 + frozen.epsilon) * g0 + b0).numpy()
        h2 = train_bn(h1, bn1)  # dropout off: with it, h2's variance would double
        stats1.append((h1.mean(0), h1.var(0)))
        stats2.append((h2.mean(0), h2.var(0)))
    for bn, stats in ((bn1, stats1), (bn2, stats2)):
        np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([m for m, _ in stats], 0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([v for _, v in stats], 0), rtol=1e-3,
                                   atol=1e-4)
    for a, b in zip(frozen.get_weights(), frozen_before, strict=True):
        np.testing.assert_array_equal(a, b)  # frozen in training, so frozen here
    assert drop.rate == 0.5 and bn1.momentum == bn2.momentum == 0.99  # put back as they were
    with pytest.raises(ValueError, match="no training batches"):
        refresh_batchnorm(model, [], max_batches=2)


def test_soup_refresh_bn_is_refused_where_it_cannot_work(fresh_models_dir, tiny_dataset_dir):
    for kind, extra, message in (("soup", ["--refresh-bn", "-1"], "must be 0 or more"),
                                 ("soup", ["--refresh-bn", "2"], "no trainable BatchNorm"),  # the tiny net has none
                                 ("ensemble", ["--refresh-bn", "2"], "unrecognized arguments")):
        out = subprocess.run([sys.executable, "-m", "trainer", kind, TINY_MODEL, TINY_MODEL_2, "--name", "bad-soup",
                              *extra, "--models-dir", str(fresh_models_dir), "--data-dir", str(tiny_dataset_dir)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (fresh_models_dir / "bad-soup").exists()


# A soup needs one network shape (any working size); an ensemble keeps each network whole, so only the arch must
# match.
@pytest.mark.parametrize("kind,field,value", [("soup", "activation", "gelu"), ("ensemble", "arch", "cnn")])
def test_soup_and_ensemble_refuse_models_that_cannot_be_combined(fresh_models_dir, tiny_dataset_dir, kind, field,
                                                                 value):
    other = fresh_models_dir / "tiny-other"
    shutil.copytree(fresh_models_dir / TINY_MODEL_2, other)
    meta = json.loads((other / "metadata.json").read_text())
    meta["train_config"][field] = value
    (other / "metadata.json").write_text(json.dumps(meta))
    for models, message in (([TINY_MODEL, "tiny-other"], f"differ in {field}"),
                            ([TINY_MODEL], "at least two models"),
                            ([TINY_MODEL, "no-such-model"], "no model at")):
        out = subprocess.run([sys.executable, "-m", "trainer", kind, *models, "--name", "bad-soup",
                              "--models-dir", str(fresh_models_dir), "--data-dir", str(tiny_dataset_dir)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (fresh_models_dir / "bad-soup").exists()


def test_promote_cli_rewrites_promoted_json(fresh_models_dir):
    out = subprocess.run([sys.executable, "-m", "trainer", "promote", TINY_MODEL_2, "--models-dir",
                          str(fresh_models_dir)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    promoted = json.loads((fresh_models_dir / "promoted.json").read_text())
    assert promoted["name"] == TINY_MODEL_2 and promoted["promoted_at"].endswith("Z")
    assert [p.name for p in fresh_models_dir.iterdir() if p.name.startswith(".")] == []  # no temp file left
    bad = subprocess.run([sys.executable, "-m", "trainer", "promote", "no-such-model", "--models-dir",
                          str(fresh_models_dir)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "cannot promote 'no-such-model'" in bad.stderr
    assert json.loads((fresh_models_dir / "promoted.json").read_text())["name"] == TINY_MODEL_2


def test_evaluate_plain_and_recompressed(tiny_models_dir, tiny_dataset_dir, tmp_path, capsys):
    from trainer.cli import main
    for extra in ([], ["--recompress"]):
        js = tmp_path / f"m{len(extra)}.json"
        assert main(["evaluate", TINY_MODEL, "--models-dir", str(tiny_models_dir), "--data-dir",
                     str(tiny_dataset_dir), "--json", str(js), *extra]) == 0
        m = json.loads(js.read_text())
        assert m["n"] == 32 and 0 <= m["accuracy"] <= 1 and sum(map(sum, m["confusion_matrix"])) == 32
    out = capsys.readouterr().out
    assert "recompressed(1280px,q85)" in out and "roc_auc=" in out and "ece=" in out


def test_recompress_like_telegram_caps_the_long_side_and_reencodes():
    import io
    from PIL import Image
    from trainer.data import recompress_like_telegram
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), (200, 30, 30)).save(buf, format="PNG")
    out = recompress_like_telegram(buf.getvalue())
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "JPEG" and im.size == (1280, 640)


def test_chat_augmentation_degrades_but_keeps_shape(data_dir):
    import tensorflow as tf
    from trainer.data import chat_augment
    img = tf.io.decode_jpeg(tf.io.read_file(str(sorted((data_dir / "valid" / "fake").iterdir())[0])))
    tf.random.set_seed(3)
    outs = [chat_augment(img, 60, 95).numpy() for _ in range(6)]
    assert all(o.shape == (256, 256, 3) and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, img.numpy()) for o in outs) >= 5


def test_small_jpeg_compresses_before_enlarging_as_a_forwarded_photo_is(data_dir):
    """JPEG'd at 64 px then enlarged 4x, a face has no 8-px block grid at 256 px (its blocks are magnified)."""
    import tensorflow as tf
    from trainer.data import chat_augment, shrink_and_enlarge
    img = tf.io.decode_jpeg(tf.io.read_file(str(sorted((data_dir / "valid" / "real").iterdir())[0])))
    plain = shrink_and_enlarge(img, 64).numpy().astype(np.float64)

    def grid8(out):  # how much stronger the column steps of the JPEG error are on the 8-px block edges
        step = np.abs(np.diff(out.numpy().astype(np.float64) - plain, axis=1)).mean(axis=(0, 2))
        return step[7::8].mean() / step.mean()

    small = shrink_and_enlarge(img, 64, 20)
    assert np.abs(small.numpy() - plain).mean() > 1.0  # it was compressed
    assert grid8(small) < 1.2
    assert grid8(tf.image.adjust_jpeg_quality(shrink_and_enlarge(img, 64), 20)) > 1.8  # compressed at 256 px
    out = chat_augment(img, 60, 95, rescale_min=0.35, small_jpeg=1.0)
    assert out.shape == (256, 256, 3) and out.dtype == tf.uint8


def test_imagenet_weights_fail_fast_offline(tmp_path, monkeypatch):
    from trainer.architectures import WeightsUnavailable, build_model
    from trainer.config import TrainConfig
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="does not download"):
        build_model(TrainConfig(arch="densenet121", weights="imagenet").resolved())
    assert time.monotonic() - t0 < 5
    with pytest.raises(WeightsUnavailable, match="no such file"):
        build_model(TrainConfig(arch="tiny", weights=str(tmp_path / "missing.keras")).resolved())


def test_preview_writes_a_grid_png(tiny_dataset_dir, tiny_models_dir, tmp_path):
    from trainer.cli import main
    out = tmp_path / "grid.png"
    assert main(["preview", "--data-dir", str(tiny_dataset_dir), "--split", "valid", "--out", str(out),
                 "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir)]) == 0
    from PIL import Image
    with Image.open(out) as im:
        assert im.size[0] > 500 and im.size[1] > 500


def test_sweep_runs_the_design_and_tabulates(tiny_dataset_dir, tmp_path):
    from trainer.cli import format_sweep
    from trainer.config import TrainConfig
    from trainer.sweep import run_sweep
    base = TrainConfig(data_dir=str(tiny_dataset_dir), arch="tiny", image_size=32, epochs=1, verbose=0,
                       limit_per_class=8, schedule="constant", optimizer="adam")
    levels = {"lr": [0.005, 0.001, 0.0001], "optimizer": ["adam", "sgd", "adagrad"],
              "activation": ["relu", "tanh", "sigmoid"]}
    rows = run_sweep(base, levels, ((0, 0, 0), (1, 1, 1)))
    assert [(r["lr"], r["optimizer"], r["activation"]) for r in rows] == [(0.005, "adam", "relu"),
                                                                          (0.001, "sgd", "tanh")]
    assert all(0 <= r["val_accuracy"] <= 1 for r in rows)
    table = format_sweep(rows, levels)
    assert "| 1 | 0.005 | adam | relu |" in table and "main effects" in table


def test_framing_jitter_reframes_like_a_small_similarity_transform(data_dir):
    import tensorflow as tf
    from PIL import Image
    from trainer.data import jitter_framing
    path = sorted((data_dir / "valid" / "real").iterdir())[0]
    x = tf.constant(np.asarray(Image.open(path).convert("RGB")))
    # A vanishing amount is the identity: the transform's centre and convention are right.
    np.testing.assert_array_equal(jitter_framing(x, 1e-7).numpy(), x.numpy())
    tf.random.set_seed(5)
    outs = [jitter_framing(x, 0.06).numpy() for _ in range(4)]
    for y in outs:
        assert y.shape == (256, 256, 3) and y.dtype == np.uint8
        diff = np.abs(y.astype(int) - x.numpy().astype(int)).mean()
        assert 0.5 < diff < 40  # moved, but still the same face (mirrored borders, no black corners)
        assert (y.reshape(-1, 3).sum(axis=1) == 0).mean() < 0.01
    assert len({y.tobytes() for y in outs}) == 4  # random per call


def test_missing_dataset_says_how_to_get_one(tmp_path):
    """An operator without the dataset learns where to get it and what layout to unpack, in one line."""
    from trainer.config import TrainConfig, default_data_dir
    assert default_data_dir() == (REPO / "data" / "real-vs-fake").resolve()  # project-relative, git-ignored
    assert TrainConfig().data_dir == "data/real-vs-fake"
    out = subprocess.run([sys.executable, "-m", "trainer", "--data-dir", str(tmp_path / "nowhere"), "--arch", "tiny",
                          "--models-dir", str(tmp_path / "m")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "kaggle datasets download -d xhlulu/140k-real-and-fake-faces" in out.stderr
    assert "DIR/{train,valid,test}/{real,fake}" in out.stderr
