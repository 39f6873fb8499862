"""What a chat platform adapter is (`Platform`), and the base every adapter subclasses (`ChatAdapter`).

A new platform is one module `bot/<name>.py` with a class `Adapter(checker, settings, web_app)` that
subclasses `ChatAdapter`, plus its settings (bot/settings.py, .env.example). `python -m bot` starts and
stops it and feeds it the finished checks of its outbox; the shared `ChatFlow` (bot/flow.py) calls its
`deliver` (which sends through the adapter's `post`) and `working`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from typing import Any, Awaitable, Callable, Protocol

from bot.checks import Checker, PermanentDeliveryError
from bot.flow import Chat, ChatFlow, Picture
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

ALBUM_WAIT_S = 1.0  # Telegram sends an album as separate messages, all within this of the first
REPLY_TOKEN_MAX_AGE_S = 25.0  # LINE documents ~1 min; tokens have been seen to die after ~30 s


class TokenRefused(Exception):
    """The platform refused an event's reply token (expired, or used already): a push still works."""


class Platform(Protocol):
    """The adapter interface."""

    name: str  # "telegram", "line": the outbox stream and the key namespace of its chats
    wants_marked: bool  # whether `deliver` can show the worker's marked copy of a picture
    flow: ChatFlow  # its flow (python -m bot hands it the checks that vanished with Redis)
    sdk_errors: tuple[type[Exception], ...]  # what its SDK raises when the platform refuses a call

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
    """The parts of `Platform` every adapter shares; a subclass sets `name` (and `wants_marked`, `sdk_errors`),
    translates its platform's events into `message` / `say` calls with the flow's `Chat` and `Picture`, and
    implements `post`, `start` and `stop` (and `working` where the platform has a typing sign).

    Shared here: the download limit, replying with a reply token or pushing, immediate answers (`say`), the
    gathering of an album whose parts arrive without a count, and handling events in the background.
    """

    name = ""
    wants_marked = False
    sdk_errors: tuple[type[Exception], ...] = ()
    flow: ChatFlow
    settings: BotSettings
    _tasks: set[asyncio.Task] | None = None
    _gathering: dict[str, list[Any]] | None = None

    def __init__(self, checker: Checker, settings: BotSettings, platform_limit: int | None = None) -> None:
        """`platform_limit`: the largest download the platform allows, where it has one below ours."""
        self.settings = settings
        limit = settings.service.max_upload_bytes
        self.flow = ChatFlow(self, checker, settings, min(limit, platform_limit or limit))

    async def send(self, payload: dict[str, Any], verdict: Verdict) -> None:
        """Deliver one finished check from the outbox (through the flow: album and `fake`-mode rules)."""
        await self.flow.send(payload, verdict)

    async def working(self, chat: Chat) -> None:
        return None  # a platform without a typing sign

    # --- putting text into chats -------------------------------------------------------
    async def deliver(self, reply_to: dict[str, Any], text: str, request_id: str,
                      verdict: Verdict | None = None) -> None:
        """A reply with the event's reply token while it is fresh (on LINE replies are free, pushes count
        against the plan's quota), else a push under a retry key that makes a retried push arrive once."""
        token = reply_to.get("reply_token")
        if token and time.time() - float(reply_to.get("event_ts", 0)) < REPLY_TOKEN_MAX_AGE_S:
            try:
                await self.post(reply_to, text, verdict, token=token)
                log.info("sent platform=%s via=reply request=%s", self.name, request_id)
                return
            except TokenRefused:
                log.info("reply_token_refused platform=%s request=%s", self.name, request_id)
        retry_key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"zhenjia:{request_id}"))
        await self.post(reply_to, text, verdict, retry_key=retry_key)
        log.info("sent platform=%s via=push request=%s", self.name, request_id)

    async def post(self, reply_to: dict[str, Any], text: str, verdict: Verdict | None,
                   token: str | None = None, retry_key: str = "") -> None:
        """Put `text` into the chat `reply_to` names, quoting the picture, with its marked copy if `verdict`
        has one: a reply with `token`, else a push under `retry_key` (a platform without either ignores them).

        Raise `TokenRefused` when the platform refused `token`, `PermanentDeliveryError` when no retry can
        succeed (blocked, left the chat)."""
        raise NotImplementedError

    async def say(self, reply_to: dict[str, Any], text: str | None) -> None:
        """An immediate short answer (help, busy, mode…), e.g. to a `Chat.answer_to`; failures are only
        logged (the user may send again)."""
        if not text:
            return
        try:
            await self.deliver(reply_to, text, f"answer-{uuid.uuid4().hex}")
        except (PermanentDeliveryError, *self.sdk_errors) as exc:
            log.warning("answer_failed platform=%s error=%s", self.name, type(exc).__name__)

    # --- events ------------------------------------------------------------------------
    async def message(self, chat: Chat, picture: Picture | None, album: str | None = None,
                      order: int = 0) -> None:
        """A message sent unasked: a picture or clip — alone, a numbered part of a set, or (`album` naming it,
        `order` its place) a part of an album without a count — is checked as the chat's mode says; anything
        else gets a hint in 1:1 chats."""
        if picture is None:
            await self.say(chat.answer_to, self.flow.hint(chat))
        elif album:
            self.gather_album(album, order, chat, picture)
        else:
            await self.say(chat.answer_to, await self.flow.picture(chat, picture))

    def gather_album(self, key: str, order: int, chat: Chat, picture: Picture) -> None:
        """One part of an album whose parts arrive as separate events without a count (Telegram's): checked
        with the parts that arrive within ALBUM_WAIT_S of the first, as one album numbered by `order`.

        Every part answers where the first does, and the one combined answer quotes it. Parts that straggle
        in after the wait form an album of their own.
        """
        async def check(parts: list[tuple[int, Chat, Picture]]) -> None:
            parts.sort(key=lambda part: part[0])
            first, first_chat, first_picture = parts[0]
            album = {"album": f"{key}:{first}", "album_size": len(parts)}
            pictures = [replace(p, reply_to=first_picture.reply_to | album | {"album_index": i},
                                request_id=f"album-{album['album']}-{i}") for i, (_, _, p) in enumerate(parts)]
            await self.say(first_chat.answer_to, await self.flow.album(first_chat, pictures))

        self.gather(key, (order, chat, picture), ALBUM_WAIT_S, check)

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
