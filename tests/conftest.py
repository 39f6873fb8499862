"""Shared fixtures: a private real Redis per test session (never the machine's 6379)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis

# Each area keeps its fixtures in its own module so that parallel work does not collide.
pytest_plugins = ["tests.fixtures_model", "tests.fixtures_worker", "tests.fixtures_chat", "tests.fixtures_web"]

REPO = Path(__file__).resolve().parent.parent
# The committed 97-face set (tests/fixtures/faces/README.md): the first 16 faces of each split and class of
# the shared sample, so the suite runs on any fresh clone. FACES_DATA_DIR points at another copy.
DATA = Path(os.environ.get("FACES_DATA_DIR", REPO / "tests" / "fixtures" / "faces" / "real-vs-fake"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server on a free loopback port; yields its base URL (no db suffix)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs it)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    server = {"port": port, "url": f"redis://127.0.0.1:{port}", "proc": proc}
    yield server
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the private server for one test."""
    url = redis_server["url"] + "/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError:
        pass  # a test that stopped Redis cleans up after itself


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "train" / "real").is_dir():
        pytest.fail(f"no face data at {DATA} (the committed set, or FACES_DATA_DIR)")
    return DATA


def valid_faces(data_dir: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` valid faces of each class as a float32 batch of raw RGB, and their labels (1 = fake)."""
    from PIL import Image
    paths = [(p, y) for y, cls in enumerate(("real", "fake"))
             for p in sorted((data_dir / "valid" / cls).glob("*.jpg"))[:per_class]]
    return (np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p, _ in paths]),
            np.array([y for _, y in paths]))
