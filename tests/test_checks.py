"""The bot core against a real Redis: submit (cache, TTL, JSON job) and outbox delivery (ack after send)."""

from __future__ import annotations

import asyncio
import json
import zlib
from dataclasses import replace

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from bot.checks import Busy, Checker, PermanentDeliveryError, TooLarge, deliver_forever, sha256_hex
from core.contract import JOB_FUNCTION, Verdict
from core.keys import OUTBOX_GROUP, SERVING_MODEL_KEY, cache_key, outbox_stream
from core.settings import Settings
from tests.conftest import free_port


def make_checker(redis_url: str, **kw) -> Checker:
    return Checker(replace(Settings(), redis_url=redis_url, **kw))


def verdict_json(request_id: str = "r1", label: str = "real", version: str = "v1") -> str:
    v = Verdict(request_id=request_id, label=label, p_fake=0.1, model={"name": "m", "version": version})
    return v.to_json()


def test_submit_stores_bytes_with_ttl_and_enqueues_json_job(redis_url):
    async def go():
        checker = make_checker(redis_url, image_ttl_s=300)
        try:
            return await checker.submit("telegram", {"chat_id": 5, "message_id": 9}, b"\xff\xd8 not really", "en")
        finally:
            await checker.close()

    sub = asyncio.run(go())
    assert sub.verdict is None
    r = redis.Redis.from_url(redis_url)
    key = f"zhenjia:image:{sub.request_id}"
    assert r.get(key) == b"\xff\xd8 not really"
    assert 0 < r.ttl(key) <= 300
    job = Job.fetch(sub.request_id, connection=r, serializer=JSONSerializer)
    assert job.func_name == JOB_FUNCTION
    (payload,) = job.args
    assert payload["reply_to"] == {"chat_id": 5, "message_id": 9}
    assert payload["lang"] == "en" and payload["image_key"] == key
    assert payload["image_sha256"] == sha256_hex(b"\xff\xd8 not really")
    assert job.retries_left == 2
    # The job data in Redis is (zlib-compressed) JSON, never pickle.
    stored = json.loads(zlib.decompress(r.hget(f"rq:job:{sub.request_id}", "data")))
    assert stored[2][0]["request_id"] == sub.request_id


def test_cache_hit_answers_without_a_job_only_for_the_serving_model(redis_url):
    data = b"viral forward"
    r = redis.Redis.from_url(redis_url)
    r.set(cache_key(sha256_hex(data)), verdict_json(version="v1"))

    async def submit():
        checker = make_checker(redis_url)
        try:
            return await checker.submit("line", {"to": "U1"}, data)
        finally:
            await checker.close()

    r.set(SERVING_MODEL_KEY, "m@v1")
    hit = asyncio.run(submit())
    assert hit.verdict is not None and hit.verdict.cached and hit.verdict.label == "real"
    assert r.llen("rq:queue:checks") == 0

    r.set(SERVING_MODEL_KEY, "m@v2")  # a newer model is served: the old verdict is not reused
    miss = asyncio.run(submit())
    assert miss.verdict is None
    assert r.llen("rq:queue:checks") == 1


def test_too_large_and_busy_queue(redis_url):
    async def go():
        checker = make_checker(redis_url, max_image_bytes=10, max_queue_length=1)
        try:
            with pytest.raises(TooLarge):
                await checker.submit("web", {}, b"x" * 11)
            await checker.submit("web", {}, b"first")
            with pytest.raises(Busy):
                await checker.submit("web", {}, b"second")
        finally:
            await checker.close()

    asyncio.run(go())


def test_redis_down_is_busy_not_a_crash():
    async def go():
        checker = make_checker(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(Busy):
                await checker.submit("telegram", {}, b"img")
        finally:
            await checker.close()

    asyncio.run(go())


def _xadd(r: redis.Redis, platform: str, request_id: str) -> None:
    payload = {"request_id": request_id, "platform": platform, "reply_to": {"chat_id": 1}}
    r.xadd(outbox_stream(platform), {"payload": json.dumps(payload), "verdict": verdict_json(request_id)})


def test_delivery_acks_only_after_send_and_survives_a_restart(redis_url):
    r = redis.Redis.from_url(redis_url)
    stream = outbox_stream("telegram")

    async def first_run():
        checker = make_checker(redis_url)
        started = asyncio.Event()

        async def hanging_send(payload, verdict):
            started.set()
            await asyncio.sleep(3600)  # the bot dies while sending

        task = asyncio.create_task(deliver_forever(checker, "telegram", hanging_send, consumer="bot-a"))
        await asyncio.sleep(0.3)
        _xadd(r, "telegram", "req-1")
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await checker.close()

    asyncio.run(first_run())
    assert r.xpending(stream, OUTBOX_GROUP)["pending"] == 1  # not acked: it was never sent

    async def second_run():
        checker = make_checker(redis_url)
        delivered: list[str] = []
        calls = 0

        async def flaky_send(payload, verdict):
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("chat platform hiccup")
            delivered.append(verdict.request_id)

        task = asyncio.create_task(deliver_forever(checker, "telegram", flaky_send, consumer="bot-a"))
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await checker.close()
        return delivered, calls

    delivered, calls = asyncio.run(second_run())
    assert delivered == ["req-1"] and calls == 2
    assert r.xpending(stream, OUTBOX_GROUP)["pending"] == 0


def test_permanent_delivery_error_is_acked_not_retried_forever(redis_url):
    r = redis.Redis.from_url(redis_url)

    async def go():
        checker = make_checker(redis_url)
        seen: list[str] = []

        async def send(payload, verdict):
            seen.append(verdict.request_id)
            if verdict.request_id == "blocked":
                raise PermanentDeliveryError("bot was blocked by the user")

        task = asyncio.create_task(deliver_forever(checker, "line", send, consumer="bot-b"))
        await asyncio.sleep(0.3)
        _xadd(r, "line", "blocked")
        _xadd(r, "line", "fine")
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        task.cancel()
        await checker.close()
        return seen

    assert asyncio.run(go()) == ["blocked", "fine"]
    assert r.xpending(outbox_stream("line"), OUTBOX_GROUP)["pending"] == 0
