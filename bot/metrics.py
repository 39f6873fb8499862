"""The bot process's Prometheus metrics, served at GET /metrics on the web port (README: Metrics).

Counters are bumped where things happen (one call each: verdicts delivered in bot/checks.py and bot/web.py,
refusals in bot/web.py and the chat flow); the Redis-side gauges (queue length, live workers, Redis up)
are read once per scrape by `refresh` with the bot's async Redis client, then `render` writes the standard
exposition format. Every counting function here swallows its own errors: metrics never break a delivery.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from rq import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from core.contract import LABELS, PLATFORMS
from core.metrics import LATENCY_BUCKETS_S, STAGES, stage_seconds

log = logging.getLogger(__name__)

CHAT_PLATFORMS = tuple(p for p in PLATFORMS if p != "web")
REFUSED_REASONS = ("busy", "unavailable", "too_large", "rate_limited")
DELIVERY_KINDS = ("retry", "dropped", "gave_up")
OTHER = "other"  # any platform / label / reason outside the known ones: label sets stay bounded

# A scrape must answer even when Redis hangs: the gauges then say Redis is down.
REFRESH_TIMEOUT_S = 2.0
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)

CHECKS = Counter("zhenjia_checks", "Verdicts answered (chats: after the platform accepted the reply; "
                 "web: returned by POST /api/check), cache hits included", ["platform", "label"])
CACHE_HITS = Counter("zhenjia_cache_hits", "Checks answered from the verdict cache, without a worker",
                     ["platform"])
REFUSED = Counter("zhenjia_submit_refused", "Pictures refused before a check: busy (queue full), unavailable "
                  "(Redis down), too_large, rate_limited", ["platform", "reason"])
DELIVERY_FAILURES = Counter("zhenjia_delivery_failures", "Chat replies that failed: retry (kept, tried again), "
                            "dropped (chat gone or bot blocked), gave_up (after the last attempt)",
                            ["platform", "kind"])
CHECK_SECONDS = Histogram("zhenjia_check_seconds", "Seconds per stage of delivered (not cached) checks, from "
                          "the verdict's timings_ms", ["stage"], buckets=LATENCY_BUCKETS_S)
QUEUE_LENGTH = Gauge("zhenjia_queue_length", "Checks waiting in the RQ queue (NaN while Redis is down)")
WORKERS = Gauge("zhenjia_workers", "Live inference workers on the queue (NaN while Redis is down)")
REDIS_UP = Gauge("zhenjia_redis_up", "1 when Redis answered this scrape, 0 otherwise")

# Every known series exists from the start at 0: rates and alerts work before the first event.
for _p in PLATFORMS:
    CACHE_HITS.labels(_p)
    for _l in LABELS:
        CHECKS.labels(_p, _l)
    for _r in REFUSED_REASONS:
        REFUSED.labels(_p, _r)
for _p in CHAT_PLATFORMS:
    for _k in DELIVERY_KINDS:
        DELIVERY_FAILURES.labels(_p, _k)
for _s in STAGES:
    CHECK_SECONDS.labels(_s)


def _one_of(value: Any, known: tuple[str, ...]) -> str:
    return value if value in known else OTHER


def _fields(verdict: Any) -> tuple[Any, dict, bool]:
    """(label, timings_ms, cached) of a core.contract.Verdict or of its JSON dict (the web path)."""
    if isinstance(verdict, dict):
        return verdict.get("label"), verdict.get("timings_ms") or {}, bool(verdict.get("cached"))
    return verdict.label, verdict.timings_ms or {}, bool(verdict.cached)


def delivered(platform: Any, verdict: Any) -> None:
    """A verdict reached its user: count it; a fresh (not cached) one also feeds the stage histograms."""
    try:
        label, timings, cached = _fields(verdict)
        CHECKS.labels(_one_of(platform, PLATFORMS), _one_of(label, LABELS)).inc()
        if not cached:  # a cached verdict's timings are those of the check that made it, long ago
            for stage, seconds in stage_seconds(timings):
                CHECK_SECONDS.labels(stage).observe(seconds)
    except Exception:  # never let counting break a delivery
        log.exception("metrics_error where=delivered")


def answered_from_cache(platform: Any, verdict: Any) -> None:
    """Checker.submit answered from the verdict cache (every platform, the web included)."""
    try:
        label, _, _ = _fields(verdict)
        p = _one_of(platform, PLATFORMS)
        CACHE_HITS.labels(p).inc()
        CHECKS.labels(p, _one_of(label, LABELS)).inc()
    except Exception:
        log.exception("metrics_error where=answered_from_cache")


def count_refused(platform: Any, reason: str) -> None:
    """A picture refused before a check; reason: busy | unavailable | too_large | rate_limited."""
    try:
        REFUSED.labels(_one_of(platform, PLATFORMS), _one_of(reason, REFUSED_REASONS)).inc()
    except Exception:
        log.exception("metrics_error where=count_refused")


def delivery_failed(platform: Any, kind: str) -> None:
    """A chat reply failed; kind: retry | dropped | gave_up (bot/checks.py `_deliver_one`)."""
    try:
        DELIVERY_FAILURES.labels(_one_of(platform, PLATFORMS), _one_of(kind, DELIVERY_KINDS)).inc()
    except Exception:
        log.exception("metrics_error where=delivery_failed")


def queue_key(queue_name: str) -> str:
    """RQ's list of waiting job ids for a queue (what `Queue.count` reads)."""
    return Queue.redis_queue_namespace_prefix + queue_name


async def _read_redis(r: Any, queue_name: str) -> tuple[int, int]:
    """(LLEN of the queue, workers on the queue whose RQ key has not expired)."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.llen(queue_key(queue_name))
        pipe.smembers(WORKERS_BY_QUEUE_KEY % queue_name)
        length, members = await pipe.execute()
    alive = 0
    if members:  # a worker killed without cleanup stays in the set until its key's TTL ran out
        async with r.pipeline(transaction=False) as pipe:
            for key in members:
                pipe.exists(key)
            alive = sum(await pipe.execute())
    return int(length), int(alive)


async def refresh(r: Any, queue_name: str, timeout_s: float = REFRESH_TIMEOUT_S) -> bool:
    """Read the Redis-side gauges now (once per scrape); False (and redis_up 0) when Redis did not answer."""
    try:
        length, alive = await asyncio.wait_for(_read_redis(r, queue_name), timeout_s)
    except _REDIS_ERRORS as exc:
        log.warning("metrics_redis_unavailable error=%s", type(exc).__name__)
        REDIS_UP.set(0)
        QUEUE_LENGTH.set(math.nan)
        WORKERS.set(math.nan)
        return False
    REDIS_UP.set(1)
    QUEUE_LENGTH.set(length)
    WORKERS.set(alive)
    return True


def render(accept: str | None = None) -> tuple[bytes, str]:
    """The default registry and its Content-Type, negotiated on the scraper's Accept header like the client's
    own HTTP server does (the workers'): Prometheus' text format 0.0.4, or OpenMetrics when asked for."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type
