"""A second opinion: a second run looks again only at the faces the first is not sure of (trainer and worker)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.calibration import logit
from core.second_opinion import combine
from tests.conftest import valid_faces
from tests.fixtures_model import TINY_MODEL, TINY_MODEL_2

REPO = Path(__file__).resolve().parent.parent
NAME = "tiny-second"


def _trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


@pytest.fixture(scope="module")
def built(tiny_models_dir, tiny_dataset_dir, tmp_path_factory):
    """(models dir, faces, first run's P(fake), second run's, the bar) with TINY_MODEL asking TINY_MODEL_2 about
    the less sure half of the faces."""
    from trainer.evaluation import load_model_folder
    models = tmp_path_factory.mktemp("second") / "models"
    shutil.copytree(tiny_models_dir, models)
    x, _ = valid_faces(tiny_dataset_dir, 8)
    a, b = (np.asarray(load_model_folder(models / n)[0](x)).ravel() for n in (TINY_MODEL, TINY_MODEL_2))
    bar = float(np.median(np.abs(logit(a))))
    out = _trainer("second-opinion", TINY_MODEL, TINY_MODEL_2, "--defer-below", repr(bar), "--name", NAME,
                   "--models-dir", str(models), "--data-dir", str(tiny_dataset_dir))
    assert out.returncode == 0, out.stderr
    return models, x, a, b, bar


def test_the_second_run_is_asked_only_where_the_first_is_not_sure(built):
    from inference_worker.classifier import Classifier
    from trainer.evaluation import load_model_folder
    models, x, a, b, bar = built
    asked = np.abs(logit(a)) < bar
    assert 0 < asked.sum() < len(a) and not np.allclose(a[asked], b[asked], atol=1e-3)
    expected = np.where(asked, (a + b) / 2, a)
    # The trainer measured exactly what the worker serves, on TensorFlow and on LiteRT.
    model, meta = load_model_folder(models / NAME)
    np.testing.assert_allclose(np.asarray(model(x)).ravel(), expected, rtol=1e-5, atol=1e-6)
    for runtime in ("tensorflow", "litert"):
        clf = Classifier(models / NAME, runtime=runtime)
        assert clf.runtime == runtime
        np.testing.assert_allclose(clf.raw(x), expected, atol=1e-4)
    entry = meta["second_opinion"]
    assert entry["defer_below"] == pytest.approx(bar) and [r.split("@")[0] for r in entry["of"]] == [TINY_MODEL,
                                                                                                       TINY_MODEL_2]
    assert meta["calibration"]["temperature"] > 0 and meta["metrics"]["valid"]["n"] > 0
    assert meta["params"] == 2 * model.first.count_params()  # two tiny runs of one architecture
    second = json.loads((models / NAME / "second" / "metadata.json").read_text())
    assert second["name"] == TINY_MODEL_2 and second["litert"]["sha256"]
    assert json.loads((models / "promoted.json").read_text())["name"] == TINY_MODEL  # built, not promoted


def test_the_second_network_runs_on_the_asked_faces_only():
    seen: list[int] = []

    def second(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return np.full(len(batch), 0.9, np.float32)

    first = np.array([0.5, 0.99, 0.3, 0.001], np.float32)  # |logit| 0, 4.6, 0.85, 6.9
    batch = np.zeros((4, 2, 2, 3), np.float32)
    np.testing.assert_allclose(combine(first, batch, second, 1.0), [0.7, 0.99, 0.6, 0.001], rtol=1e-6)
    assert seen == [2]
    np.testing.assert_allclose(combine(first, batch, second, 0.5), [0.7, 0.99, 0.3, 0.001], rtol=1e-6)
    combine(first[1:2], batch[1:2], second, 1.0)  # a face the first is sure of: the second never runs
    assert seen == [2, 1]


def test_a_bar_of_zero_or_less_is_refused(built, tiny_dataset_dir):
    models = built[0]
    out = _trainer("second-opinion", TINY_MODEL, TINY_MODEL_2, "--defer-below", "0", "--name", "x",
                   "--models-dir", str(models), "--data-dir", str(tiny_dataset_dir))
    assert out.returncode == 2 and "--defer-below must be above 0" in out.stderr
    assert not (models / "x").exists()


@pytest.mark.parametrize("args", [("soup", NAME, TINY_MODEL), ("ensemble", TINY_MODEL, NAME),
                                  ("second-opinion", NAME, TINY_MODEL, "--defer-below", "1")])
def test_a_model_with_a_second_opinion_is_no_ingredient(built, tiny_dataset_dir, args):
    models = built[0]
    out = _trainer(*args, "--name", "y", "--models-dir", str(models), "--data-dir", str(tiny_dataset_dir))
    assert out.returncode == 2 and "holds two networks (a second opinion)" in out.stderr
    assert not (models / "y").exists()


def test_a_worker_refuses_a_second_opinion_it_cannot_serve(built, tmp_path):
    from inference_worker.classifier import Classifier, ModelLoadError
    broken = tmp_path / NAME
    shutil.copytree(built[0] / NAME, broken)
    meta = json.loads((broken / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps({**meta, "second_opinion": {**meta["second_opinion"],
                                                                                 "defer_below": -1}}))
    with pytest.raises(ModelLoadError, match="defer_below must be a number above 0"):
        Classifier(broken)
    (broken / "metadata.json").write_text(json.dumps(meta))
    (broken / "second" / "model.keras").unlink()
    with pytest.raises(ModelLoadError, match="model file missing"):
        Classifier(broken)
