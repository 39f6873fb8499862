"""A fit on a machine without TensorFlow (Keras on JAX, Pillow feed), finalized here (README: Training on a GPU).

The GPU machines this project may borrow have PyTorch and JAX but no TensorFlow and no LiteRT: the fit
runs there from landmarks computed here, and the calibration, LiteRT export and test metrics run here.
The subprocess below cannot import TensorFlow, LiteRT or the service's libraries (Redis, RQ, PyAV), as on
that machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_model import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
# As on a machine where they are not installed (sys.modules[name] = None would differ: Keras looks there).
ABSENT = """
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "ai_edge_litert", "redis", "rq", "av"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
"""
TRAINER = ABSENT + "from trainer.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _flags(data: Path, models: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--name", "elsewhere", "--arch", "tiny", "--image-size", "32",
            "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--models-dir", str(models),
            "--checkpoints-dir", str(ckpt), "--verbose", "0", "--seed", "5", *extra]


def _without_tensorflow(args: list[str], code: str = TRAINER) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def fit_on_jax(tmp_path_factory, data_dir):
    """Landmarks here (the worker's detector), then a 2-epoch fit in a JAX process that has no TensorFlow."""
    from trainer.cli import main
    root = tmp_path_factory.mktemp("elsewhere")
    data = make_tiny_dataset(data_dir, root / "real-vs-fake", per_class=8)
    models, ckpt = root / "models", root / "ckpt"
    assert main(_flags(data, models, ckpt, "--stop-after", "landmarks")) == 0
    landmarks = sorted((ckpt / "framing").glob("landmarks-*.npy"))
    assert len(landmarks) == 2, "train and valid landmarks are cached for the other machine"
    run = _without_tensorflow(_flags(data, models, ckpt, "--stop-after", "fit"))
    assert run.returncode == 0, run.stderr[-3000:]
    return data, models, ckpt, run


def test_the_fit_runs_on_jax_with_the_pillow_feed_and_leaves_what_finalizing_needs(fit_on_jax):
    _, models, ckpt, run = fit_on_jax
    assert "the fit is in" in run.stdout
    done = json.loads((ckpt / "elsewhere" / "fit.json").read_text())
    assert done["device"] == "CPU (jax)"
    assert done["library_versions"]["keras_backend"] == "jax" and "tensorflow" not in done["library_versions"]
    assert done["config"]["seed"] == 5 and "feed" not in done["config"]  # what it learned, not how it was fed
    with open(ckpt / "elsewhere" / "history.csv") as f:
        assert len(f.read().strip().splitlines()) == 3  # header + 2 epochs, validation included
    assert not (models / "elsewhere").exists()  # nothing is served from an unfinished run


def test_landmarks_alone_are_refused_where_the_recipe_uses_none(tmp_path, data_dir, capsys):
    from trainer.cli import main
    data = make_tiny_dataset(data_dir, tmp_path / "real-vs-fake", per_class=2)
    ckpt = tmp_path / "ckpt"
    assert main(_flags(data, tmp_path / "models", ckpt, "--stop-after", "landmarks", "--framing", "dataset")) == 2
    assert "--framing dataset uses no landmarks" in capsys.readouterr().err
    assert not ckpt.exists()


def test_finalizing_here_serves_exactly_the_weights_fitted_elsewhere(fit_on_jax, tmp_path, capsys):
    import keras
    from trainer.cli import main
    from trainer.config import TrainConfig
    from trainer.training import _network, _strategy_and_precision
    data, models, ckpt, _ = fit_on_jax
    # Another learning setting or other faces must not finalize that fit as if it were theirs.
    assert main(_flags(data, models, ckpt, "--lr", "1e-3")) == 2
    assert "other settings (lr: 0.003 there, 0.001 now)" in capsys.readouterr().err
    fewer = shutil.copytree(data, tmp_path / "fewer")
    sorted((fewer / "train" / "real").iterdir())[0].unlink()
    assert main(_flags(fewer, models, ckpt)) == 2
    assert "faces (train and valid files)" in capsys.readouterr().err
    assert not (models / "elsewhere").exists()
    kept = tmp_path / "best.weights.h5"
    shutil.copy(ckpt / "elsewhere" / "best.weights.h5", kept)
    assert main(_flags(data, models, ckpt, "--evaluate-test")) == 0
    meta = json.loads((models / "elsewhere" / "metadata.json").read_text())
    assert meta["training"]["device"] == "CPU (jax)" and meta["training"]["epochs_run"] == 2
    assert meta["library_versions"]["keras_backend"] == "tensorflow"  # finalized (calibrated, exported) here
    assert "calibration_realigned" in meta and "litert" in meta  # photo calibration and LiteRT: this machine's
    assert not (ckpt / "elsewhere").exists()
    c = TrainConfig(arch="tiny", image_size=32, weights="none").resolved()
    fitted = _network(c, _strategy_and_precision(c)[0])
    fitted.load_weights(str(kept))
    served = keras.models.load_model(models / "elsewhere" / "model.keras", compile=False)
    for a, b in zip(fitted.get_weights(), served.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_default_network_answers_the_same_on_jax_as_on_tensorflow(tmp_path, data_dir):
    """EfficientNet-Lite0 with its ImageNet weights: the network a GPU fit trains is the one served here."""
    from tests.conftest import valid_faces
    from trainer.architectures import build_model
    from trainer.config import TrainConfig
    x, _ = valid_faces(data_dir, 3)
    c = TrainConfig(arch="efficientnet_lite0", dropout=0.0).resolved()
    model = build_model(c)
    model.save_weights(tmp_path / "lite0.weights.h5")
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    here = np.asarray(model(x.astype(np.float32), training=False)).reshape(-1)
    run = _without_tensorflow([str(tmp_path)], ABSENT + """
import numpy as np
from pathlib import Path
from trainer.architectures import build_model
from trainer.config import TrainConfig
d = Path(sys.argv[1])
c = TrainConfig(arch="efficientnet_lite0", dropout=0.0, weights=str(d / "lite0.weights.h5")).resolved()
np.save(d / "jax.npy", np.asarray(build_model(c)(np.load(d / "x.npy"), training=False)).reshape(-1))
""")
    assert run.returncode == 0, run.stderr[-3000:]
    there = np.load(tmp_path / "jax.npy")
    assert here.std() > 1e-3  # six different faces get different answers: the comparison means something
    np.testing.assert_allclose(there, here, atol=2e-4)
