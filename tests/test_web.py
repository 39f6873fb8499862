"""The web API through a real `python -m bot` and real Redis: every bad upload gets its clear answer.

The end-to-end verdict path (real worker process and model) is in tests/test_web_e2e.py.
"""

from __future__ import annotations

import io
import signal

import pytest
import redis
from PIL import Image

from core.contract import Verdict
from core.keys import cache_key, marked_key, result_key
from tests.fixtures_web import http, post_image, start_bot


def _jpeg(color: tuple[int, int, int] = (200, 150, 120), size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def nowork(bot_without_worker):
    """The worker-less bot with its Redis db emptied before each test."""
    redis.Redis.from_url(bot_without_worker.redis_url).flushdb()
    return bot_without_worker


def test_page_is_served(nowork):
    page = http("GET", nowork.url + "/")
    assert page.status == 200
    html = page.body.decode()
    assert "真的假不了" in html and 'type="file"' in html and "/static/app.js" in html
    js = http("GET", nowork.url + "/static/app.js")
    assert js.status == 200 and b"/api/check" in js.body


def test_healthz_ok(nowork):
    res = http("GET", nowork.url + "/healthz")
    assert res.status == 200 and res.json()["ok"] is True


@pytest.mark.parametrize("case", ["text_as_image", "png_named_wrong", "random_bytes"])
def test_not_an_image_is_415(nowork, case):
    data = {"text_as_image": b"hello, I am not a picture\n" * 10,
            "png_named_wrong": b"%PDF-1.7\n" + b"0" * 500,
            "random_bytes": bytes(range(256)) * 8}[case]
    res = post_image(nowork.url, data)
    assert res.status == 415
    body = res.json()
    assert body["error"] == "not_an_image" and "JPEG" in body["message"]
    assert redis.Redis.from_url(nowork.redis_url).llen("rq:queue:web-no-worker") == 0  # nothing enqueued


def test_empty_upload_is_400(nowork):
    res = post_image(nowork.url, b"")
    assert res.status == 400 and res.json()["error"] == "empty"


def test_raw_empty_body_is_400(nowork):
    res = http("POST", nowork.url + "/api/check", b"", {"Content-Type": "image/jpeg"})
    assert res.status == 400 and res.json()["error"] == "empty"


def test_missing_field_is_400(nowork):
    body = (b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\n" + _jpeg()
            + b"\r\n--b--\r\n")
    res = http("POST", nowork.url + "/api/check", body, {"Content-Type": "multipart/form-data; boundary=b"})
    assert res.status == 400 and res.json()["error"] == "missing_image"


def test_wrong_content_type_is_415(nowork):
    res = http("POST", nowork.url + "/api/check", b'{"image": "x"}', {"Content-Type": "application/json"})
    assert res.status == 415 and res.json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize("how", ["multipart", "raw", "raw_chunked"])
def test_too_large_is_413(nowork, how):
    big = _jpeg() + b"\0" * 400_000  # a real JPEG header, over this bot's MAX_IMAGE_BYTES=300000
    if how == "multipart":
        res = post_image(nowork.url, big)
    elif how == "raw":
        res = http("POST", nowork.url + "/api/check", big, {"Content-Type": "image/jpeg"})
    else:  # no Content-Length: the limit must hold while streaming
        res = http("POST", nowork.url + "/api/check", iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                   {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
    assert res.status == 413
    body = res.json()
    assert body["error"] == "too_large" and "0.3 MB" in body["message"]


def test_english_messages_from_accept_language(nowork):
    res = post_image(nowork.url, b"not an image", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert res.status == 415 and "not an image or video format" in res.json()["message"]
    res = post_image(nowork.url, b"not an image", headers={"Accept-Language": "zh-TW,zh;q=0.9,en;q=0.5"})
    assert "不是" in res.json()["message"]
    res = http("POST", nowork.url + "/api/check?lang=en", b"", {"Content-Type": "image/png"})
    assert res.json()["message"] == "The uploaded file is empty."


def test_timeout_gives_504_then_poll_202_and_verdict(nowork):
    res = post_image(nowork.url, _jpeg())
    assert res.status == 504
    body = res.json()
    rid = body["request_id"]
    assert body["error"] == "timeout" and body["poll"] == f"/api/check/{rid}"
    r = redis.Redis.from_url(nowork.redis_url)
    assert r.exists(f"zhenjia:image:{rid}")  # the bytes wait for a worker with a TTL
    assert 0 < r.ttl(f"zhenjia:image:{rid}") <= 600
    poll = http("GET", nowork.url + f"/api/check/{rid}")
    assert poll.status == 202 and poll.json() == {"request_id": rid, "status": "queued"}
    # A worker answers later: the poll returns it, and keeps returning it.
    verdict = Verdict(rid, "real", 0.1, model={"name": "m", "version": "1"})
    r.rpush(result_key(rid), verdict.to_json())
    for _ in range(2):
        poll = http("GET", nowork.url + f"/api/check/{rid}")
        assert poll.status == 200 and poll.json()["label"] == "real"


def test_queue_full_is_503(nowork):
    for color in [(1, 2, 3), (4, 5, 6)]:
        assert post_image(nowork.url, _jpeg(color)).status == 504  # queued, nobody works on it
    res = post_image(nowork.url, _jpeg((7, 8, 9)), headers={"Accept-Language": "en"})
    assert res.status == 503
    assert res.json() == {"error": "busy", "message": "Too many pictures are waiting to be checked right now. "
                                                      "Please try again in a minute or two 🙏"}


def test_cached_verdict_answers_at_once(nowork):
    import hashlib

    data = _jpeg((9, 9, 9))
    r = redis.Redis.from_url(nowork.redis_url)
    cached = Verdict("old", "fake", 0.97, model={"name": "m", "version": "1"})
    r.set(cache_key(hashlib.sha256(data).hexdigest()), cached.to_json())
    res = post_image(nowork.url, data, timeout=5)
    assert res.status == 200
    body = res.json()
    assert body["label"] == "fake" and body["cached"] is True and body["request_id"] != "old"
    assert r.llen("rq:queue:web-no-worker") == 0
    assert http("GET", nowork.url + f"/api/check/{body['request_id']}").json()["label"] == "fake"


def test_unknown_ids_are_404(nowork):
    for path in ["/api/check/0123456789abcdef0123456789abcdef", "/api/check/..%2Fetc",
                 "/api/marked/0123456789abcdef0123456789abcdef", "/api/marked/nope"]:
        res = http("GET", nowork.url + path)
        assert res.status == 404, path
        assert res.json()["error"] in ("unknown_request", "marked_gone", "not_found")


def test_marked_image_served_while_it_lasts(nowork):
    rid = "ab" * 16
    jpeg = _jpeg((255, 0, 0))
    redis.Redis.from_url(nowork.redis_url).set(marked_key(rid), jpeg, ex=60)
    res = http("GET", nowork.url + f"/api/marked/{rid}")
    assert res.status == 200 and res.headers["Content-Type"] == "image/jpeg" and res.body == jpeg


def test_api_errors_are_json(nowork):
    res = http("GET", nowork.url + "/api/check")
    assert res.status == 405 and res.json()["error"] == "method_not_allowed"
    res = http("GET", nowork.url + "/api/nothing-here")
    assert res.status == 404 and res.json()["error"] == "not_found"


def test_no_image_bytes_or_text_in_logs(nowork):
    marker = b"SECRET-MARKER-IN-THE-BYTES"
    post_image(nowork.url, marker * 20)
    post_image(nowork.url, _jpeg() + marker)
    log = nowork.log()
    assert "SECRET-MARKER" not in log
    assert "web_rejected status=415 error=not_an_image" in log


def test_redis_down_is_503_and_healthz_503(redis_server, tmp_path):
    # A bot pointed at a port where no Redis listens: it starts, says "restarting" (not "busy"), keeps running.
    from tests.conftest import free_port

    bot = start_bot(f"redis://127.0.0.1:{free_port()}/0", tmp_path, WEB_WAIT_S="1")
    try:
        health = http("GET", bot.url + "/healthz")
        assert health.status == 503 and health.json()["ok"] is False
        res = post_image(bot.url, _jpeg(), headers={"Accept-Language": "en"})
        assert res.status == 503 and res.json() == {
            "error": "unavailable", "message": "The checker is restarting. Please try again in a minute 🙏"}
        assert bot.proc.poll() is None
    finally:
        assert bot.stop(signal.SIGTERM) == 0
