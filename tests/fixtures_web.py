"""Fixtures for the web page / API and process tests (see tests/conftest.py): a real `python -m bot`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BotProcess:
    """A running `python -m bot` and how to reach it."""

    proc: subprocess.Popen
    url: str  # base URL, no trailing slash
    log_path: Path
    redis_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_bot(redis_url: str, log_dir: Path, **env: str) -> BotProcess:
    """Start a real `python -m bot` (no chat tokens) and wait until it answers /healthz."""
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("TELEGRAM_", "LINE_"))}  # never reach real chat APIs from tests
    full_env.update({"REDIS_URL": redis_url, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port),
                     "PYTHONUNBUFFERED": "1", **env})
    log_path = log_dir / f"bot-{port}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "bot"], cwd=REPO, env=full_env, stdout=logf,
                                stderr=subprocess.STDOUT)
    bot = BotProcess(proc, f"http://127.0.0.1:{port}", log_path, redis_url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"python -m bot exited with {proc.returncode}:\n{bot.log()}")
        try:
            urllib.request.urlopen(bot.url + "/healthz", timeout=2).close()
            return bot
        except urllib.error.HTTPError:
            return bot  # 503: up, Redis is not
        except OSError:
            time.sleep(0.1)
    bot.stop(signal.SIGKILL)
    pytest.fail(f"python -m bot did not serve /healthz in 30 s:\n{bot.log()}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 120) -> Reply:
    """One HTTP request with the standard library (no client of ours in the way)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return Reply(res.status, dict(res.headers), res.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), err.read())


def multipart(field: str, filename: str, data: bytes, ctype: str = "image/jpeg") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file field, as a browser sends it."""
    boundary = "----zhenjiaTestBoundary7MA4YWxkTrZu0gW"
    buf = io.BytesIO()
    buf.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
              f"Content-Type: {ctype}\r\n\r\n".encode())
    buf.write(data)
    buf.write(f"\r\n--{boundary}--\r\n".encode())
    return buf.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_image(bot_url: str, data: bytes, filename: str = "face.jpg", ctype: str = "image/jpeg",
               headers: dict[str, str] | None = None, timeout: float = 120) -> Reply:
    body, h = multipart("image", filename, data, ctype)
    return http("POST", bot_url + "/api/check", body, {**h, **(headers or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def bot_without_worker(redis_server, tmp_path_factory) -> Iterator[BotProcess]:
    """A bot on its own Redis db and queue that no worker serves: waits time out, the queue fills up."""
    url = redis_server["url"] + "/7"
    redis.Redis.from_url(url).flushdb()
    bot = start_bot(url, tmp_path_factory.mktemp("bot-noworker"), QUEUE_NAME="web-no-worker", WEB_WAIT_S="1",
                    MAX_QUEUE_LENGTH="2", MAX_IMAGE_BYTES="300000")
    yield bot
    bot.stop()
    redis.Redis.from_url(url).flushdb()


@dataclass
class WebStack:
    """A bot and a real inference worker process on one Redis db: the web path end to end."""

    bot: BotProcess
    worker: Any  # tests.fixtures_worker.WorkerHandle
    worker_metrics_url: str = ""  # the worker's Prometheus /metrics (WORKER_METRICS_PORT)


@pytest.fixture(scope="session")
def web_stack(redis_server, worker_models_dir, tmp_path_factory) -> Iterator[WebStack]:
    """Real Redis + one real `python -m inference_worker` (tiny real model) + a real `python -m bot`.

    Session-scoped: the worker's start (TensorFlow, detector) is the expensive part, shared by the API and
    browser tests; it has its own db so other tests' flushes do not touch it.
    """
    from tests.fixtures_worker import launch_worker

    url = redis_server["url"] + "/8"
    redis.Redis.from_url(url).flushdb()
    logs = tmp_path_factory.mktemp("web-stack")
    metrics_port = _free_port()
    worker = launch_worker(url, worker_models_dir, logs, WORKER_METRICS_PORT=str(metrics_port))
    bot = start_bot(url, logs, MODELS_DIR=str(worker_models_dir))
    yield WebStack(bot, worker, f"http://127.0.0.1:{metrics_port}/metrics")
    bot.stop()
    worker.stop()
    redis.Redis.from_url(url).flushdb()
