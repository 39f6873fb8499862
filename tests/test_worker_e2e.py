"""The inference worker end to end: real Redis, real `python -m inference_worker` processes, a real model."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from PIL import Image
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from bot.checks import Checker
from core.contract import FACE_LABELS, QUEUE_NAME, JobPayload, Verdict
from core.keys import SERVING_MODEL_KEY, cache_key, image_key, outbox_stream, result_key
from core.settings import Settings
from tests.fixtures_model import TINY_MODEL_2
from tests.fixtures_worker import launch_worker, promote_model, promoted_model, write_tiny_model

REPO = Path(__file__).resolve().parent.parent


def submit(url: str, data: bytes, platform: str = "web", retries: int = 2, want_marked: bool = True) -> str:
    """Enqueue through the bot's own Checker.submit (cache check, bytes with TTL, RQ job)."""
    async def go() -> str:
        checker = Checker(Settings(redis_url=url, job_retries=retries))
        try:
            sub = await checker.submit(platform, {"chat_id": 42, "message_id": 7}, data, want_marked=want_marked)
            assert sub.verdict is None, "unexpected cache hit"
            return sub.request_id
        finally:
            await checker.close()
    return asyncio.run(go())


def wait_verdict(url: str, request_id: str, timeout: float = 60) -> Verdict:
    got = redis.Redis.from_url(url).blpop([result_key(request_id)], timeout=timeout)
    assert got is not None, f"no verdict for {request_id} within {timeout}s"
    return Verdict.from_dict(json.loads(got[1]))


