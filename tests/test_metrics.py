"""Prometheus metrics, scraped from real processes and parsed with prometheus_client's own parser.

- The bot's GET /metrics: a fresh `python -m bot` beside the session's real worker (tests/fixtures_web.py
  `web_stack`), one real check and one cache hit through the web API; refusals (too large, busy) and the
  queue gauges against a bot that no worker serves; Redis down.
- A worker's /metrics on WORKER_METRICS_PORT (the `web_stack` worker runs with it).
- The chat delivery hooks in bot/checks.py, driven through `deliver_forever` on a real Redis.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import uuid
from dataclasses import replace

import pytest
import redis
from PIL import Image
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.checks import Checker, PermanentDeliveryError, deliver_forever
from core.contract import FACE_LABELS, Verdict
from core.keys import outbox_stream
from core.metrics import STAGES
from core.settings import Settings
from tests.conftest import free_port
from tests.fixtures_web import http, post_image, start_bot


class Scrape:
    """One parsed /metrics answer: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, frozenset(s.labels.items())): s.value
                        for f in self.families.values() for s in f.samples}

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.samples.get((metric, frozenset(labels.items())))

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


def scrape(url: str) -> Scrape:
    res = http("GET", url, timeout=10)
    assert res.status == 200, res.body
    assert res.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(res.body.decode())


def unique_face(data_dir) -> bytes:
    """A test face re-encoded with a random JPEG comment: same pixels for the worker, bytes no cache knows."""
    src = sorted((data_dir / "test" / "fake").glob("*.jpg"))[5]
    buf = io.BytesIO()
    Image.open(src).save(buf, "JPEG", quality=95, comment=uuid.uuid4().hex.encode())
    return buf.getvalue()


def test_bot_metrics_count_a_real_check_and_a_cache_hit(web_stack, worker_models_dir, data_dir, tmp_path):
    # A bot of its own (counters from zero) on the session stack's Redis db, served by its worker.
    bot = start_bot(web_stack.bot.redis_url, tmp_path, MODELS_DIR=str(worker_models_dir))
    try:
        before = scrape(bot.url + "/metrics")
        assert before.value("zhenjia_checks_total", platform="web", label="fake") == 0  # series exist at 0
        assert before.value("zhenjia_check_seconds_count", stage="total") == 0

        data = unique_face(data_dir)
        res = post_image(bot.url, data)
        assert res.status == 200, res.body
        verdict = Verdict.from_dict(res.json())
        assert verdict.label in FACE_LABELS and verdict.cached is False
        assert verdict.timings_ms["queue_wait"] >= 0  # the worker adds it from JobPayload.received_at
        again = post_image(bot.url, data, timeout=10)
        assert again.status == 200 and again.json()["cached"] is True

        m = scrape(bot.url + "/metrics")
        assert m.families["zhenjia_checks"].type == "counter"
        assert m.value("zhenjia_checks_total", platform="web", label=verdict.label) == 2  # the check + the hit
        assert m.value("zhenjia_cache_hits_total", platform="web") == 1
        assert m.families["zhenjia_check_seconds"].type == "histogram"
        for stage in STAGES:  # the cache hit is not observed again: one check, each stage once
            assert m.value("zhenjia_check_seconds_count", stage=stage) == 1, stage
            assert m.value("zhenjia_check_seconds_bucket", stage=stage, le="+Inf") == 1
        assert m.value("zhenjia_check_seconds_sum", stage="total") == pytest.approx(
            verdict.timings_ms["total"] / 1000, rel=1e-6)
        assert m.value("zhenjia_redis_up") == 1
        queue = m.value("zhenjia_queue_length")
        assert isinstance(queue, float) and queue >= 0 and not math.isnan(queue)
        assert m.value("zhenjia_workers") >= 1
        assert m.value("zhenjia_submit_refused_total", platform="web", reason="busy") == 0
    finally:
        bot.stop()

    w = scrape(web_stack.worker_metrics_url)
    assert w.value("zhenjia_worker_jobs_total", label=verdict.label) >= 1
    assert w.value("zhenjia_worker_stage_seconds_count", stage="total") >= 1
    assert w.value("zhenjia_worker_stage_seconds_count", stage="queue_wait") >= 1
    assert w.value("zhenjia_worker_failures_total") >= 0 and w.value("zhenjia_worker_retries_total") >= 0
    assert w.labelled("zhenjia_worker_model_info") == [verdict.model]
    assert w.value("zhenjia_worker_model_info", **verdict.model) == 1
    assert w.families["zhenjia_worker_model_info"].type == "gauge"


