"""Fixtures for model tests (see tests/conftest.py).

- `tiny_dataset_dir` (session): a few shared-sample images per class in the 140k layout, in tmp.
- `tiny_models_dir` (session): a MODELS_DIR with two tiny models trained by the trainer API,
  `TINY_MODEL` (promoted) and `TINY_MODEL_2` (not promoted). Treat it as read-only: a test that
  promotes must use `fresh_models_dir` (a per-test copy) so later tests still see TINY_MODEL served.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_MODEL = "tiny-a"
TINY_MODEL_2 = "tiny-b"
TINY_PER_CLASS = 16


def make_tiny_dataset(src: Path, dst: Path, per_class: int = TINY_PER_CLASS,
                      splits: tuple[str, ...] = ("train", "valid", "test")) -> Path:
    """Copy the first `per_class` images of each class/split of the shared sample into dst."""
    for split in splits:
        for cls in ("real", "fake"):
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for p in sorted((src / split / cls).iterdir())[:per_class]:
                shutil.copy(p, out / p.name)
    return dst


def train_tiny(data: Path, models_dir: Path, name: str, seed: int = 1337) -> Path:
    """A tiny model (32-px working size, two epochs) through the real trainer: seconds on a CPU."""
    from trainer.config import TrainConfig
    from trainer.training import train
    c = TrainConfig(data_dir=str(data), name=name, arch="tiny", image_size=32, epochs=2, batch_size=16,
                    lr=3e-3, models_dir=str(models_dir), checkpoints_dir=str(models_dir.parent / "ckpt"),
                    verbose=0, seed=seed, framing="dataset")  # detector framing: tests/test_pretrained.py
    return train(c)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory, data_dir) -> Path:
    return make_tiny_dataset(data_dir, tmp_path_factory.mktemp("tiny-data") / "real-vs-fake")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory, tiny_dataset_dir) -> Path:
    """MODELS_DIR with TINY_MODEL (promoted) and TINY_MODEL_2; read-only for tests."""
    from trainer.registry import promote
    models = tmp_path_factory.mktemp("tiny-models") / "models"
    models.mkdir()
    train_tiny(tiny_dataset_dir, models, TINY_MODEL)
    train_tiny(tiny_dataset_dir, models, TINY_MODEL_2, seed=7)
    promote(models, TINY_MODEL)
    return models


@pytest.fixture
def fresh_models_dir(tiny_models_dir, tmp_path) -> Path:
    """A private copy of tiny_models_dir for one test (promote freely)."""
    dst = tmp_path / "models"
    shutil.copytree(tiny_models_dir, dst)
    return dst
