"""The model a fresh clone serves: intact, self-describing, honest about itself, and right on faces."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import REPO, valid_faces

MODELS = REPO / "models"


def test_promoted_model_file_is_the_one_its_metadata_describes():
    from inference_worker.classifier import ModelWatcher
    from trainer.registry import file_sha256
    clf = ModelWatcher(MODELS).current
    # The version ends with the file's hash: a truncated or swapped model.keras is caught here.
    assert clf.version.endswith(file_sha256(MODELS / clf.name / "model.keras")[:8])
    if (MODELS / clf.name / "crops").is_dir():  # by-framing copies the crop run's file as it was: its version names it
        version = json.loads((MODELS / clf.name / "crops" / "metadata.json").read_text())["version"]
        assert version.endswith(file_sha256(MODELS / clf.name / "crops" / "model.keras")[:8])
    meta = clf.metadata
    assert meta["train_config"]["framing"] == "detector"  # trained for the worker's own framing
    assert meta["calibration"]["ece_valid_after"] <= 0.03
    assert meta["decision"]["accuracy_when_sure_valid"] >= 0.97
    assert meta["decision"]["unsure_share_valid"] <= 0.15
    assert meta["metrics"]["valid"]["accuracy"] >= 0.93
    # Faces cut out of photos are harder: their own, wider-banded decision keeps confident answers right.
    assert clf.decision_realigned.temperature > clf.decision.temperature
    assert meta["decision_realigned"]["accuracy_when_sure_valid"] >= 0.97
    assert meta["calibration_realigned"]["ece_valid_after"] <= 0.05
    assert meta["metrics"]["valid_realigned"]["accuracy"] >= 0.85


def test_promoted_model_judges_unseen_faces(data_dir):
    """Ten real and ten fake faces from the valid split (never trained on), as a user would send them."""
    from inference_worker.classifier import ModelWatcher
    clf = ModelWatcher(MODELS).current
    faces, labels = valid_faces(data_dir, 10)
    p = clf.p_fake(faces)
    assert np.all((p > 0) & (p < 1))
    pred = p >= clf.decision.threshold
    assert (pred == labels.astype(bool)).sum() >= 18


def test_shipped_model_is_served_on_litert_with_its_keras_answers(data_dir):
    """CPU workers serve the shipped model through its model.tflite: the same P(fake) as model.keras."""
    import tensorflow as tf

    from inference_worker.classifier import Classifier, ModelWatcher
    clf = ModelWatcher(MODELS).current
    assert clf.runtime == ("tensorflow" if tf.config.list_physical_devices("GPU") else "litert")  # auto
    keras_clf = Classifier(MODELS / clf.name, "tensorflow")
    x, _ = valid_faces(data_dir, 8)
    want = keras_clf.raw(x)
    assert np.allclose(clf.raw(x), want, atol=1e-4)
    assert np.allclose(clf.raw(x[:1]), want[:1], atol=1e-4)
