"""A network for each framing (trainer by-framing): passed-through crops answered by a crop network, re-aligned
faces exactly as the model it was built from (trainer, worker, and the worker's real Pipeline)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.calibration import logit
from core.settings import Settings
from tests.conftest import valid_faces
from tests.fixtures_model import TINY_MODEL, TINY_MODEL_2, train_tiny
from tests.fixtures_worker import promote_model

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "tests" / "fixtures" / "photos" / "one_real_face_1024x768.jpg"
CROPS, BASE, NAME = "tiny-c", "tiny-2nd", "tiny-framed"


def _trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tiny_models_dir, tiny_dataset_dir, tmp_path_factory):
    """(models dir, faces, raw P(fake) of tiny-a, tiny-b and tiny-c, the base's bar, the crops' bar): the base
    model is tiny-a asking tiny-b; the by-framing model answers crops with tiny-c, asking tiny-b too."""
    from trainer.evaluation import load_model_folder
    from trainer.second_opinion import build
    models = tmp_path_factory.mktemp("framed") / "models"
    shutil.copytree(tiny_models_dir, models)
    train_tiny(tiny_dataset_dir, models, CROPS, seed=11)
    x, _ = valid_faces(tiny_dataset_dir, 8)
    a, b, c = (np.asarray(load_model_folder(models / n)[0](x)).ravel() for n in (TINY_MODEL, TINY_MODEL_2, CROPS))
    bar_a, bar_c = (float(np.median(np.abs(logit(v)))) for v in (a, c))
    build(models / TINY_MODEL, models / TINY_MODEL_2, BASE, bar_a, tiny_dataset_dir, models)
    out = _trainer("by-framing", BASE, CROPS, "--defer-below", repr(bar_c), "--name", NAME,
                   "--models-dir", str(models), "--data-dir", str(tiny_dataset_dir))
    assert out.returncode == 0, out.stderr
    assert f"crops answered by {CROPS}@" in out.stdout
    return models, x, a, b, c, bar_a, bar_c


def test_each_framing_is_answered_by_its_own_network(built):
    from inference_worker.classifier import Classifier
    from trainer.evaluation import load_model_folder
    models, x, a, b, c, bar_a, bar_c = built
    ask_a, ask_c = np.abs(logit(a)) < bar_a, np.abs(logit(c)) < bar_c
    assert 0 < ask_c.sum() < len(c) and not np.allclose(c, a, atol=1e-3)
    realigned_answer = np.where(ask_a, (a + b) / 2, a)
    crop_answer = np.where(ask_c, (c + b) / 2, c)
    # The trainer measures each framing exactly as the worker serves it, on TensorFlow and on LiteRT.
    np.testing.assert_allclose(np.asarray(load_model_folder(models / NAME)[0](x)).ravel(), crop_answer,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(load_model_folder(models / NAME, realigned=True)[0](x)).ravel(),
                               realigned_answer, rtol=1e-5, atol=1e-6)
    flags = np.arange(len(x)) % 2 == 0
    base = Classifier(models / BASE, runtime="tensorflow")
    for runtime in ("tensorflow", "litert"):
        clf = Classifier(models / NAME, runtime=runtime)
        assert clf.runtime == runtime and clf.crops is not None
        np.testing.assert_allclose(clf.raw(x, flags), np.where(flags, realigned_answer, crop_answer), atol=1e-4)
        np.testing.assert_allclose(clf.raw(x), realigned_answer, atol=1e-4)  # clips: the re-aligned path
        # Re-aligned faces keep the base model's calibrated answers to the digit; crops get their own.
        np.testing.assert_allclose(clf.p_fake(x, np.ones(len(x), bool)), base.p_fake(x, np.ones(len(x), bool)),
                                   atol=1e-4)
        np.testing.assert_allclose(clf.p_fake(x), clf.decision.calibrate(crop_answer), atol=1e-4)


def test_the_folder_keeps_the_base_and_the_crop_networks_files_byte_for_byte(built):
    models, bar_c = built[0], built[6]
    meta = json.loads((models / NAME / "metadata.json").read_text())
    base = json.loads((models / BASE / "metadata.json").read_text())
    crop_run = json.loads((models / CROPS / "metadata.json").read_text())
    assert meta["crops"] == {"folder": "crops", "defer_below": pytest.approx(bar_c),
                             "of": f"{CROPS}@{crop_run['version']}"}
    assert meta["by_framing_of"] == [f"{BASE}@{base['version']}", meta["crops"]["of"]]
    for f in ("model.keras", "model.tflite", "second/model.keras", "second/model.tflite"):
        assert _sha(models / NAME / f) == _sha(models / BASE / f), f
    for f in ("model.keras", "model.tflite"):
        assert _sha(models / NAME / "crops" / f) == _sha(models / CROPS / f), f
    inner = json.loads((models / NAME / "crops" / "metadata.json").read_text())
    assert inner["name"] == CROPS and inner["litert"]["sha256"] == _sha(models / CROPS / "model.tflite")
    # As sent: fitted again on valid, measured on test. Re-aligned: the base model's, kept as it was.
    assert CROPS in meta["calibration"]["fitted_on"] and meta["metrics"]["valid"] != base["metrics"]["valid"]
    assert meta["metrics"]["test"] != base["metrics"]["test"] and meta["version"] != base["version"]
    assert (meta["calibration_realigned"], meta["decision_realigned"]) == (base["calibration"], base["decision"])
    assert (models / NAME / "report" / "metrics.json").is_file()
    assert json.loads((models / "promoted.json").read_text())["name"] == TINY_MODEL  # built, not promoted


def test_the_worker_pipeline_routes_a_dataset_crop_and_a_forwarded_photo(built, data_dir, tmp_path):
    from inference_worker.classifier import Classifier
    from inference_worker.faces import frame_face
    from inference_worker.pipeline import Pipeline
    models = tmp_path / "models"
    shutil.copytree(built[0], models)
    promote_model(models, NAME)
    pipe = Pipeline(Settings(models_dir=models))
    base = Classifier(models / BASE)
    crop = sorted((data_dir / "test" / "fake").glob("*.jpg"))[0]
    for data, realigned in ((crop.read_bytes(), False), (PHOTO.read_bytes(), True)):
        v = pipe.check(data, "r1").verdict
        assert v.model["name"] == NAME and len(v.faces) == 1 and v.faces[0].realigned is realigned
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        face = pipe.detector.detect(picture)[0]
        x = np.asarray(frame_face(picture, face.landmarks)[0], np.float32)[None]
        clf = pipe.models.current
        expected = clf.decision_for(realigned).calibrate(clf.raw(x, np.array([realigned])))[0]
        assert v.faces[0].p_fake == pytest.approx(float(expected), abs=1e-3)
        if realigned:  # a forwarded photo is answered exactly as the base model answers it
            assert v.faces[0].p_fake == pytest.approx(float(base.p_fake(x, np.array([True]))[0]), abs=1e-3)
        else:  # a crop is the crop network's (with the second network where it asks)
            assert not np.allclose(clf.raw(x, np.array([False])), clf.raw(x, np.array([True])), atol=1e-3)


@pytest.mark.parametrize("args, message", [
    ((TINY_MODEL, BASE), "holds two networks (a second opinion)"),
    ((NAME, CROPS), "already has a crop network"),
    ((TINY_MODEL, CROPS, "--defer-below", "1"), "asks a second network the model does not have"),
    ((BASE, CROPS, "--defer-below", "-1"), "--defer-below must be 0 or above"),
    (("soup", NAME, TINY_MODEL), "holds a network for each framing"),
])
def test_what_cannot_be_built_is_refused_and_nothing_is_written(built, tiny_dataset_dir, args, message):
    models = built[0]
    cmd = args if args[0] == "soup" else ("by-framing", *args)
    out = _trainer(*cmd, "--name", "y", "--models-dir", str(models), "--data-dir", str(tiny_dataset_dir))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (models / "y").exists() and not list(models.glob(".y.partial"))


def test_a_worker_refuses_a_crop_network_it_cannot_serve(built, tmp_path):
    from inference_worker.classifier import Classifier, ModelLoadError
    broken = tmp_path / NAME
    shutil.copytree(built[0] / NAME, broken)
    meta = json.loads((broken / "metadata.json").read_text())
    for entry, message in (({**meta["crops"], "defer_below": -1}, "defer_below must be a number, 0 or above"),
                           ({**meta["crops"], "folder": "../x"}, "crops must name the folder 'crops'")):
        (broken / "metadata.json").write_text(json.dumps({**meta, "crops": entry}))
        with pytest.raises(ModelLoadError, match=message):
            Classifier(broken)
    (broken / "metadata.json").write_text(json.dumps(meta))
    (broken / "crops" / "model.keras").unlink()
    with pytest.raises(ModelLoadError, match="model file missing"):
        Classifier(broken)
