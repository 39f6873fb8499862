"""The web adapter: a local page to try the checker, and the JSON API behind it.

Same path as the chat adapters (`Checker.submit` → Redis → RQ worker); only the transport differs:
the worker pushes a web verdict onto `result_key(request_id)` and the handler waits on it with a
non-blocking BLPOP (redis.asyncio), so one process serves many waiting uploads.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import redis
from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError
from rq.job import Job

from bot import metrics as bot_metrics
from bot.checks import REDIS_ERRORS, Busy, Checker, TooLarge, Unavailable
from bot.messages import pick_lang as lang_of_code
from bot.messages import t
from bot.settings import BotSettings
from core.contract import DEFAULT_LANG
from core.keys import SERVING_MODEL_KEY, marked_key, result_key
from core.media import is_clip

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CHECKER = web.AppKey("checker", Checker)
SETTINGS = web.AppKey("bot_settings", BotSettings)
STOPPING = web.AppKey("web_stopping", asyncio.Event)

# Request ids are uuid4 hex (JobPayload.new); anything else is never a key we wrote.
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
# Browsers label some images oddly (octet-stream from drag and drop); the magic-byte check decides.
_RAW_TYPES = ("image/", "video/", "application/octet-stream")
# BLPOP in short slices: the shared client has a 5 s socket timeout, and short slices let a
# shutdown cancel a waiting request promptly.
_BLPOP_SLICE_S = 2.0
_CHUNK = 64 * 1024

# Error codes whose text the chat adapters already say; every other code's text is `web_<code>`.
_SHARED_TEXTS = ("too_large", "busy", "unavailable")


def pick_lang(request: web.Request, default: str = DEFAULT_LANG) -> str:
    """`?lang=` first, then the first Accept-Language we speak; the default otherwise."""
    tags = [request.query.get("lang", "")] + request.headers.get("Accept-Language", "").split(",")
    for tag in tags:
        tag = tag.split(";", 1)[0].strip().lower()
        if tag.startswith(("en", "zh")):  # the languages we speak (core.contract.LANGS)
            return lang_of_code(tag)
    return default


def error(request: web.Request, status: int, code: str, **extra: Any) -> web.Response:
    """A JSON error `{"error": code, "message": ...}` in the caller's language."""
    settings = request.app.get(SETTINGS)
    lang = pick_lang(request, settings.default_lang if settings else DEFAULT_LANG)
    text = t(code if code in _SHARED_TEXTS else f"web_{code}", lang, **extra)
    body = {"error": code, "message": text, **extra}
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


class _Rejected(Exception):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status, self.code = status, code


async def _read_limited(stream: Any, limit: int) -> bytes:
    """Read a body stream, stopping as soon as it passes `limit` bytes (413, never buffering more)."""
    buf = bytearray()
    while True:
        chunk = await stream.read(_CHUNK) if not isinstance(stream, BodyPartReader) \
            else await stream.read_chunk(_CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise _Rejected(413, "too_large")


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The uploaded image bytes: multipart field `image`, or a raw body with an image content type."""
    if request.content_length is not None and request.content_length > limit + _CHUNK:
        raise _Rejected(413, "too_large")  # refuse before reading a byte
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, BodyPartReader) and part.name == "image":
                    data = await _read_limited(part, limit)
                    break
                await part.release()
            else:
                raise _Rejected(400, "missing_image")
        except ValueError as exc:  # a malformed multipart body
            raise _Rejected(400, "bad_request") from exc
    elif ctype.startswith(_RAW_TYPES):
        data = await _read_limited(request.content, limit)
    elif not request.can_read_body:
        raise _Rejected(400, "missing_image")
    else:
        raise _Rejected(415, "unsupported_media_type")
    if not data:
        raise _Rejected(400, "empty")
    return data


def looks_like_media(data: bytes) -> bool:
    """Cheap edge check: a clip's container magic, or a header Pillow recognises (the worker decodes fully)."""
    if is_clip(data):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)):
                return True
    except Image.DecompressionBombError:
        return True  # a real image header: the worker answers it with `too_many_pixels`
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError):
        return False


async def _remember(checker: Checker, request_id: str, raw: bytes | str) -> None:
    """Keep the verdict readable by GET /api/check/{id} after a POST consumed it."""
    key = result_key(request_id)
    async with checker.redis.pipeline(transaction=True) as pipe:
        await pipe.delete(key).rpush(key, raw).expire(key, checker.settings.result_ttl_s).execute()


async def wait_verdict(checker: Checker, request_id: str, timeout_s: float,
                       stopping: asyncio.Event | None = None) -> dict[str, Any] | None:
    """Block (without blocking the loop) until the worker pushes the verdict, or give up.

    Gives up early when the process is shutting down: the caller answers 504 with the id, and the
    verdict, still pushed by the worker, can be polled after the restart.
    """
    deadline = time.monotonic() + timeout_s
    key = result_key(request_id)
    while (left := deadline - time.monotonic()) > 0 and not (stopping and stopping.is_set()):
        got = await checker.redis.blpop([key], timeout=max(0.1, min(_BLPOP_SLICE_S, left)))
        if got is not None:
            raw = got[1]
            await _remember(checker, request_id, raw)
            return json.loads(raw)
    return None


