"""`ManagedProcess`: what the tests' handles on real subprocesses (bot, worker) share; `start_redis` for tests
that stop and restart a Redis of their own."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis


def start_redis(port: int, aof_dir: Path | None = None) -> subprocess.Popen:
    """A redis-server on `port`: memory only, or with its append-only file in `aof_dir` (as STATE_REDIS_URL runs)."""
    persist = ["--appendonly", "no"]
    if aof_dir is not None:
        aof_dir.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(aof_dir)]
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             *persist], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


class ManagedProcess:
    """A subprocess whose output goes to `log_path`: alive, log, kill (a crash) and stop (graceful)."""

    proc: subprocess.Popen | None
    log_path: Path
    stop_timeout: float = 20  # seconds a SIGTERM may take before SIGKILL

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing gets cleaned up."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `stop_timeout`."""
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
