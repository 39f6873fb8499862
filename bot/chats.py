"""Per-chat state the adapters share, kept in Redis: group modes, rate limits, albums, languages.

Everything here survives a bot restart and works with several bot processes. What users chose (modes,
languages) lives in the state Redis (STATE_REDIS_URL, persisted), so it also survives a Redis restart;
rate-limit windows and album collections are short-lived and stay in the queue Redis. When Redis is down
the read paths fail open (default mode, no rate limit): the submit that follows says "restarting".
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis

from bot.checks import REDIS_ERRORS
from bot.messages import is_suspicious
from core.contract import Verdict
from core.keys import album_key, lang_key, mode_key, rate_key

log = logging.getLogger(__name__)

ALBUM_TTL_S = 3600  # an album whose last verdict never comes is forgotten after this


class ChatState:
    """Group modes, rate limits, album collection and cached languages for one platform."""

    def __init__(self, r: aioredis.Redis, platform: str, user_rate_per_min: int, chat_rate_per_min: int,
                 state: aioredis.Redis | None = None) -> None:
        self.redis = r  # rate limits and albums: short-lived, in the queue Redis
        self.state = state if state is not None else r  # what users chose: the durable state Redis
        self.platform = platform
        self.user_rate = user_rate_per_min
        self.chat_rate = chat_rate_per_min

    # --- group modes -----------------------------------------------------------------
    async def get_mode(self, chat_id: str | int, is_group: bool) -> str:
        """`all` | `fake` | `off`; groups default to `fake` (no noise), one-to-one chats to `all`."""
        default = "fake" if is_group else "all"
        try:
            raw = await self.state.get(mode_key(self.platform, chat_id))
        except REDIS_ERRORS:
            return default
        return raw.decode() if raw else default

    async def set_mode(self, chat_id: str | int, mode: str) -> None:
        await self.state.set(mode_key(self.platform, chat_id), mode)

    # --- rate limits -----------------------------------------------------------------
    async def allow(self, user_id: str | int | None, chat_id: str | int, cost: int = 1) -> tuple[bool, bool]:
        """(allowed, first_refusal): fixed one-minute windows per user and per chat; a clip costs more.

        `first_refusal` is true only for the first refused image of a window in that chat, so the
        polite message is sent once instead of once per image.
        """
        window = int(time.time() // 60)
        keys = [rate_key(self.platform, "chat", chat_id, window)]
        limits = [self.chat_rate]
        if user_id is not None:
            keys.append(rate_key(self.platform, "user", user_id, window))
            limits.append(self.user_rate)
        try:
            pipe = self.redis.pipeline()
            for key in keys:
                pipe.incrby(key, cost)
                pipe.expire(key, 120)
            counts = (await pipe.execute())[::2]
        except REDIS_ERRORS:
            return True, False
        if all(c <= limit for c, limit in zip(counts, limits)):
            return True, False
        try:
            told = await self.redis.set(rate_key(self.platform, "told", chat_id, window), 1, nx=True, ex=120)
        except REDIS_ERRORS:
            told = False
        return False, bool(told)

    # --- languages -------------------------------------------------------------------
    async def cached_lang(self, user_id: str) -> str | None:
        try:
            raw = await self.state.get(lang_key(self.platform, user_id))
        except REDIS_ERRORS:
            return None
        return raw.decode() if raw else None

    async def remember_lang(self, user_id: str, lang: str) -> None:
        try:
            await self.state.set(lang_key(self.platform, user_id), lang, ex=24 * 3600)
        except REDIS_ERRORS:
            pass

    # --- albums ----------------------------------------------------------------------
    async def add_to_album(self, album_id: str, size: int, index: int, reply_to: dict[str, Any],
                           verdict: Verdict) -> list[tuple[dict[str, Any], Verdict]] | None:
        """Record one picture's verdict; when all `size` are in, return them in order (once).

        Kept in Redis, not memory: the verdicts of one album may arrive across a bot restart.
        """
        key = album_key(self.platform, album_id)
        entry = json.dumps({"reply_to": reply_to, "verdict": verdict.to_dict()}, ensure_ascii=False)
        pipe = self.redis.pipeline()
        pipe.hset(key, str(index), entry)
        pipe.expire(key, ALBUM_TTL_S)
        pipe.hlen(key)
        _, _, count = await pipe.execute()
        if count < size:
            return None
        # Several deliveries (or bot instances) may see the album complete: only one answers.
        if not await self.redis.set(key + ":done", "1", nx=True, ex=ALBUM_TTL_S):
            return None
        raw = await self.redis.hgetall(key)
        items = sorted(((int(k), json.loads(v)) for k, v in raw.items()), key=lambda kv: kv[0])
        return [(d["reply_to"], Verdict.from_dict(d["verdict"])) for _, d in items]

    async def answer_album(self, reply_to: dict[str, Any], verdict: Verdict,
                           send: Callable[[list[tuple[dict[str, Any], Verdict]]], Awaitable[None]]) -> None:
        """Collect one album picture's verdict; once all are in, `send` the set's reply once.

        Stays silent (and forgets the album) when the group only wants suspicious pictures and none
        is; a failed `send` re-arms the album so that the retried delivery answers it.
        """
        album = reply_to["album"]
        done = await self.add_to_album(album, int(reply_to["album_size"]), int(reply_to["album_index"]),
                                       reply_to, verdict)
        if done is None:
            return
        if reply_to.get("only_suspicious") and not any(is_suspicious(v) for _, v in done):
            log.info("silent album size=%d", len(done))
            await self.album_sent(album)
            return
        try:
            await send(done)
        except Exception:
            await self.album_failed(album)
            raise
        await self.album_sent(album)

    async def album_sent(self, album_id: str) -> None:
        """Forget a delivered album's verdicts (the done marker stays until its TTL)."""
        await self.redis.delete(album_key(self.platform, album_id))

    async def album_failed(self, album_id: str) -> None:
        """Sending the combined reply failed: let the retried delivery try again."""
        await self.redis.delete(album_key(self.platform, album_id) + ":done")
