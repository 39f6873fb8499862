"""What a chat platform adapter is (`Platform`), and the base every adapter subclasses (`ChatAdapter`).

A new platform is one module `bot/<name>.py` with a class `Adapter(checker, settings, web_app)` that
subclasses `ChatAdapter`, plus its settings (bot/settings.py, .env.example). `python -m bot` starts and
stops it and feeds it the finished checks of its outbox; the shared `ChatFlow` (bot/flow.py) calls its
`deliver` and `working`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from core.contract import Verdict

if TYPE_CHECKING:
    from bot.flow import Chat, ChatFlow

log = logging.getLogger(__name__)


class Platform(Protocol):
    """The adapter interface."""

    name: str  # "telegram", "line": the outbox stream and the key namespace of its chats
    wants_marked: bool  # whether `deliver` can show the worker's marked copy of a picture
    flow: ChatFlow  # its flow (python -m bot hands it the checks that vanished with Redis)

    async def start(self) -> None:
        """Connect and start receiving events (must not block)."""

    async def stop(self) -> None:
        """Stop receiving events and close connections."""

    async def send(self, payload: dict[str, Any], verdict: Verdict) -> None:
        """Deliver one finished check (called by the outbox reader; raise to have it retried)."""

    async def deliver(self, reply_to: dict[str, Any], text: str, request_id: str,
                      verdict: Verdict | None = None) -> None:
        """Put `text` into the chat `reply_to` names, quoting the picture; with the marked picture if any.

        Raise `PermanentDeliveryError` when no retry can succeed (blocked, left the chat)."""

    async def working(self, chat: Chat) -> None:
        """A 'typing…' sign while a picture is checked (only a courtesy: what it raises is logged)."""


class ChatAdapter:
    """The parts of `Platform` every adapter shares; subclasses set `name`, `flow` and implement the rest."""

    name = ""
    wants_marked = False
    flow: ChatFlow
    _tasks: set[asyncio.Task] | None = None
    _gathering: dict[str, list[Any]] | None = None

    async def send(self, payload: dict[str, Any], verdict: Verdict) -> None:
        """Deliver one finished check from the outbox (through the flow: album and `fake`-mode rules)."""
        await self.flow.send(payload, verdict)

    async def working(self, chat: Chat) -> None:
        return None  # a platform without a typing sign

    def spawn(self, coro: Awaitable[None], what: str) -> None:
        """Run an event's handling in the background (the platform gets its 200 at once); errors are logged.

        One bad event must not take the others down, and asyncio only weakly references tasks: keep them.
        """
        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:
                log.error("event_error platform=%s event=%s error=%s detail=%s", self.name, what,
                          type(exc).__name__, str(exc)[:200])

        if self._tasks is None:
            self._tasks = set()
        task = asyncio.create_task(guarded(), name=f"{self.name}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def gather(self, key: str, item: Any, wait_s: float, handle: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Collect items that arrive as separate events under one key (an album without a count: Telegram's),
        then `handle` them together `wait_s` after the first; items later than that form a new group."""
        if self._gathering is None:
            self._gathering = {}
        if key not in self._gathering:
            async def later() -> None:
                await asyncio.sleep(wait_s)
                await handle(self._gathering.pop(key))

            self.spawn(later(), "gather")
        self._gathering.setdefault(key, []).append(item)

    async def cancel_tasks(self) -> None:
        """At stop: events still being handled are cancelled (their pictures were not yet enqueued or are)."""
        for task in list(self._tasks or ()):
            task.cancel()
        await asyncio.gather(*(self._tasks or ()), return_exceptions=True)
