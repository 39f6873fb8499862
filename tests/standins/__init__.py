"""Stand-in chat platform servers for tests: small aiohttp apps on 127.0.0.1, each in its own thread.

A thread (not the test's event loop) runs them so that synchronous tests, the real bot process and
the real clients all talk to them over real HTTP. Every request is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web


@dataclass
class Call:
    method: str  # API method name (Telegram) or path (LINE)
    params: dict[str, Any]
    at: float = field(default_factory=time.time)


class ThreadedServer:
    """Runs an aiohttp app on a free loopback port in a daemon thread; records calls."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition(self.lock)

    def make_app(self) -> web.Application:  # pragma: no cover - subclasses build their routes
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ThreadedServer":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._runner = web.AppRunner(self.make_app(), access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=type(self).__name__)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stand-in server did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def record(self, method: str, params: dict[str, Any]) -> None:
        with self._changed:
            self.calls.append(Call(method, params))
            self._changed.notify_all()

    def calls_to(self, *methods: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method in methods]

    def wait_for(self, methods: str | tuple[str, ...], predicate: Callable[[Call], bool] = lambda c: True,
                 timeout: float = 30.0, count: int = 1) -> list[Call]:
        """Block until `count` recorded calls to `methods` satisfy `predicate`; fail with what was seen."""
        methods = (methods,) if isinstance(methods, str) else methods
        deadline = time.time() + timeout
        with self._changed:
            while True:
                found = [c for c in self.calls if c.method in methods and predicate(c)]
                if len(found) >= count:
                    return found
                left = deadline - time.time()
                if left <= 0:
                    seen = [(c.method, {k: v for k, v in c.params.items() if k != "photo"}) for c in self.calls]
                    raise AssertionError(f"timed out waiting for {count} x {methods}; calls: {seen[-15:]}")
                self._changed.wait(min(left, 0.5))

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
