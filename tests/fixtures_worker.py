"""Fixtures for worker tests (see tests/conftest.py): a tiny real model and real worker processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.processes import ManagedProcess

REPO = Path(__file__).resolve().parent.parent


def write_tiny_model(models_dir: Path, name: str = "tiny", version: str = "1", bias: float = 0.0,
                     promote: bool = True, slow_layers: int = 0) -> Path:
    """A real (untrained) Keras model that follows models/README.md, with metadata; optionally promoted.

    `slow_layers` adds full-resolution convolutions so that one prediction takes seconds: tests use it
    to kill a worker while it is surely in the middle of a job.
    """
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((256, 256, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    if slow_layers:
        for _ in range(slow_layers):
            x = keras.layers.Conv2D(96, 9, padding="same")(x)
        x = keras.layers.Conv2D(3, 1)(x)
    x = keras.layers.AveragePooling2D(8)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", bias_initializer=keras.initializers.Constant(bias))(x)
    model = keras.Model(inputs, outputs)
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    meta = {"name": name, "version": version, "arch": "tiny-test", "input_size": 256, "image_size": 32,
            "class_names": ["real", "fake"], "positive_class": "fake",
            "calibration": {"method": "temperature", "temperature": 1.5},
            "decision": {"threshold": 0.5, "unsure_band": [0.4, 0.6]}}
    (folder / "metadata.json").write_text(json.dumps(meta))
    if promote:
        promote_model(models_dir, name)
    return folder


def promote_model(models_dir: Path, name: str) -> None:
    """What `python -m trainer promote` does: atomically rewrite promoted.json."""
    tmp = models_dir / f".promoted.{uuid.uuid4().hex}.json"
    tmp.write_text(json.dumps({"name": name, "promoted_at": time.time()}))
    os.replace(tmp, models_dir / "promoted.json")


def promoted_model(models_dir: Path) -> dict[str, str]:
    """{"name", "version"} of the model promoted in models_dir, as a Verdict names it."""
    name = json.loads((models_dir / "promoted.json").read_text())["name"]
    meta = json.loads((models_dir / name / "metadata.json").read_text())
    return {"name": meta["name"], "version": str(meta["version"])}


@pytest.fixture(scope="session")
def worker_models_dir(tiny_models_dir, tmp_path_factory) -> Path:
    """A copy of the trainer's tiny_models_dir (a real trained tiny model promoted, a second one not)."""
    d = tmp_path_factory.mktemp("worker-models") / "models"
    shutil.copytree(tiny_models_dir, d)
    return d


class WorkerHandle(ManagedProcess):
    """One real `python -m inference_worker` subprocess."""

    stop_timeout = 15

    def __init__(self, proc: subprocess.Popen, name: str, redis_url: str, log_path: Path) -> None:
        self.proc, self.name, self.redis_url, self.log_path = proc, name, redis_url, log_path


def _registered(r: redis.Redis, name: str) -> bool:
    return bool(r.sismember("rq:workers", f"rq:worker:{name}"))


def launch_worker(redis_url: str, models_dir: Path, log_dir: Path, wait: bool = True, timeout: float = 120,
                  **env: str) -> WorkerHandle:
    """Start a real `python -m inference_worker` and (by default) wait until it registered in RQ."""
    name = f"w-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"{name}.log"
    # Heartbeat 1 s: a killed worker's job is found abandoned within ~6 s (production default: 5 s / 20 s).
    full_env = {**os.environ, "REDIS_URL": redis_url, "MODELS_DIR": str(models_dir),
                "WORKER_HEARTBEAT_S": "1", "WORKER_TF_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": str(REPO), **{k: str(v) for k, v in env.items()}}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "inference_worker", "--name", name], cwd=REPO,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT)
    handle = WorkerHandle(proc, name, redis_url, log_path)
    if wait:
        r = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        while not _registered(r, name):
            if not handle.alive:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{handle.log()[-3000:]}")
            if time.monotonic() > deadline:
                handle.kill()
                raise RuntimeError(f"worker not ready after {timeout}s:\n{handle.log()[-3000:]}")
            time.sleep(0.2)
    return handle


@pytest.fixture
def start_worker(tmp_path):
    """Factory: start_worker(redis_url, models_dir, wait=True, **env) -> WorkerHandle, ready (registered).

    The worker is a real subprocess (REDIS_URL, MODELS_DIR and **env in its environment; by default
    WORKER_HEARTBEAT_S=1 and WORKER_TF_THREADS=1, override them in **env); every one started is stopped
    at teardown. `handle.kill()` SIGKILLs it, `handle.alive`, `handle.log()` for its output.
    """
    started: list[WorkerHandle] = []

    def start(redis_url: str, models_dir: Path, wait: bool = True, timeout: float = 120, **env: str) -> WorkerHandle:
        handle = launch_worker(redis_url, models_dir, tmp_path, wait=wait, timeout=timeout, **env)
        started.append(handle)
        return handle

    yield start
    for h in started:
        h.stop()


@pytest.fixture(scope="session")
def face_jpeg(data_dir) -> bytes:
    """Bytes of one 256-px face JPEG from the shared sample's valid split (fake class)."""
    return sorted((data_dir / "valid" / "fake").glob("*.jpg"))[0].read_bytes()


@pytest.fixture(scope="session")
def face(data_dir):
    """One 256-px valid-split real face (a dataset crop) as a PIL RGB picture."""
    from PIL import Image
    return Image.open(sorted((data_dir / "valid" / "real").glob("*.jpg"))[3]).convert("RGB")


@pytest.fixture(scope="session")
def detector():
    """The worker's face detector, loaded once for the session."""
    from inference_worker.detector import Detector
    return Detector()