async def index(request: web.Request) -> web.FileResponse:
    """The page: drop an image, see the verdict."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def post_check(request: web.Request) -> web.Response:
    """Submit a picture or clip and wait for its Verdict (200), or 504 with the id to poll."""
    checker, settings = request.app[CHECKER], request.app[SETTINGS]
    limit = checker.settings.max_upload_bytes
    lang = pick_lang(request, settings.default_lang)
    try:
        data = await read_upload(request, limit)
    except _Rejected as rej:
        log.info("web_rejected status=%d error=%s", rej.status, rej.code)
        if rej.code == "too_large":
            bot_metrics.count_refused("web", "too_large")
        return error(request, rej.status, rej.code, **_limit_extra(rej.code, limit))
    # The stream was allowed the larger (clip) limit; a picture has its own, smaller one.
    own = checker.settings.max_video_bytes if is_clip(data) else checker.settings.max_image_bytes
    if len(data) > own:
        log.info("web_rejected status=413 error=too_large bytes=%d", len(data))
        bot_metrics.count_refused("web", "too_large")
        return error(request, 413, "too_large", **_limit_extra("too_large", own))
    if not looks_like_media(data):
        log.info("web_rejected status=415 error=not_an_image bytes=%d", len(data))
        return error(request, 415, "not_an_image")
    try:
        sub = await checker.submit("web", {"client": "web"}, data, lang=lang)
    except TooLarge as exc:  # a picture over MAX_IMAGE_BYTES (a clip may be larger)
        bot_metrics.count_refused("web", "too_large")
        return error(request, 413, "too_large", **_limit_extra("too_large", exc.limit or limit))
    except Busy as exc:  # a long queue, or (Unavailable) Redis restarting: each has its own code
        log.warning("web_busy reason=%s", exc)
        code = "unavailable" if isinstance(exc, Unavailable) else "busy"
        bot_metrics.count_refused("web", code)
        return error(request, 503, code)
    if sub.verdict is not None:
        body = sub.verdict.to_dict()
        await _remember(checker, sub.request_id, json.dumps(body, ensure_ascii=False))
        return web.json_response(body, dumps=_dumps)
    try:
        verdict = await wait_verdict(checker, sub.request_id, settings.web_wait_s, request.app[STOPPING])
    except REDIS_ERRORS as exc:  # Redis went away while we waited: the check is lost with it
        log.warning("web_wait_redis_error request=%s error=%s", sub.request_id, type(exc).__name__)
        return error(request, 503, "unavailable")
    if verdict is None:
        log.info("web_timeout request=%s", sub.request_id)
        return error(request, 504, "timeout", request_id=sub.request_id,
                     poll=f"/api/check/{sub.request_id}")
    log.info("web_verdict request=%s label=%s", sub.request_id, verdict.get("label"))
    bot_metrics.delivered("web", verdict)  # cache hits were counted by Checker.submit
    return web.json_response(verdict, dumps=_dumps)


def _limit_extra(code: str, limit: int) -> dict[str, Any]:
    return {"limit_mb": round(limit / 1024 / 1024, 1)} if code == "too_large" else {}


async def get_check(request: web.Request) -> web.Response:
    """Poll a check: 200 with the Verdict, 202 while it is pending, 404 when unknown or expired."""
    checker = request.app[CHECKER]
    rid = request.match_info["request_id"]
    if not _REQUEST_ID.match(rid):
        return error(request, 404, "unknown_request")
    try:
        raw = await checker.redis.lindex(result_key(rid), 0)
        if raw is not None:
            return web.json_response(json.loads(raw), dumps=_dumps)
        status = await checker.redis.hget(Job.key_for(rid), "status")
    except REDIS_ERRORS:
        return error(request, 503, "unavailable")
    if status is None:
        return error(request, 404, "unknown_request")
    return web.json_response({"request_id": rid, "status": status.decode()}, status=202)


async def get_marked(request: web.Request) -> web.Response:
    """The marked copy (JPEG) of a checked image while it lasts; 404 after."""
    checker = request.app[CHECKER]
    rid = request.match_info["request_id"]
    if not _REQUEST_ID.match(rid):
        return error(request, 404, "marked_gone")
    try:
        data = await checker.redis.get(marked_key(rid))
    except REDIS_ERRORS:
        return error(request, 503, "unavailable")
    if data is None:
        return error(request, 404, "marked_gone")
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


async def healthz(request: web.Request) -> web.Response:
    """200 when Redis answers (with the model the workers serve), 503 otherwise."""
    checker = request.app[CHECKER]
    try:
        await checker.redis.ping()
        serving = await checker.redis.get(SERVING_MODEL_KEY)
    except (*REDIS_ERRORS, redis.exceptions.RedisError) as exc:
        return web.json_response({"ok": False, "redis": type(exc).__name__}, status=503)
    return web.json_response({"ok": True, "redis": "ok", "serving_model": serving.decode() if serving else None})


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """API errors are JSON with a code and a message, including aiohttp's own (404, 405, 413)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
        if code == "too_large":  # aiohttp's own body limit
            bot_metrics.count_refused("web", "too_large")
        limit = request.app[CHECKER].settings.max_upload_bytes
        return error(request, exc.status, code, **_limit_extra(code, limit))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (README: Metrics); the Redis-side gauges are read now, at scrape time."""
    checker = request.app[CHECKER]
    await bot_metrics.refresh(checker.redis, checker.settings.queue_name)
    body, content_type = bot_metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def client_max_size(settings: BotSettings) -> int:
    """aiohttp's body limit for the one Application: the largest upload plus multipart overhead."""
    return settings.service.max_upload_bytes + 256 * 1024


async def _on_shutdown(app: web.Application) -> None:
    app[STOPPING].set()


def setup(app: web.Application, checker: Checker, settings: BotSettings) -> None:
    """Add the page, the JSON API, /healthz and /metrics to the bot's one aiohttp Application."""
    app[CHECKER] = checker
    app[SETTINGS] = settings
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)
    app.middlewares.append(json_errors)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    app.router.add_post("/api/check", post_check)
    app.router.add_get("/api/check/{request_id}", get_check)
    app.router.add_get("/api/marked/{request_id}", get_marked)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
