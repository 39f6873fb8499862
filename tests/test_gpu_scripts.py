"""scripts/gpu_fit.sh, the GPU machine's side: fits in parallel, what comes back, and what it refuses.

Run here on Keras's JAX backend on the CPU, as the machine runs it on its GPU (it has no TensorFlow).
"""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from tests.fixtures_model import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny-g1"


def _tiny() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, keras.Model]:
    """A copy of the device side's layout: scripts/gpu_fit.sh and one finished fit in .gpu/checkpoints."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "gpu_fit.sh", tmp_path / "scripts")
    fit = tmp_path / ".gpu" / "checkpoints" / NAME
    fit.mkdir(parents=True)
    model = _tiny()
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.save_weights(fit / "best.weights.h5")  # what ModelCheckpoint(save_weights_only=True) writes
    for f, text in (("history.csv", "epoch,loss\n0,1.0\n"), ("fit.json", '{"faces": "abc"}\n'), ("train.log", "ok\n")):
        (fit / f).write_text(text)
    return tmp_path, model


def _gpu_fit(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(root / "out"), "PY": sys.executable, "JAX_PLATFORMS": "cpu", **env}
    (root / "out").mkdir(exist_ok=True)
    return subprocess.run(["bash", "scripts/gpu_fit.sh", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def _send(root: Path, *names: str) -> subprocess.CompletedProcess:
    return _gpu_fit(root, "--send", *names)


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
    fresh = _tiny()
    fresh.load_weights(got / "best.weights.h5")  # as finalizing loads it: a network without an optimizer
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_send_of_a_fit_that_is_not_there_fails_and_names_it(machine):
    root, _ = machine
    done = _send(root, "no-such-fit")
    assert done.returncode != 0
    assert "no-such-fit" in done.stderr


RUN = "--arch tiny --image-size 32 --epochs 1 --batch-size 8 --framing dataset --verbose 0"


@pytest.fixture
def packed(tmp_path: Path, data_dir: Path) -> Path:
    """The machine's checkout after the uploads: the code, and .gpu/ with the data parts and their sums."""
    for package in ("trainer", "core", "inference_worker"):
        (tmp_path / package).symlink_to(REPO / package)
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "gpu_fit.sh", tmp_path / "scripts")
    data = make_tiny_dataset(data_dir, tmp_path / "faces", per_class=8, splits=("train", "valid"))
    (tmp_path / ".gpu").mkdir()
    tar = subprocess.run(["tar", "-cf", "-", "-C", str(data), "train", "valid"], capture_output=True, check=True).stdout
    half = len(tar) // 2
    for part, chunk in (("aa", tar[:half]), ("ab", tar[half:])):
        (tmp_path / ".gpu" / f"data.tar.{part}").write_bytes(chunk)
    subprocess.run("sha256sum data.tar.* >parts.sha256", shell=True, cwd=tmp_path / ".gpu", check=True)
    return tmp_path


def test_fits_run_side_by_side_and_a_failing_run_does_not_stop_the_others(packed, tmp_path):
    (packed / ".gpu" / "runs.txt").write_text(f"--name g1 --seed 5 {RUN}\n--name g2 {RUN} --lr abc\n"
                                              f"--name g3 --seed 7 {RUN}\n--name g4 --seed 8 {RUN}\n")  # g4 after g2, same lane
    done = _gpu_fit(packed, ".gpu/runs.txt", GPU_DATA=str(tmp_path / "unpacked"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4 runs, 2 at once" in done.stdout
    assert "[g2] failed" in done.stderr and "invalid float value: 'abc'" in done.stderr
    assert all(f"[{g}] fitted and sent" in done.stdout for g in ("g1", "g3", "g4"))
    assert sorted(p.name for p in (packed / "out").iterdir()) == ["g1.tar.aa", "g3.tar.aa", "g4.tar.aa"]
    with tarfile.open(packed / "out" / "g3.tar.aa") as tar:
        names = set(tar.getnames())
    assert {"g3/best.weights.h5", "g3/fit.json", "g3/history.csv", "g3/train.log"} <= names


def test_a_missing_part_is_named_before_anything_runs(packed, tmp_path):
    (packed / ".gpu" / "runs.txt").write_text(f"--name g1 {RUN}\n")
    (packed / ".gpu" / "data.tar.ab").unlink()  # the machine went back between two uploads
    done = _gpu_fit(packed, ".gpu/runs.txt", GPU_DATA=str(tmp_path / "unpacked"))
    assert done.returncode == 3
    assert "data.tar.ab" in done.stderr and "send them again" in done.stderr
    assert not list((packed / "out").iterdir())
