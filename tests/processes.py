"""`ManagedProcess`: what the tests' handles on real subprocesses (bot, worker) share."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


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