def test_refusals_and_queue_gauges_without_a_worker(bot_without_worker, data_dir):
    bot = bot_without_worker  # MAX_QUEUE_LENGTH=2, MAX_IMAGE_BYTES=300000, WEB_WAIT_S=1, no worker
    big = post_image(bot.url, b"\xff\xd8" + b"\0" * 400_000)
    assert big.status == 413
    for _ in range(2):
        assert post_image(bot.url, unique_face(data_dir)).status == 504  # queued, nobody answers
    assert post_image(bot.url, unique_face(data_dir)).status == 503

    m = scrape(bot.url + "/metrics")
    assert m.value("zhenjia_submit_refused_total", platform="web", reason="too_large") == 1
    assert m.value("zhenjia_submit_refused_total", platform="web", reason="busy") == 1
    assert m.value("zhenjia_queue_length") == 2
    assert m.value("zhenjia_workers") == 0
    assert m.value("zhenjia_redis_up") == 1
    assert sum(m.value("zhenjia_checks_total", **labels) for labels in m.labelled("zhenjia_checks_total")) == 0


def test_metrics_answer_while_redis_is_down(tmp_path):
    bot = start_bot(f"redis://127.0.0.1:{free_port()}/0", tmp_path)  # nothing listens there
    try:
        m = scrape(bot.url + "/metrics")
        assert m.value("zhenjia_redis_up") == 0
        assert math.isnan(m.value("zhenjia_queue_length")) and math.isnan(m.value("zhenjia_workers"))
    finally:
        bot.stop()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_chat_delivery_hooks(redis_url):
    """bot/checks.py `_deliver_one`: delivered, dropped, retried then given up; counted per platform."""
    r = redis.Redis.from_url(redis_url)
    timings = {"queue_wait": 40.0, "decode": 3.0, "detect": 90.0, "classify": 20.0, "total": 115.0}
    for rid in ("blocked", "doomed", "fine"):
        payload = {"request_id": rid, "platform": "line", "reply_to": {"chat_id": 1}}
        v = Verdict(request_id=rid, label="unsure", p_fake=0.5, model={"name": "m", "version": "1"},
                    timings_ms=timings)
        r.xadd(outbox_stream("line"), {"payload": json.dumps(payload), "verdict": v.to_json()})
    names = [("zhenjia_checks_total", {"platform": "line", "label": "unsure"}),
             ("zhenjia_check_seconds_count", {"stage": "detect"}),
             ("zhenjia_check_seconds_sum", {"stage": "detect"})] + [
        ("zhenjia_delivery_failures_total", {"platform": "line", "kind": k}) for k in ("dropped", "retry", "gave_up")]
    before = [_sample(n, **labels) for n, labels in names]

    async def go() -> list[str]:
        checker = Checker(replace(Settings(), redis_url=redis_url))
        sent: list[str] = []

        async def send(payload, verdict):
            if verdict.request_id == "blocked":
                raise PermanentDeliveryError("bot was blocked")
            if verdict.request_id == "doomed":
                raise ConnectionError("the chat platform is down")
            sent.append(verdict.request_id)

        task = asyncio.create_task(deliver_forever(checker, "line", send, consumer="bot-m", max_attempts=2))
        for _ in range(200):
            if _sample("zhenjia_delivery_failures_total", platform="line", kind="gave_up") > before[-1] and sent:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await checker.close()
        return sent

    assert asyncio.run(go()) == ["fine"]
    delta = [_sample(n, **labels) - b for (n, labels), b in zip(names, before)]
    assert delta == [1, 1, pytest.approx(0.09), 1, 1, 1]
