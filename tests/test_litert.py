"""The LiteRT copy of a model: written and checked by the trainer, served by CPU workers, refused when unsound."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from tests.conftest import valid_faces
from tests.fixtures_model import TINY_MODEL, TINY_MODEL_2


def test_trained_model_carries_a_litert_file_the_worker_serves_with_the_same_answers(tiny_models_dir, data_dir):
    from inference_worker.classifier import Classifier
    from trainer.registry import file_sha256
    folder = tiny_models_dir / TINY_MODEL
    entry = json.loads((folder / "metadata.json").read_text())["litert"]
    assert entry["sha256"] == file_sha256(folder / "model.tflite") and entry["resize_to"] == 32
    tf_clf, lite_clf = Classifier(folder, "tensorflow"), Classifier(folder, "auto")
    assert (tf_clf.runtime, lite_clf.runtime) == ("tensorflow", "litert")  # auto: no GPU here
    x, _ = valid_faces(data_dir, 6)
    want = tf_clf.raw(x)
    assert want.std() > 1e-3  # the faces get different answers, so agreeing on them means something
    assert np.allclose(lite_clf.raw(x), want, atol=1e-5)
    for n in (1, 3, 1):  # the interpreter is re-sized when the batch size changes
        assert np.allclose(lite_clf.raw(x[:n]), want[:n], atol=1e-5)
    assert np.allclose(lite_clf.p_fake(x, np.array([True, False] * 6)), tf_clf.p_fake(x, np.array([True, False] * 6)),
                       atol=1e-5)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_litert_file_that_is_not_this_models_keeps_tensorflow_serving(tiny_models_dir, tmp_path, data_dir, caplog):
    from inference_worker.classifier import Classifier
    from trainer.registry import file_sha256
    folder = _copy(tiny_models_dir / TINY_MODEL, tmp_path / TINY_MODEL)
    x, _ = valid_faces(data_dir, 3)
    want = Classifier(folder, "tensorflow").raw(x)
    shutil.copy(tiny_models_dir / TINY_MODEL_2 / "model.tflite", folder / "model.tflite")  # another model's file
    with caplog.at_level(logging.ERROR, logger="inference_worker.classifier"):
        clf = Classifier(folder, "litert")
    assert clf.runtime == "tensorflow" and "not the file the trainer wrote" in caplog.text
    assert np.allclose(clf.raw(x), want, atol=1e-6)
    # Even with a hash that matches (an exporter that converted the wrong network), the answers are compared.
    meta = json.loads((folder / "metadata.json").read_text())
    meta["litert"]["sha256"] = file_sha256(folder / "model.tflite")
    (folder / "metadata.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="inference_worker.classifier"):
        clf = Classifier(folder, "litert")
    assert clf.runtime == "tensorflow" and "disagrees with model.keras" in caplog.text
    assert np.allclose(clf.raw(x), want, atol=1e-6)
    (folder / "model.tflite").write_bytes(b"not a flatbuffer")
    assert Classifier(folder, "litert").runtime == "tensorflow"
    (folder / "model.tflite").unlink()
    assert Classifier(folder, "litert").runtime == "tensorflow"


def test_unknown_runtime_setting_stops_the_worker_with_a_clear_message(tiny_models_dir, monkeypatch):
    from inference_worker.classifier import Classifier, ModelLoadError, runtime_from_env
    monkeypatch.setenv("WORKER_CLASSIFIER_RUNTIME", "GPU")
    monkeypatch.setenv("WORKER_TF_THREADS", "1")
    runtime, threads = runtime_from_env()
    assert (runtime, threads) == ("gpu", 1)
    with pytest.raises(ModelLoadError, match="WORKER_CLASSIFIER_RUNTIME='gpu': choose one of auto, litert"):
        Classifier(tiny_models_dir / TINY_MODEL, runtime, threads)


def test_export_litert_adds_a_checked_file_to_an_older_model(tiny_models_dir, tmp_path, tiny_dataset_dir, capsys):
    from inference_worker.classifier import Classifier
    from trainer.cli import main
    models = tmp_path / "models"
    folder = _copy(tiny_models_dir / TINY_MODEL, models / TINY_MODEL)
    (folder / "model.tflite").unlink()
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["litert"]  # as a model trained before the trainer wrote one
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert Classifier(folder, "auto").runtime == "tensorflow"
    assert main(["export-litert", TINY_MODEL, "--models-dir", str(models), "--data-dir", str(tiny_dataset_dir)]) == 0
    assert "largest difference from Keras" in capsys.readouterr().out
    after = json.loads((folder / "metadata.json").read_text())
    assert after["version"] == meta["version"] and after["litert"]["max_abs_diff_vs_keras"] <= 1e-4
    assert Classifier(folder, "auto").runtime == "litert"


def test_export_litert_refuses_a_model_it_cannot_convert_in_one_line(tmp_path, capsys):
    import keras

    from inference_worker.layers import with_flip_average
    from trainer.architectures import build_model
    from trainer.cli import main
    from trainer.config import TrainConfig
    folder = tmp_path / "models" / "flipped"
    folder.mkdir(parents=True)
    # The flip-averaged wrapper resizes inside a nested model: no LiteRT kernel for that resize.
    with_flip_average(build_model(TrainConfig(arch="tiny", image_size=32).resolved())).save(folder / "model.keras")
    (folder / "metadata.json").write_text(json.dumps({"name": "flipped", "version": "1"}))
    assert main(["export-litert", "flipped", "--models-dir", str(tmp_path / "models")]) == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: model ")]
    assert ours == ["error: model 'tiny_flipavg' has no LiteRT form (ops LiteRT lacks: ScaleAndTranslate); "
                    "workers serve it with TensorFlow"]
    assert not (folder / "model.tflite").exists()
    assert "litert" not in json.loads((folder / "metadata.json").read_text())
    keras.backend.clear_session()
