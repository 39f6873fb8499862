"""The RQ job the bots enqueue, its failure callback, and the one way verdicts are published."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job

from . import metrics
from .rq_seams import another_try_follows
from core.contract import JobPayload, Verdict
from core.keys import cache_key, marked_key, outbox_stream, published_key, result_key
from core.settings import Settings

log = logging.getLogger(__name__)

OUTBOX_MAXLEN = 10_000
CACHEABLE = ("fake", "real", "unsure", "no_face")  # definitive answers; not expired bytes, not errors

# Set by the worker process at start (model + detector loaded once); lazily made otherwise.
PIPELINE: Any = None


def _pipeline() -> Any:
    global PIPELINE
    if PIPELINE is None:
        from .pipeline import Pipeline

        PIPELINE = Pipeline(Settings.from_env())
    return PIPELINE


def _connection() -> redis.Redis:
    job = get_current_job()
    if job is not None:
        return job.connection
    return redis.Redis.from_url(Settings.from_env().redis_url)


def publish(conn: redis.Redis, payload: dict[str, Any], verdict: Verdict, settings: Settings,
            marked: bytes | None = None) -> bool:
    """Deliver a verdict exactly once per request id; delete the image bytes. False if already published."""
    rid = verdict.request_id
    marker = published_key(rid)
    if marked is not None:
        verdict.marked_image_key = marked_key(rid)
    body = verdict.to_json()

    def txn(pipe: redis.client.Pipeline) -> bool:
        if pipe.exists(marker):
            return False
        pipe.multi()
        pipe.set(marker, 1, ex=max(settings.result_ttl_s, settings.image_ttl_s) * 2)
        if marked is not None:
            pipe.set(marked_key(rid), marked, ex=settings.image_ttl_s)
        if payload["platform"] == "web":
            pipe.rpush(result_key(rid), body)
            pipe.expire(result_key(rid), settings.result_ttl_s)
        else:
            pipe.xadd(outbox_stream(payload["platform"]), {"payload": json.dumps(payload), "verdict": body},
                      maxlen=OUTBOX_MAXLEN, approximate=True)
        if verdict.label in CACHEABLE and "image_expired" not in verdict.reasons and payload.get("image_sha256"):
            cached = Verdict.from_dict(verdict.to_dict())
            cached.marked_image_key = None  # the marked copy expires long before the cache entry
            pipe.set(cache_key(payload["image_sha256"]), cached.to_json(), ex=settings.cache_ttl_s)
        pipe.delete(payload["image_key"])
        return True

    # WATCH the marker: if another try publishes between our check and EXEC, ours is dropped and rechecked.
    done = conn.transaction(txn, marker, value_from_callable=True)
    log.info("published request=%s platform=%s label=%s model=%s new=%s", rid, payload["platform"],
             verdict.label, verdict.model.get("name"), done)
    return bool(done)


def check_image(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job: judge the stored image bytes of one request and publish the verdict."""
    started = time.time()
    try:
        return _check_image(payload, started)
    except Exception:  # counted, then RQ's failure handling goes on (a retry or the honest error)
        metrics.failed()
        raise


def _queue_wait_ms(job: JobPayload, started: float) -> float:
    """From the bot's receipt to the start of this try (retries' back-offs included); clocks of two hosts."""
    return round(max(0.0, started - job.received_at) * 1000, 1)


def _check_image(payload: dict[str, Any], started: float) -> dict[str, Any]:
    job = JobPayload.from_dict(payload)  # validates the platform before any work
    pipe = _pipeline()
    settings = pipe.settings  # the process's settings, read once at start, not again per job
    conn = _connection()
    data = conn.get(job.image_key)
    if data is None:
        clf = pipe.models.current
        verdict = Verdict(job.request_id, "unreadable", None, reasons=["image_expired"],
                          model={"name": clf.name, "version": clf.version},
                          timings_ms={"queue_wait": _queue_wait_ms(job, started)})
        publish(conn, payload, verdict, settings)
        metrics.checked(verdict)
        return verdict.to_dict()
    result = pipe.check(data, job.request_id, want_marked=job.want_marked)
    del data
    result.verdict.timings_ms["queue_wait"] = _queue_wait_ms(job, started)
    publish(conn, payload, result.verdict, settings, marked=result.marked)
    metrics.checked(result.verdict)
    log.info("checked request=%s label=%s faces=%d ms=%s", job.request_id, result.verdict.label,
             len(result.verdict.faces), result.verdict.timings_ms.get("total"))
    return result.verdict.to_dict()


def report_failure(job: Job, connection: redis.Redis, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ on_failure callback: honest `error` verdict, but only after the LAST try.

    RQ calls on_failure on every failed try (an exception in the job, or an abandoned job found by
    StartedJobRegistry.cleanup after its worker died), before it decides to retry: see
    rq_seams.another_try_follows for the RQ behaviour this relies on.
    """
    if another_try_follows(job):
        metrics.retried()
        log.warning("try_failed request=%s retries_left=%s error=%s", job.id, job.retries_left,
                    getattr(exc_type, "__name__", exc_type))
        return
    try:
        payload = job.args[0]
        JobPayload.from_dict(payload)
    except Exception:  # a payload we cannot answer to (bad platform): nothing to deliver to
        log.error("failed_unanswerable job=%s", job.id)
        return
    verdict = Verdict.failed(payload["request_id"])
    publish(connection, payload, verdict, Settings.from_env())
    metrics.checked(verdict)
    log.error("failed_after_last_try request=%s error=%s", job.id, getattr(exc_type, "__name__", exc_type))
