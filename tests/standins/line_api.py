"""A LINE Messaging API stand-in for the real line-bot-sdk async clients (api and api-data hosts).

Reply tokens are issued by the test (`new_reply_token`) with a lifetime, used once, and refused
with 400 after that, like LINE's. `webhook_body()` builds events and `sign()` signs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from typing import Any

from aiohttp import web

from tests.standins import ThreadedServer


def sign(channel_secret: str, body: str) -> str:
    """X-Line-Signature: base64(HMAC-SHA256(channel secret, body))."""
    digest = hmac.new(channel_secret.encode(), body.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class LineStandin(ThreadedServer):
    def __init__(self, access_token: str = "line-test-access-token") -> None:
        super().__init__()
        self.access_token = access_token
        self.contents: dict[str, bytes] = {}
        self.reply_tokens: dict[str, float] = {}  # token -> expiry time
        self.profiles: dict[str, dict[str, Any]] = {}
        self.left: set[str] = set()  # groups/rooms the bot left: pushes there answer 400
        self.transcoding: dict[str, list[str]] = {}  # video id -> statuses the next polls answer (last repeats)
        self._ids = itertools.count(1000)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.reply_tokens.clear()
            self.profiles.clear()
            self.left.clear()

    # --- test side -------------------------------------------------------------------
    def new_reply_token(self, ttl_s: float = 60.0) -> str:
        token = uuid.uuid4().hex
        with self.lock:
            self.reply_tokens[token] = time.time() + ttl_s
        return token

    def add_content(self, data: bytes) -> str:
        message_id = str(next(self._ids))
        with self.lock:
            self.contents[message_id] = data
        return message_id

    def image_event(self, data: bytes, source: dict[str, Any], token_ttl_s: float = 60.0, age_s: float = 0,
                    image_set: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "image", "id": self.add_content(data), "quoteToken": uuid.uuid4().hex,
                                   "contentProvider": {"type": "line"}}
        if image_set:
            message["imageSet"] = image_set
        return self._event("message", source, token_ttl_s, age_s, message=message)

    def video_event(self, data: bytes, source: dict[str, Any], statuses: tuple[str, ...] = ("succeeded",),
                    duration_ms: int = 2000) -> dict[str, Any]:
        """A video message; its content answers `statuses` to transcoding polls in turn (LINE transcodes first)."""
        message_id = self.add_content(data)
        with self.lock:
            self.transcoding[message_id] = list(statuses)
        message = {"type": "video", "id": message_id, "duration": duration_ms, "quoteToken": uuid.uuid4().hex,
                   "contentProvider": {"type": "line"}}
        return self._event("message", source, 60.0, 0, message=message)

    def text_event(self, text: str, source: dict[str, Any], token_ttl_s: float = 60.0) -> dict[str, Any]:
        message = {"type": "text", "id": str(next(self._ids)), "text": text, "quoteToken": uuid.uuid4().hex}
        return self._event("message", source, token_ttl_s, 0, message=message)

    def join_event(self, source: dict[str, Any]) -> dict[str, Any]:
        return self._event("join", source, 60.0, 0)

    def _event(self, kind: str, source: dict[str, Any], token_ttl_s: float, age_s: float, **extra: Any) -> dict:
        return {"type": kind, "mode": "active", "timestamp": int((time.time() - age_s) * 1000), "source": source,
                "webhookEventId": uuid.uuid4().hex, "deliveryContext": {"isRedelivery": False},
                "replyToken": self.new_reply_token(token_ttl_s), **extra}

    @staticmethod
    def webhook_body(*events: dict[str, Any]) -> str:
        return json.dumps({"destination": "Ubot", "events": list(events)})

    def texts_sent(self) -> list[tuple[str, str, str | None]]:
        """(path, text, quoteToken) of every text message the bot sent, in order."""
        out = []
        for call in self.calls_to("reply", "push"):
            for m in call.params.get("messages", []):
                out.append((call.method, m.get("text", ""), m.get("quoteToken")))
        return out

    # --- the server ------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_post("/v2/bot/message/reply", self._reply)
        r.add_post("/v2/bot/message/push", self._push)
        r.add_post("/v2/bot/chat/loading/start", self._loading)
        r.add_post("/v2/bot/group/{id}/leave", self._leave)
        r.add_post("/v2/bot/room/{id}/leave", self._leave)
        r.add_get("/v2/bot/profile/{user}", self._profile)
        r.add_get("/v2/bot/message/{id}/content", self._content)
        r.add_get("/v2/bot/message/{id}/content/transcoding", self._transcoding)
        return app

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.access_token}"

    async def _reply(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        body = await request.json()
        token = body.get("replyToken", "")
        with self.lock:
            expiry = self.reply_tokens.pop(token, None)  # a token works once
        ok = expiry is not None and time.time() < expiry
        self.record("reply" if ok else "reply_refused", body)
        if not ok:
            return _error(400, "Invalid reply token")
        return web.json_response({"sentMessages": self._sent(body)})

    async def _push(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        body = await request.json()
        body["retry_key"] = request.headers.get("X-Line-Retry-Key")
        if body.get("to") in self.left:
            self.record("push_refused", body)
            return _error(400, "The bot is not a member of this chat")
        self.record("push", body)
        return web.json_response({"sentMessages": self._sent(body)})

    def _sent(self, body: dict[str, Any]) -> list[dict[str, str]]:
        return [{"id": str(next(self._ids)), "quoteToken": uuid.uuid4().hex} for _ in body.get("messages", [])]

    async def _loading(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        self.record("loading", await request.json())
        return web.json_response({}, status=202)

    async def _leave(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        chat = request.match_info["id"]
        with self.lock:
            self.left.add(chat)
        self.record("leave", {"id": chat, "path": request.path})
        return web.json_response({})

    async def _profile(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        user = request.match_info["user"]
        self.record("profile", {"user": user})
        profile = self.profiles.get(user)
        if profile is None:
            return _error(404, "Not found")
        return web.json_response({"userId": user, "displayName": "Ada", **profile})

    async def _transcoding(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        message_id = request.match_info["id"]
        with self.lock:
            statuses = self.transcoding.get(message_id)
            status = (statuses.pop(0) if len(statuses) > 1 else statuses[0]) if statuses else None
        self.record("transcoding", {"id": message_id, "status": status})
        if status is None:
            return _error(404, "Not found")
        return web.json_response({"status": status})

    async def _content(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication failed")
        message_id = request.match_info["id"]
        self.record("content", {"id": message_id})
        data = self.contents.get(message_id)
        if data is None:
            return _error(404, "Not found")
        return web.Response(body=data, content_type="image/jpeg")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
