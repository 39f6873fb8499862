"""scripts/gpu_fit.sh --send: what comes back from the GPU machine holds the fitted weights, and fits the return limits."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny-g1"


def _tiny() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, keras.Model]:
    """A copy of the device side's layout: scripts/gpu_fit.sh and one finished fit in .gpu/checkpoints."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "gpu_fit.sh", tmp_path / "scripts")
    fit = tmp_path / ".gpu" / "checkpoints" / NAME
    fit.mkdir(parents=True)
    model = _tiny()
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.save_weights(fit / "best.weights.h5")  # what ModelCheckpoint(save_weights_only=True) writes
    for f, text in (("history.csv", "epoch,loss\n0,1.0\n"), ("fit.json", '{"faces": "abc"}\n'), ("train.log", "ok\n")):
        (fit / f).write_text(text)
    return tmp_path, model


def _send(root: Path, *names: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(root / "out"), "PY": sys.executable}
    return subprocess.run(["bash", "scripts/gpu_fit.sh", "--send", *names], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_send_returns_the_weights_without_the_optimizer_state(machine):
    root, model = machine
    with h5py.File(root / ".gpu/checkpoints" / NAME / "best.weights.h5") as f:
        assert "optimizer" in f  # the trap: Adam's moments make Lite0's file 41 MB, over the 16 MiB a file may be
    done = _send(root, NAME)
    assert done.returncode == 0, done.stderr
    pieces = sorted((root / "out").iterdir())
    assert [p.name for p in pieces] == [f"{NAME}.tar.aa"]
    assert all(p.stat().st_size <= 15 * 2**20 for p in pieces)
    here = root / "here"
    with tarfile.open(pieces[0]) as tar:
        tar.extractall(here, filter="data")
    got = here / NAME
    assert sorted(p.name for p in got.iterdir()) == ["best.weights.h5", "fit.json", "history.csv", "train.log"]
    assert (got / "fit.json").read_text() == '{"faces": "abc"}\n'
    with h5py.File(got / "best.weights.h5") as f:
        assert "optimizer" not in f
    fresh = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    fresh.load_weights(got / "best.weights.h5")  # as finalizing loads it: a network without an optimizer
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_send_of_a_fit_that_is_not_there_fails_and_names_it(machine):
    root, _ = machine
    done = _send(root, "no-such-fit")
    assert done.returncode != 0
    assert "no-such-fit" in done.stderr
