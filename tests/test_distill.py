"""Distillation (`python -m trainer --teacher`): the student's training target mixes the label with the teacher's
answer on the same face, validation scores the labels alone, and the saved model is the student alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import valid_faces
from tests.fixtures_model import TINY_MODEL, TINY_MODEL_2

REPO = Path(__file__).resolve().parent.parent


def _bce(target: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))))


def test_training_target_is_the_mix_of_label_and_teacher_and_validation_uses_labels(tiny_models_dir,
                                                                                   tiny_dataset_dir):
    import keras

    from trainer.architectures import build_model
    from trainer.config import TrainConfig
    from trainer.distill import Distilled, load_teacher
    x, y = valid_faces(tiny_dataset_dir, 4)
    y = y.astype(np.float32).reshape(-1, 1)
    student = build_model(TrainConfig(arch="tiny", image_size=32, weights="none", models_dir=str(tiny_models_dir)
                                      ).resolved())
    teacher = load_teacher(f"{TINY_MODEL},{TINY_MODEL_2}", tiny_models_dir)
    model = Distilled(student, teacher, 0.75)
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy())
    p_student = np.asarray(student(x)).reshape(-1, 1)
    p_teacher = np.asarray(teacher(x)).reshape(-1, 1)
    assert not np.allclose(p_teacher, y, atol=0.05)  # the teacher is not just the labels: the mix is visible
    trained = float(model.compute_loss(x, y, model(x), training=True))
    judged = float(model.compute_loss(x, y, model(x), training=False))
    assert abs(trained - _bce(0.25 * y + 0.75 * p_teacher, p_student)) < 1e-4
    assert abs(judged - _bce(y, p_student)) < 1e-4
    assert abs(trained - judged) > 1e-3
    # The teacher is neither trained nor saved with the student.
    assert len(model.get_weights()) == len(student.get_weights())
    assert len(model.trainable_weights) == len(student.trainable_weights)


def _train(models_dir: Path, data_dir: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", "--arch", "tiny", "--image-size", "32", "--epochs", "1",
                           "--batch-size", "16", "--framing", "dataset", "--verbose", "0", "--name", name,
                           "--models-dir", str(models_dir), "--checkpoints-dir", str(models_dir.parent / "ckpt"),
                           "--data-dir", str(data_dir), *extra], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def test_cli_trains_a_student_that_is_saved_alone(fresh_models_dir, tiny_dataset_dir):
    from trainer.evaluation import load_model_folder
    out = _train(fresh_models_dir, tiny_dataset_dir, "tiny-student", "--teacher", f"{TINY_MODEL},{TINY_MODEL_2}",
                 "--distill-weight", "0.6")
    assert out.returncode == 0, out.stderr
    student, meta = load_model_folder(fresh_models_dir / "tiny-student")
    plain, _ = load_model_folder(fresh_models_dir / TINY_MODEL)
    assert meta["train_config"]["teacher"] == f"{TINY_MODEL},{TINY_MODEL_2}"
    assert meta["train_config"]["distill_weight"] == 0.6
    assert student.count_params() == plain.count_params()  # the student alone, no teacher inside
    assert meta["calibration"]["temperature"] > 0 and meta["metrics"]["valid"]["n"] > 0


def test_cli_refuses_a_missing_teacher_or_a_bad_weight_before_training(fresh_models_dir, tiny_dataset_dir):
    for extra, message in ((["--teacher", "no-such-model"], "--teacher: no model at"),
                           (["--teacher", TINY_MODEL, "--distill-weight", "0"], "--distill-weight must be in")):
        out = _train(fresh_models_dir, tiny_dataset_dir, "tiny-bad-student", *extra)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert not (fresh_models_dir / "tiny-bad-student").exists()
    assert json.loads((fresh_models_dir / "promoted.json").read_text())["name"] == TINY_MODEL


def test_a_teacher_is_named_like_any_model_a_name_or_a_folder(tiny_models_dir, tmp_path):
    from trainer.distill import teacher_folders
    elsewhere = tmp_path / "elsewhere"
    assert teacher_folders(f"{TINY_MODEL}, {tiny_models_dir / TINY_MODEL_2}", tiny_models_dir) == [
        tiny_models_dir / TINY_MODEL, tiny_models_dir / TINY_MODEL_2]
    assert teacher_folders(str(tiny_models_dir / TINY_MODEL), elsewhere) == [tiny_models_dir / TINY_MODEL]
    with pytest.raises(FileNotFoundError, match=r"--teacher: no model at .*metadata.json missing"):
        teacher_folders(TINY_MODEL, elsewhere)
