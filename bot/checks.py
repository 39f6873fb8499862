"""Platform-agnostic core of every adapter: submit an image for checking, deliver verdicts back.

`Checker.submit` answers from the verdict cache or stores the bytes in Redis (short TTL) and
enqueues the registered RQ job. `deliver_forever` reads a platform's outbox stream with a
consumer group and acknowledges each verdict only after the adapter's `send` succeeded, so a
bot that restarts mid-job still delivers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import redis
import redis.asyncio as aioredis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from bot import metrics
from bot.inflight import Inflight
from core.contract import DEFAULT_LANG, FAILURE_CALLBACK, JOB_FUNCTION, JobPayload, Verdict
from core.keys import OUTBOX_GROUP, SERVING_MODEL_KEY, cache_key, outbox_stream
from core.media import is_clip
from core.settings import Settings

log = logging.getLogger(__name__)

# Redis being down or unreachable: adapters answer "busy" and keep running.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class Busy(Exception):
    """The queue is too long or Redis is unreachable: tell the user to try again later."""


class Unavailable(Busy):
    """Redis cannot be reached (restarting, most likely): a different sentence than a long queue."""


class TooLarge(Exception):
    """The picture or clip is larger than the service (or the platform) accepts; `limit` in bytes if known."""

    def __init__(self, detail: str, limit: int | None = None) -> None:
        super().__init__(detail)
        self.limit = limit


class PermanentDeliveryError(Exception):
    """`send` raises this when retrying can never succeed (bot blocked, chat gone)."""


@dataclass
class Submission:
    request_id: str
    verdict: Verdict | None = None  # set when answered from the cache: nothing was enqueued


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Checker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3,
                                             health_check_interval=10)
        # Group modes, languages and the checks in flight: a separate, persisted Redis when configured.
        self.state = self.redis if settings.state_url == settings.redis_url else aioredis.Redis.from_url(
            settings.state_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=10)
        self.inflight = Inflight(self.state, self.redis)
        # RQ speaks the synchronous client; it is only used from a worker thread.
        self._sync = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self.queue = Queue(settings.queue_name, connection=self._sync, serializer=JSONSerializer)

    async def close(self) -> None:
        if self.state is not self.redis:
            await self.state.aclose()
        await self.redis.aclose()
        self._sync.close()

    async def cached(self, sha: str) -> Verdict | None:
        """A cached verdict for these bytes, if the model that made it is still the one served."""
        raw, serving = await self.redis.mget(cache_key(sha), SERVING_MODEL_KEY)
        if raw is None:
            return None
        verdict = Verdict.from_dict(json.loads(raw))
        made_by = f"{verdict.model.get('name')}@{verdict.model.get('version')}"
        if serving is not None and serving.decode() != made_by:
            return None
        verdict.cached = True
        verdict.marked_image_key = None  # marked images are not kept beyond the check
        return verdict

    async def submit(self, platform: str, reply_to: dict[str, Any], data: bytes, lang: str = DEFAULT_LANG,
                     want_marked: bool = True) -> Submission:
        """Answer from the cache, or store the bytes with a TTL and enqueue a check."""
        limit = self.settings.max_video_bytes if is_clip(data) else self.settings.max_image_bytes
        if len(data) > limit:
            raise TooLarge(f"{len(data)} bytes > {limit}", limit)
        sha = sha256_hex(data)
        payload = JobPayload.new(platform, reply_to, sha, lang=lang, want_marked=want_marked)
        try:
            hit = await self.cached(sha)
            if hit is not None:
                hit.request_id = payload.request_id
                log.info("cache_hit platform=%s sha=%s label=%s", platform, sha[:12], hit.label)
                metrics.answered_from_cache(platform, hit)
                return Submission(payload.request_id, hit)
            # The web page waits on its own request; chat checks are remembered until their verdict comes.
            tracked = platform != "web" and await self.state_op(self.inflight.track, platform, payload.request_id,
                                                                 reply_to)
            try:
                await asyncio.to_thread(self._enqueue, payload, data)
            except BaseException:
                if tracked:
                    await self.state_op(self.inflight.forget, platform, payload.request_id)
                raise
        except REDIS_ERRORS as exc:
            raise Unavailable(f"redis unavailable: {type(exc).__name__}") from exc
        log.info("enqueued platform=%s request=%s sha=%s bytes=%d", platform, payload.request_id, sha[:12],
                 len(data))
        return Submission(payload.request_id)

    async def state_op(self, op: Callable[..., Awaitable[Any]], *args: Any, want: bool = False) -> Any:
        """Run a state-Redis operation; a state Redis that is down must not stop checks (they go on, untracked).

        Returns whether it ran, or with `want=True` what it returned (None when the state Redis is down)."""
        try:
            result = await op(*args)
            return result if want else True
        except REDIS_ERRORS as exc:
            log.warning("state_unavailable op=%s error=%s", op.__name__, type(exc).__name__)
            return None if want else False

    def _enqueue(self, payload: JobPayload, data: bytes) -> None:
        waiting = self.queue.count  # one LLEN, not one per use
        if waiting >= self.settings.max_queue_length:
            raise Busy(f"queue length {waiting} >= {self.settings.max_queue_length}")
        s = self.settings
        self._sync.set(payload.image_key, data, ex=s.image_ttl_s)
        retry = Retry(max=s.job_retries, interval=[1, 3, 10][: s.job_retries]) if s.job_retries else None
        self.queue.enqueue(
            JOB_FUNCTION, payload.to_dict(), job_id=payload.request_id, retry=retry,
            on_failure=Callback(FAILURE_CALLBACK), job_timeout=s.job_timeout_s,
            result_ttl=s.result_ttl_s, failure_ttl=s.result_ttl_s, ttl=s.image_ttl_s,
        )


Send = Callable[[dict[str, Any], Verdict], Awaitable[None]]


async def deliver_forever(checker: Checker, platform: str, send: Send, consumer: str | None = None,
                          max_attempts: int = 5, idle_reclaim_ms: int = 60_000) -> None:
    """Deliver verdicts from the platform's outbox; ack only after `send` succeeded.

    Survives Redis outages (retries with back-off) and bot restarts (pending entries of this
    consumer are re-read first; entries stuck with a dead consumer are reclaimed when idle).
    """
    r = checker.redis
    stream = outbox_stream(platform)
    consumer = consumer or socket.gethostname()
    attempts: dict[bytes, int] = {}
    backoff = 0.5
    group_ready = False
    read_pending = True
    while True:
        try:
            if not group_ready:
                try:
                    await r.xgroup_create(stream, OUTBOX_GROUP, id="0", mkstream=True)
                except redis.exceptions.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                group_ready = True
            if read_pending:
                # Our own unacknowledged entries (from before a restart) plus stale ones of others.
                _, claimed, _ = await r.xautoclaim(stream, OUTBOX_GROUP, consumer, idle_reclaim_ms, "0-0",
                                                   count=50)
                mine = await r.xreadgroup(OUTBOX_GROUP, consumer, {stream: "0"}, count=50)
                entries = list(claimed) + (mine[0][1] if mine else [])
                read_pending = False
            else:
                got = await r.xreadgroup(OUTBOX_GROUP, consumer, {stream: ">"}, count=10, block=2000)
                entries = got[0][1] if got else []
            backoff = 0.5
            for entry_id, fields in entries:
                if not fields:  # deleted entry still in the pending list
                    await r.xack(stream, OUTBOX_GROUP, entry_id)
                    continue
                if not await _deliver_one(r, stream, entry_id, fields, send, attempts, max_attempts):
                    read_pending = True
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS as exc:
            log.warning("outbox_redis_unavailable platform=%s error=%s retry_in=%.1fs", platform,
                        type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            group_ready, read_pending = False, True
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted empty: the group must be made again
                group_ready = False
                continue
            raise


async def _deliver_one(r: aioredis.Redis, stream: str, entry_id: bytes, fields: dict, send: Send,
                       attempts: dict[bytes, int], max_attempts: int) -> bool:
    """Send one outbox entry; True when it is done with (acked), False to retry it later."""
    payload = json.loads(fields[b"payload"])
    verdict = Verdict.from_dict(json.loads(fields[b"verdict"]))
    try:
        await send(payload, verdict)
        metrics.delivered(payload.get("platform"), verdict)
    except PermanentDeliveryError as exc:
        log.warning("delivery_dropped request=%s reason=%s", payload.get("request_id"), exc)
        metrics.delivery_failed(payload.get("platform"), "dropped")
    except Exception as exc:  # a network error to the chat platform: keep it pending
        n = attempts[entry_id] = attempts.get(entry_id, 0) + 1
        if n < max_attempts:
            log.warning("delivery_retry request=%s attempt=%d error=%s", payload.get("request_id"), n,
                        type(exc).__name__)
            metrics.delivery_failed(payload.get("platform"), "retry")
            await asyncio.sleep(min(2 ** n, 30))
            return False
        log.error("delivery_gave_up request=%s attempts=%d error=%s", payload.get("request_id"), n,
                  type(exc).__name__)
        metrics.delivery_failed(payload.get("platform"), "gave_up")
    attempts.pop(entry_id, None)
    await r.xack(stream, OUTBOX_GROUP, entry_id)
    return True
