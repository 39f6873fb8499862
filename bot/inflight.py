"""The chat checks the bot still waits for, so that a check lost with Redis is admitted, never silently dropped.

Each chat picture is recorded in the durable state Redis (STATE_REDIS_URL, persisted) before its job is
enqueued, and forgotten when its verdict reaches the bot. A watcher looks at the records older than a few
seconds: while the job (or its published verdict) still exists in the queue Redis, the check is alive;
when neither does — the memory-only queue Redis restarted and took the job, its bytes and any unsent
verdict with it — the user is told once to send the picture again. Several bot processes may watch the
same platform: deleting the record decides which one tells.

A worker busy with a check while Redis restarted may still finish it and publish a verdict after the user was
told: that late verdict is dropped (one answer per picture).

A single-Redis deployment (no STATE_REDIS_URL) loses these records with everything else: nothing to tell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis
from rq.job import Job

from core.keys import inflight_key, published_key

log = logging.getLogger(__name__)

TOLD_MEMORY_S = 24 * 3600  # a worker that kept a job through a Redis restart answers within minutes, not a day
OnVanished = Callable[[str, dict[str, Any]], Awaitable[None]]


class Inflight:
    """Records in the state Redis; the queue Redis is only read."""

    def __init__(self, state: aioredis.Redis, queue: aioredis.Redis) -> None:
        self.state = state
        self.queue = queue

    async def track(self, platform: str, request_id: str, reply_to: dict[str, Any]) -> None:
        entry = json.dumps({"reply_to": reply_to, "at": time.time()}, ensure_ascii=False)
        await self.state.hset(inflight_key(platform), request_id, entry)

    async def mark_told(self, platform: str, request_id: str) -> None:
        """The user was asked to send again: a verdict that still turns up later must stay unsaid."""
        await self.state.set(f"{inflight_key(platform)}:told:{request_id}", 1, ex=TOLD_MEMORY_S)

    async def was_told(self, platform: str, request_id: str) -> bool:
        return bool(await self.state.exists(f"{inflight_key(platform)}:told:{request_id}"))

    async def forget(self, platform: str, request_id: str) -> bool:
        """The verdict (or a refusal) arrived: stop waiting. True when this call removed the record."""
        return bool(await self.state.hdel(inflight_key(platform), request_id))

    async def vanished(self, platform: str, older_than_s: float) -> list[tuple[str, dict[str, Any]]]:
        """Records older than `older_than_s` whose job and published verdict are both gone from the queue Redis."""
        raw = await self.state.hgetall(inflight_key(platform))
        now = time.time()
        old = [(rid.decode(), json.loads(v)) for rid, v in raw.items() if now - json.loads(v)["at"] > older_than_s]
        if not old:
            return []
        pipe = self.queue.pipeline(transaction=False)
        for rid, _ in old:
            pipe.exists(Job.key_for(rid), published_key(rid))
        alive = await pipe.execute()
        return [(rid, entry["reply_to"]) for (rid, entry), n in zip(old, alive) if n == 0]


async def watch_forever(inflight: Inflight, platform: str, on_vanished: OnVanished, every_s: float) -> None:
    """Every `every_s`: tell the users of checks that vanished (once each); Redis outages are waited out."""
    while True:
        await asyncio.sleep(every_s)
        try:
            for request_id, reply_to in await inflight.vanished(platform, older_than_s=every_s):
                if await inflight.forget(platform, request_id):  # another bot process may have told already
                    log.warning("check_vanished platform=%s request=%s", platform, request_id)
                    await inflight.mark_told(platform, request_id)
                    try:
                        await on_vanished(request_id, reply_to)
                    except Exception as exc:  # the chat refused; the record is gone, nothing to retry with
                        log.warning("vanished_notice_failed platform=%s error=%s", platform, type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis (either) unreachable: the next round looks again
            log.info("inflight_watch_skipped platform=%s error=%s", platform, type(exc).__name__)
