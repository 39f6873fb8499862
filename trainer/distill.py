"""Distillation (`--teacher RUN[,RUN...]`): a student trained towards a teacher's answers as well as the labels.

An output average of several runs is right more often and wrongly sure less often than any one of them, but
costs all of them at every face the worker classifies. Trained on the same augmented face, a single student
learns how sure the average is, not only which class the label says (Hinton et al. 2015, "Distilling the
knowledge in a neural network"; Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent": teacher and student see the very same augmented image). The teacher runs only while training:
the saved model is the student alone and costs what one run costs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import keras
from keras import ops


class Distilled(keras.Model):
    """The student's own layers and weights; while training, its target is (1 - w) * label + w * the teacher's
    P(fake) on the same augmented face. Validation (training=False) scores the labels alone, so early stopping
    and the best checkpoint judge the student exactly as an ordinary run is judged."""

    def __init__(self, student: keras.Model, teacher: keras.Model, weight: float) -> None:
        super().__init__(inputs=student.inputs, outputs=student.outputs, name=student.name)
        # A plain function, not an attribute Keras tracks: the teacher is neither trained nor saved with the student.
        self._teach = functools.partial(teacher, training=False)
        self.distill_weight = float(weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training:
            y = ops.cast(y, "float32")
            p = ops.reshape(ops.cast(ops.stop_gradient(self._teach(x)), "float32"), ops.shape(y))
            y = (1.0 - self.distill_weight) * y + self.distill_weight * p
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)


def teacher_folders(names: str, models_dir: Path) -> list[Path]:
    """The model folders named (comma-separated names under models_dir, or paths); a missing one stops the run
    before it starts."""
    from trainer.registry import find_model
    try:
        return [find_model(n.strip(), models_dir) for n in names.split(",") if n.strip()]
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--teacher: {e}") from None


def load_teacher(names: str, models_dir: Path) -> keras.Model:
    """The named models as one frozen model; several are averaged (as `trainer ensemble` does)."""
    from trainer.evaluation import load_network
    from trainer.soup import ensemble_of
    models = [load_network(f, "a teacher") for f in teacher_folders(names, models_dir)]
    teacher = ensemble_of(models) if len(models) > 1 else models[0]
    teacher.trainable = False
    return teacher
