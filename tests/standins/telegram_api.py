"""A Telegram Bot API stand-in that the real python-telegram-bot client can talk to.

Speaks `/bot<token>/<method>` (form, multipart or JSON bodies) and `/file/bot<token>/<path>`.
Tests inject updates with `add_message()` and helpers; every API call is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

from tests.standins import ThreadedServer

BOT_USER = {"id": 7000001, "is_bot": True, "first_name": "Zhenjia", "username": "zhenjia_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": True, "supports_inline_queries": False}
DOWNLOAD_LIMIT = 20 * 1024 * 1024
JSON_PARAMS = {"reply_parameters", "allowed_updates", "reaction", "reply_markup", "entities", "caption_entities",
               "link_preview_options"}


class TelegramStandin(ThreadedServer):
    """State: pending updates, uploaded files, chat member statuses, blocked chats."""

    def __init__(self, token: str = "123456:TEST-token") -> None:
        super().__init__()
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.file_sizes: dict[str, int] = {}  # overrides: pretend a file is this large
        self.admins: set[tuple[int, int]] = set()  # (chat_id, user_id)
        self.blocked: set[int] = set()  # chats that answer 403 (bot blocked / kicked)
        self.chat_types: dict[int, str] = {}
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self._file_ids = itertools.count(1)
        self._new_update: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/bot"

    @property
    def file_url(self) -> str:
        return f"{self.url}/file/bot"

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.updates.clear()
            self.admins.clear()
            self.blocked.clear()
            self.file_sizes.clear()

    # --- building updates (test side) -----------------------------------------------
    def add_file(self, data: bytes) -> str:
        file_id = f"file{next(self._file_ids)}"
        with self.lock:
            self.files[file_id] = data
        return file_id

    def next_message_id(self) -> int:
        return next(self._message_ids)

    def message(self, chat_id: int, user_id: int = 42, lang: str | None = "zh-hant", age_s: float = 0,
                **fields: Any) -> dict[str, Any]:
        """A Message dict from `user_id` in `chat_id` (negative ids are groups)."""
        chat_type = "private" if chat_id > 0 else "supergroup"
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type != "private":
            chat["title"] = "Family"
        else:
            chat["first_name"] = "Ada"
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": "Ada"}
        if lang:
            user["language_code"] = lang
        return {"message_id": self.next_message_id(), "date": int(time.time() - age_s), "chat": chat,
                "from": user, **fields}

    def photo_fields(self, data: bytes) -> dict[str, Any]:
        """The `photo` field of a message carrying `data` (a small thumbnail plus the full size)."""
        thumb = self.add_file(data[:1000])
        full = self.add_file(data)
        return {"photo": [
            {"file_id": thumb, "file_unique_id": "u" + thumb, "width": 90, "height": 90, "file_size": 1000},
            {"file_id": full, "file_unique_id": "u" + full, "width": 256, "height": 256, "file_size": len(data)},
        ]}

    def document_fields(self, data: bytes, mime: str = "image/jpeg", name: str = "face.jpg") -> dict[str, Any]:
        fid = self.add_file(data)
        return {"document": {"file_id": fid, "file_unique_id": "u" + fid, "file_name": name, "mime_type": mime,
                             "file_size": len(data)}}

    def clip_fields(self, data: bytes, kind: str = "video", width: int = 320, height: int = 240,
                    duration: int = 2) -> dict[str, Any]:
        """A `video`, `animation` (a GIF, which Telegram converts to MP4) or `video_note` (round video) field.

        An animation message also carries a `document` copy, as the real Bot API sends it."""
        fid = self.add_file(data)
        obj: dict[str, Any] = {"file_id": fid, "file_unique_id": "u" + fid, "duration": duration,
                               "file_size": len(data)}
        if kind == "video_note":
            return {"video_note": {**obj, "length": width}}
        obj.update(width=width, height=height, mime_type="video/mp4", file_name="clip.mp4")
        if kind == "animation":
            return {"animation": obj, "document": {k: obj[k] for k in ("file_id", "file_unique_id", "file_name",
                                                                         "mime_type", "file_size")}}
        return {"video": obj}

    def add_message(self, message: dict[str, Any]) -> dict[str, Any]:
        """Queue an update carrying `message` for the next getUpdates; returns the message."""
        with self.lock:
            self.chat_types[message["chat"]["id"]] = message["chat"]["type"]
            self.updates.append({"update_id": next(self._update_ids), "message": message})
        if self.loop is not None and self._new_update is not None:
            self.loop.call_soon_threadsafe(self._new_update.set)
        return message

    def replies_to(self, message_id: int, methods: tuple[str, ...] = ("sendMessage", "sendPhoto")) -> list:
        return [c for c in self.calls_to(*methods)
                if json.loads(c.params.get("reply_parameters", "{}") or "{}").get("message_id") == message_id]

    # --- the server ------------------------------------------------------------------
    def make_app(self) -> web.Application:
        self._new_update = asyncio.Event()
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.*}", self._download)
        return app

    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            return dict(await request.json())
        form = await request.post()
        params: dict[str, Any] = {}
        for key, value in form.items():
            params[key] = value.file.read() if hasattr(value, "file") else value
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(request)
        handler = getattr(self, f"_m_{method}", None)
        if method != "getUpdates":
            self.record(method, params)
        if handler is None:
            return _error(404, "Not Found: method not found")
        chat_id = params.get("chat_id")
        if chat_id is not None and int(chat_id) in self.blocked:
            return _error(403, "Forbidden: bot was blocked by the user")
        result = await handler(params)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    async def _m_getMe(self, p: dict) -> Any:
        return BOT_USER

    async def _m_getUpdates(self, p: dict) -> Any:
        offset = int(p.get("offset") or 0)
        timeout = float(p.get("timeout") or 0)
        deadline = time.time() + timeout
        while True:
            self._new_update.clear()  # before looking, so an update added after the look wakes us
            with self.lock:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
                ready = list(self.updates)
            if ready or time.time() >= deadline:
                if ready:
                    self.record("getUpdates", {"offset": offset, "count": len(ready)})
                return ready
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout=max(0.01, deadline - time.time()))
            except asyncio.TimeoutError:
                pass

    async def _m_getFile(self, p: dict) -> Any:
        file_id = p.get("file_id", "")
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        size = self.file_sizes.get(file_id, len(self.files[file_id]))
        if size > DOWNLOAD_LIMIT:
            return _error(400, "Bad Request: file is too big")
        return {"file_id": file_id, "file_unique_id": "u" + file_id, "file_size": size,
                "file_path": f"photos/{file_id}.jpg"}

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1].split(".")[0]
        self.record("download", {"file_id": file_id})
        if file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    def _sent(self, p: dict, **content: Any) -> dict[str, Any]:
        chat_id = int(p["chat_id"])
        chat = {"id": chat_id, "type": self.chat_types.get(chat_id, "private" if chat_id > 0 else "supergroup")}
        if chat["type"] == "private":
            chat["first_name"] = "Ada"
        else:
            chat["title"] = "Family"
        return {"message_id": self.next_message_id(), "date": int(time.time()), "chat": chat,
                "from": {k: BOT_USER[k] for k in ("id", "is_bot", "first_name", "username")}, **content}

    async def _m_sendMessage(self, p: dict) -> Any:
        if not p.get("text"):
            return _error(400, "Bad Request: message text is empty")
        return self._sent(p, text=p["text"])

    async def _m_sendPhoto(self, p: dict) -> Any:
        photo = p.get("photo")
        if not isinstance(photo, (bytes, bytearray)) or not photo:
            return _error(400, "Bad Request: there is no photo in the request")
        fid = self.add_file(bytes(photo))
        return self._sent(p, caption=p.get("caption", ""),
                          photo=[{"file_id": fid, "file_unique_id": "u" + fid, "width": 256, "height": 256}])

    async def _m_sendChatAction(self, p: dict) -> Any:
        return True

    async def _m_setMessageReaction(self, p: dict) -> Any:
        return True

    async def _m_getChatMember(self, p: dict) -> Any:
        chat_id, user_id = int(p["chat_id"]), int(p["user_id"])
        user = {"id": user_id, "is_bot": False, "first_name": "Ada"}
        if (chat_id, user_id) in self.admins:
            return {"status": "creator", "user": user, "is_anonymous": False}
        return {"status": "member", "user": user}

    async def _m_deleteWebhook(self, p: dict) -> Any:
        return True

    async def _m_setWebhook(self, p: dict) -> Any:
        return True

    async def _m_close(self, p: dict) -> Any:
        return True


def _error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)