def jpeg(im: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", **kw)
    return out.getvalue()


def png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


# ---------------------------------------------------------------- one shared worker for this module

@pytest.fixture(scope="module")
def shared(redis_server, worker_models_dir, tmp_path_factory):
    """One worker for the read-only tests of this module, on its own Redis db (tests here don't flush it)."""
    url = redis_server["url"] + "/1"
    redis.Redis.from_url(url).flushdb()
    # A low byte limit in the worker makes "too many bytes" cheap to test (the bot allows more).
    handle = launch_worker(url, worker_models_dir, tmp_path_factory.mktemp("wlogs"), MAX_IMAGE_BYTES="3000000")
    yield url, handle
    handle.stop()
    redis.Redis.from_url(url).flushdb()


def test_face_image_gives_full_verdict(shared, face_jpeg, worker_models_dir):
    url, worker = shared
    r = redis.Redis.from_url(url)
    rid = submit(url, face_jpeg)
    v = wait_verdict(url, rid)
    assert v.request_id == rid and v.label in FACE_LABELS
    assert len(v.faces) == 1
    face = v.faces[0]
    x, y, w, h = face.box
    assert 0 <= x < x + w <= 256 and 0 <= y < y + h <= 256 and min(w, h) >= 64
    assert face.label in FACE_LABELS and 0.0 <= face.p_fake <= 1.0 and v.p_fake == face.p_fake
    served = promoted_model(worker_models_dir)
    assert v.model == served
    assert v.image["width"] == 256 and v.image["format"] == "JPEG"
    assert {"decode", "detect", "classify", "total"} <= set(v.timings_ms)
    # Published: marked copy stored, image bytes deleted, verdict cached by hash, serving model announced.
    marked = r.get(v.marked_image_key)
    assert Image.open(io.BytesIO(marked)).format == "JPEG"
    assert r.get(image_key(rid)) is None
    sha = JobPayload.from_dict(Job.fetch(rid, connection=r, serializer=JSONSerializer).args[0]).image_sha256
    cached = Verdict.from_dict(json.loads(r.get(cache_key(sha))))
    assert cached.label == v.label and cached.marked_image_key is None
    assert r.get(SERVING_MODEL_KEY).decode() == f"{served['name']}@{served['version']}"
    assert worker.alive


def _face(face_jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(face_jpeg)).convert("RGB")


def _animated_gif(face: Image.Image) -> bytes:
    out = io.BytesIO()
    face.save(out, "GIF", save_all=True, append_images=[face.rotate(180)], duration=100, loop=0)
    return out.getvalue()


def _exif_rotated(face: Image.Image) -> bytes:
    # An upright 400x300 picture stored sideways (300x400) with EXIF orientation 6, as phones do.
    canvas = Image.new("RGB", (400, 300), (90, 110, 130))
    canvas.paste(face.resize((220, 220)), (90, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(canvas.transpose(Image.Transpose.ROTATE_90), exif=exif, quality=95)


def _sixteen_bit(face: Image.Image) -> bytes:
    import numpy as np

    grey = np.asarray(face.convert("L"), dtype=np.uint16) * 257
    return png(Image.fromarray(grey.astype("<u2")))


BAD_INPUTS = {
    # name: (builder(face) -> bytes, expected label or "face", expected reason or None)
    "not_an_image": (lambda f: b"%PDF-1.4 certainly not a picture" * 10, "unreadable", "not_an_image"),
    "truncated": (lambda f: jpeg(f, quality=95)[:6000], "unreadable", "truncated"),
    "decompression_bomb": (lambda f: png(Image.new("1", (9000, 9000))), "unreadable", "too_many_pixels"),
    "too_many_bytes": (lambda f: jpeg(f) + os.urandom(3_100_000), "unreadable", "too_large_bytes"),
    # An animated GIF is a clip (core.media.is_clip): its sampled frames are checked (0.2 s: the first one only).
    "animated_gif": (_animated_gif, "face", None),
    "cmyk_jpeg": (lambda f: jpeg(f.convert("CMYK"), quality=95), "face", None),
    "la_png": (lambda f: png(f.convert("LA")), "face", None),
    "palette_png": (lambda f: png(f.convert("P")), "face", None),
    "16bit_png": (_sixteen_bit, "face", None),
    "exif_rotated": (_exif_rotated, "face", None),
    "heavily_compressed": (lambda f: jpeg(f, quality=25), "face", "heavily_compressed"),
    "no_face": (lambda f: png(Image.new("RGB", (320, 240), (200, 200, 200))), "no_face", None),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_gets_its_verdict_and_worker_lives(shared, face_jpeg, case):
    url, worker = shared
    build, label, reason = BAD_INPUTS[case]
    data = build(_face(face_jpeg))
    v = wait_verdict(url, submit(url, data))
    if label == "face":
        assert v.label in FACE_LABELS and len(v.faces) == 1, (case, v)
    else:
        assert v.label == label, (case, v)
    if reason:
        assert reason in v.reasons, (case, v.reasons)
    if case == "animated_gif":
        assert v.frames == 1 and v.faces[0].frames == 1 and v.image["format"] == "GIF"
    if case == "exif_rotated":
        assert (v.image["width"], v.image["height"]) == (400, 300)
    if case == "16bit_png":  # a clipped conversion would be a white picture without a face
        assert v.faces[0].size_px >= 64
    assert redis.Redis.from_url(url).get(image_key(v.request_id)) is None
    assert worker.alive, worker.log()[-2000:]


def test_telegram_verdict_goes_to_outbox_stream(shared, face_jpeg):
    url, _ = shared
    r = redis.Redis.from_url(url)
    data = jpeg(_face(face_jpeg).rotate(3), quality=93)  # distinct bytes: no cache hit
    rid = submit(url, data, platform="telegram")
    deadline = time.monotonic() + 60
    entry = None
    while entry is None and time.monotonic() < deadline:
        for _, fields in r.xrange(outbox_stream("telegram")):
            if json.loads(fields[b"payload"])["request_id"] == rid:
                entry = fields
        time.sleep(0.1)
    assert entry is not None, "verdict never reached the telegram outbox"
    assert set(entry) == {b"payload", b"verdict"}
    payload = json.loads(entry[b"payload"])
    assert payload["reply_to"] == {"chat_id": 42, "message_id": 7} and payload["platform"] == "telegram"
    assert Verdict.from_dict(json.loads(entry[b"verdict"])).request_id == rid
    assert r.llen(result_key(rid)) == 0  # chat verdicts do not go to the web result list


def test_expired_image_is_answered_not_cached(shared):
    url, _ = shared
    r = redis.Redis.from_url(url)
    payload = JobPayload.new("web", {}, image_sha256="ab" * 32)  # bytes never stored: as if the TTL ran out
    Queue(QUEUE_NAME, connection=r, serializer=JSONSerializer).enqueue(
        "inference_worker.jobs.check_image", payload.to_dict(), job_id=payload.request_id)
    v = wait_verdict(url, payload.request_id)
    assert v.label == "unreadable" and v.reasons == ["image_expired"]
    assert r.get(cache_key("ab" * 32)) is None


def test_foreign_job_function_is_refused(shared, tmp_path):
    url, worker = shared
    r = redis.Redis.from_url(url)
    victim = tmp_path / "keep-me"
    victim.write_text("x")
    job = Queue(QUEUE_NAME, connection=r, serializer=JSONSerializer).enqueue("os.remove", str(victim))
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) not in ("failed", "finished") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.get_status() == "failed"
    assert victim.exists()
    assert "RefusedJob" in (job.latest_result().exc_string or "")
    assert worker.alive


def test_pickled_job_is_not_loaded_and_worker_goes_on(shared, face_jpeg, tmp_path):
    url, worker = shared
    r = redis.Redis.from_url(url)
    # Default RQ serializer = pickle: a worker that unpickled it would run arbitrary code.
    victim = tmp_path / "keep-me"
    victim.write_text("x")
    Queue(QUEUE_NAME, connection=r).enqueue("os.remove", str(victim))
    v = wait_verdict(url, submit(url, jpeg(_face(face_jpeg), quality=91)))
    assert v.label in FACE_LABELS and worker.alive and victim.exists()


# ---------------------------------------------------------------- workers of their own

def _wait_started(url: str, rid: str, timeout: float = 60) -> None:
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while Job.fetch(rid, connection=r, serializer=JSONSerializer).get_status() != "started":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)
    time.sleep(0.5)  # into the slow model's prediction


@pytest.fixture(scope="module")
def slow_models_dir(tmp_path_factory) -> Path:
    """A model whose one prediction takes seconds, so that a kill surely lands mid-job."""
    d = tmp_path_factory.mktemp("slow-models")
    write_tiny_model(d, "slow", "1", slow_layers=6)
    return d


def test_sigkill_mid_job_is_retried_on_another_worker(redis_url, slow_models_dir, start_worker, face_jpeg):
    first = start_worker(redis_url, slow_models_dir)
    rid = submit(redis_url, face_jpeg, retries=2)
    _wait_started(redis_url, rid)
    first.kill()
    killed_at = time.monotonic()
    start_worker(redis_url, slow_models_dir)
    v = wait_verdict(redis_url, rid, timeout=90)
    assert v.label in FACE_LABELS and v.model["name"] == "slow"
    took = time.monotonic() - killed_at
    print(f"answered {took:.1f}s after the kill (includes starting the second worker)")
    assert took < 60, f"abandoned job took {took:.0f}s to be answered"
    # exactly one answer
    assert redis.Redis.from_url(redis_url).llen(result_key(rid)) == 0


def test_job_longer_than_its_lease_is_not_taken_for_abandoned(redis_url, slow_models_dir, start_worker, face_jpeg):
    # Lease 2 s (heartbeat 0.5 s), a job of several seconds, and an idle second worker whose maintenance
    # runs every second: only the heartbeat thread keeps RQ from declaring the job abandoned.
    start_worker(redis_url, slow_models_dir, WORKER_HEARTBEAT_S="0.5")
    start_worker(redis_url, slow_models_dir, WORKER_HEARTBEAT_S="0.5")
    rid = submit(redis_url, face_jpeg, retries=2)
    v = wait_verdict(redis_url, rid, timeout=90)
    assert v.timings_ms["classify"] > 2000, "the job was not longer than the lease: test proves nothing"
    time.sleep(1.5)
    job = Job.fetch(rid, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    assert job.get_status() == "finished" and job.retries_left == 2


def test_sigkill_on_last_try_gives_honest_error(redis_url, slow_models_dir, start_worker, face_jpeg):
    first = start_worker(redis_url, slow_models_dir)
    rid = submit(redis_url, face_jpeg, retries=0)
    _wait_started(redis_url, rid)
    first.kill()
    start_worker(redis_url, slow_models_dir)
    v = wait_verdict(redis_url, rid, timeout=90)
    assert v.label == "error" and v.reasons == ["worker_failed"]
    r = redis.Redis.from_url(redis_url)
    assert r.get(image_key(rid)) is None  # nothing of the picture is left behind
    time.sleep(2)
    assert r.llen(result_key(rid)) == 0  # and no second answer follows


def test_promote_switches_model_between_jobs(redis_url, fresh_models_dir, start_worker, face_jpeg):
    worker = start_worker(redis_url, fresh_models_dir)
    r = redis.Redis.from_url(redis_url)
    before = promoted_model(fresh_models_dir)
    assert wait_verdict(redis_url, submit(redis_url, face_jpeg)).model == before
    promote_model(fresh_models_dir, TINY_MODEL_2)
    after = promoted_model(fresh_models_dir)
    assert after != before
    v = wait_verdict(redis_url, submit(redis_url, jpeg(_face(face_jpeg), quality=90)))
    assert v.model == after
    assert r.get(SERVING_MODEL_KEY).decode() == f"{after['name']}@{after['version']}"
    # A broken promote keeps the worker serving the last good model.
    (fresh_models_dir / "broken").mkdir()
    (fresh_models_dir / "broken" / "model.keras").write_bytes(b"not a zip")
    (fresh_models_dir / "broken" / "metadata.json").write_text('{"name": "broken", "version": "9"}')
    promote_model(fresh_models_dir, "broken")
    v = wait_verdict(redis_url, submit(redis_url, jpeg(_face(face_jpeg), quality=80)))
    assert v.model == after and worker.alive


@pytest.mark.parametrize("breakage", ["missing", "corrupt"])
def test_bad_model_at_start_is_a_clear_error(tmp_path, redis_url, breakage):
    models = tmp_path / "models"
    models.mkdir()
    if breakage == "corrupt":
        (models / "m").mkdir()
        (models / "m" / "model.keras").write_bytes(b"PK\x03\x04 garbage")
        (models / "m" / "metadata.json").write_text('{"name": "m", "version": "1"}')
        promote_model(models, "m")
    env = {**os.environ, "REDIS_URL": redis_url, "MODELS_DIR": str(models), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "inference_worker"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    expected = "no promoted model" if breakage == "missing" else "cannot load"
    assert f"error: {expected}" in proc.stderr


def test_check_cli_prints_verdicts_and_refuses_missing_files(worker_models_dir, data_dir, tmp_path):
    face = sorted((data_dir / "valid" / "real").glob("*.jpg"))[0]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not really a jpeg")
    env = {**os.environ, "MODELS_DIR": str(worker_models_dir), "PYTHONPATH": str(REPO)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "inference_worker", "check", *args],  # noqa: E731
                                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = run(str(face), str(junk), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["file"] for r in rows] == [str(face), str(junk)]
    assert rows[0]["label"] in FACE_LABELS and len(rows[0]["faces"]) == 1
    assert rows[1]["label"] == "unreadable" and rows[1]["reasons"] == ["not_an_image"]
    missing = run(str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
