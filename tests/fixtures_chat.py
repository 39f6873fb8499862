"""Fixtures for chat tests (see tests/conftest.py): stand-in platforms, the real bot process, a worker.

The chat e2e tests run the WHOLE `python -m bot` process pointed at the stand-in servers, a real
`python -m inference_worker` process with a tiny real Keras model, and a real Redis. Workers and
bots are shared per test module (TensorFlow start-up is the slow part on 2 cores); each test gets
clean chat state (modes, limits, albums, verdict cache) and fresh stand-in records.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from tests.fixtures_worker import WorkerHandle, promote_model, write_tiny_model
from tests.processes import ManagedProcess
from tests.standins.line_api import LineStandin
from tests.standins.telegram_api import TelegramStandin

REPO = Path(__file__).resolve().parent.parent
LINE_SECRET = "line-test-channel-secret"
CHAT_KEYS = ("zhenjia:cache:*", "zhenjia:mode:*", "zhenjia:rate:*", "zhenjia:album:*", "zhenjia:lang:*",
             "zhenjia:event:*", "zhenjia:inflight:*")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BotProcess(ManagedProcess):
    """A real `python -m bot` subprocess pointed at the stand-ins; can be killed and restarted."""

    def __init__(self, env: dict[str, str], log_path: Path, telegram: TelegramStandin | None) -> None:
        self.env, self.log_path, self.telegram = env, log_path, telegram
        self.web_url = f"http://127.0.0.1:{env['WEB_PORT']}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "BotProcess":
        mark = len(self.telegram.calls_to("deleteWebhook")) if self.telegram else 0
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot"], cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"bot exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            web_up = _port_open(int(self.env["WEB_PORT"]))
            # start_polling begins with deleteWebhook: after it, updates are being fetched.
            polling = self.telegram is None or len(self.telegram.calls_to("deleteWebhook")) > mark
            if web_up and polling:
                return self
            if time.time() > deadline:
                pytest.fail(f"bot not ready after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bot_env(redis_url: str, telegram: TelegramStandin | None, line: LineStandin | None, **extra: str) -> dict:
    """The environment of a `python -m bot` pointed at the stand-ins (only the given platforms)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "LINE_"))}
    port = _free_port()
    env.update({"REDIS_URL": redis_url, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port),
                "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",  # LINE's marked images: the bot's own web page
                "BOT_INSTANCE": f"bot-{uuid.uuid4().hex[:6]}", "LOG_LEVEL": "INFO", "PYTHONPATH": str(REPO),
                "USER_RATE_PER_MIN": "100", "CHAT_RATE_PER_MIN": "100"})
    if telegram is not None:
        env.update({"TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_API_BASE_URL": telegram.base_url,
                    "TELEGRAM_API_FILE_URL": telegram.file_url})
    if line is not None:
        env.update({"LINE_CHANNEL_SECRET": LINE_SECRET, "LINE_CHANNEL_ACCESS_TOKEN": line.access_token,
                    "LINE_API_HOST": line.url, "LINE_DATA_API_HOST": line.url})
    env.update(extra)
    return env


def spawn_worker(redis_url: str, models_dir: Path, log_path: Path, timeout: float = 120) -> WorkerHandle:
    """A real `python -m inference_worker` for the chat tests, waited on until RQ lists it."""
    name = f"chatw-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "REDIS_URL": redis_url, "MODELS_DIR": str(models_dir), "WORKER_HEARTBEAT_S": "1",
           "WORKER_TF_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "inference_worker", "--name", name], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    handle = WorkerHandle(proc, name, redis_url, log_path)
    r = redis.Redis.from_url(redis_url)
    deadline = time.time() + timeout
    while not r.sismember("rq:workers", f"rq:worker:{name}"):
        if not handle.alive:
            pytest.fail(f"worker exited with {proc.returncode}:\n{handle.log()[-3000:]}")
        if time.time() > deadline:
            handle.stop()
            pytest.fail(f"worker not ready after {timeout}s:\n{handle.log()[-3000:]}")
        time.sleep(0.2)
    return handle


@pytest.fixture(scope="session")
def chat_models_dir(tmp_path_factory) -> Path:
    """Two tiny real models: `always_fake` (promoted) and `always_real`, so verdicts are deterministic.

    A huge output bias makes the untrained network answer the same label for every face, which is
    what group-mode tests need (answer on fake, stay silent on real).
    """
    d = tmp_path_factory.mktemp("chat-models")
    write_tiny_model(d, "always_real", "1", bias=-12.0, promote=False)
    write_tiny_model(d, "always_fake", "1", bias=12.0, promote=True)
    return d


def promote(models_dir: Path, name: str) -> None:
    """Make the worker serve `name` from its next job on (it notices promoted.json change)."""
    promote_model(models_dir, name)


@pytest.fixture(scope="session")
def telegram_api() -> Iterator[TelegramStandin]:
    server = TelegramStandin().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def line_api() -> Iterator[LineStandin]:
    server = LineStandin().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_redis_url(redis_server) -> str:
    """A database of the session Redis kept for one chat test module (db 5, flushed at module start)."""
    url = redis_server["url"] + "/5"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def chat_worker(chat_redis_url, chat_models_dir, tmp_path_factory) -> Iterator[WorkerHandle]:
    log_path = tmp_path_factory.mktemp("chat-worker") / "worker.log"
    handle = spawn_worker(chat_redis_url, chat_models_dir, log_path)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def chat_bot(chat_redis_url, telegram_api, line_api, tmp_path_factory) -> Iterator[BotProcess]:
    """The real `python -m bot` (Telegram + LINE + web) for one test module."""
    log_path = tmp_path_factory.mktemp("chat-bot") / "bot.log"
    bot = BotProcess(bot_env(chat_redis_url, telegram_api, line_api), log_path, telegram_api).start()
    yield bot
    bot.stop()


@pytest.fixture
def chat(chat_redis_url, chat_models_dir, telegram_api, line_api) -> dict[str, Any]:
    """Per test: clean chat keys and stand-in records, `always_fake` promoted."""
    r = redis.Redis.from_url(chat_redis_url)
    for pattern in CHAT_KEYS:
        for key in r.scan_iter(pattern):
            r.delete(key)
    telegram_api.reset()
    line_api.reset()
    promote_model(chat_models_dir, "always_fake")
    return {"redis": r, "tg": telegram_api, "line": line_api, "models": chat_models_dir}


def face_bytes(data_dir: Path, split: str = "valid", label: str = "fake", n: int = 1, skip: int = 0) -> list[bytes]:
    """`n` sample JPEG files (bytes) in a stable order."""
    files = sorted((data_dir / split / label).glob("*.jpg"))[skip:skip + n]
    return [f.read_bytes() for f in files]
