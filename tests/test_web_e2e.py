"""The web API end to end: real Redis, a real worker process with a real (tiny) Keras model, a real bot."""

from __future__ import annotations

import io
import re
import time

import redis
from PIL import Image
from rq.job import Job

from core.contract import FACE_LABELS, Verdict
from core.keys import image_key
from tests.fixtures_web import http, post_image


def _face(data_dir, cls: str = "fake", i: int = 0) -> bytes:
    return sorted((data_dir / "test" / cls).glob("*.jpg"))[i].read_bytes()


def test_face_image_gets_a_verdict(web_stack, data_dir):
    data = _face(data_dir, "fake", 0)
    t0 = time.monotonic()
    res = post_image(web_stack.bot.url, data)
    took = time.monotonic() - t0
    assert res.status == 200, res.body
    body = res.json()
    verdict = Verdict.from_dict(body)  # the contract's shape, validated
    assert re.fullmatch(r"[0-9a-f]{32}", verdict.request_id)
    assert verdict.label in FACE_LABELS and 0.0 <= verdict.p_fake <= 1.0
    assert verdict.model["name"] and verdict.model["version"] and verdict.cached is False
    serving = http("GET", web_stack.bot.url + "/healthz").json()["serving_model"]
    assert serving == f"{verdict.model['name']}@{verdict.model['version']}"  # the worker announced it
    assert len(verdict.faces) >= 1
    for face in verdict.faces:
        assert len(face.box) == 4 and face.label in FACE_LABELS and 0.0 <= face.p_fake <= 1.0
    assert took < 60
    r = redis.Redis.from_url(web_stack.bot.redis_url)
    assert not r.exists(image_key(verdict.request_id))  # the bytes are gone once checked

    poll = http("GET", web_stack.bot.url + f"/api/check/{verdict.request_id}")
    assert poll.status == 200 and poll.json() == body

    if verdict.marked_image_key:
        marked = http("GET", web_stack.bot.url + f"/api/marked/{verdict.request_id}")
        assert marked.status == 200 and marked.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(marked.body)).size == (256, 256)


def test_same_image_again_is_answered_from_the_cache(web_stack, data_dir):
    data = _face(data_dir, "real", 1)
    first = post_image(web_stack.bot.url, data)
    assert first.status == 200
    again = post_image(web_stack.bot.url, data, timeout=10)
    assert again.status == 200
    a, b = first.json(), again.json()
    assert b["cached"] is True and b["label"] == a["label"] and b["p_fake"] == a["p_fake"]
    assert b["request_id"] != a["request_id"]
    r = redis.Redis.from_url(web_stack.bot.redis_url)
    assert not r.exists(Job.key_for(b["request_id"]))  # answered without a job
    assert not r.exists(image_key(b["request_id"]))  # and without storing the bytes


def test_picture_without_a_face(web_stack):
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (40, 120, 200)).save(buf, "PNG")
    res = post_image(web_stack.bot.url, buf.getvalue(), "sky.png", "image/png")
    assert res.status == 200 and res.json()["label"] == "no_face"


def test_truncated_image_gets_an_honest_verdict(web_stack, data_dir):
    data = _face(data_dir, "fake", 2)
    res = post_image(web_stack.bot.url, data[: len(data) // 3])  # a real JPEG header, cut short
    assert res.status == 200
    body = res.json()
    assert body["label"] in ("unreadable", "no_face") and body["reasons"], body


def test_raw_body_upload(web_stack, data_dir):
    res = http("POST", web_stack.bot.url + "/api/check", _face(data_dir, "real", 2),
               {"Content-Type": "image/jpeg", "Accept-Language": "en"})
    assert res.status == 200 and res.json()["label"] in FACE_LABELS
