"""LINE adapter: a signed webhook on the shared web server and async line-bot-sdk clients, over bot/flow.py.

Reply tokens expire (about a minute, less in practice): an answer uses the event's token while it is fresh
and is pushed after that. LINE has no /check and no admins the bot can see; an image set arrives as one
event per picture, with its index and total.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from aiohttp import web
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (AsyncApiClient, AsyncMessagingApi, AsyncMessagingApiBlob, Configuration, ImageMessage,
                                  PushMessageRequest, ReplyMessageRequest, ShowLoadingAnimationRequest, TextMessage)
from linebot.v3.messaging.exceptions import ApiException
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import (Event, FollowEvent, GroupSource, ImageMessageContent, JoinEvent, MessageEvent,
                                 RoomSource, TextMessageContent, VideoMessageContent)

from bot.checks import Checker, PermanentDeliveryError
from bot.adapter import ChatAdapter
from bot.flow import Chat, ChatFlow, DownloadFailed, Picture
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

REPLY_TOKEN_MAX_AGE_S = 25.0  # LINE documents ~1 min; tokens have been seen to die after ~30 s
LOADING_SECONDS = 20  # the loading animation disappears by itself when our answer arrives
TRANSCODE_WAIT_S = 40  # LINE transcodes a video before serving it; longer than this: "download failed"
HELP_WORDS = {"/help", "/start", "help", "說明", "幫助", "使用說明"}
LEAVE_WORDS = {"/leave", "離開", "退出", "bye"}
MODE_WORDS = {"/mode", "模式"}


class Adapter(ChatAdapter):
    """One LINE channel: webhook handlers, and `deliver` for the flow."""

    name = "line"

    def __init__(self, checker: Checker, settings: BotSettings, web_app: web.Application) -> None:
        self.settings = settings
        self.wants_marked = bool(settings.public_base_url)  # LINE shows pictures only from an HTTPS URL
        self.flow = ChatFlow(self, checker, settings, settings.service.max_upload_bytes)
        self.parser = WebhookParser(settings.line_channel_secret)
        web_app.router.add_post(settings.line_webhook_path, self.on_webhook)

    async def on_webhook(self, request: web.Request) -> web.Response:
        """POST from LINE: verify X-Line-Signature, answer 200 at once, handle the events in the background."""
        signature = request.headers.get("X-Line-Signature", "")
        if not signature:
            return web.Response(status=400, text="missing signature")
        try:
            events = self.parser.parse(await request.text(), signature)
        except InvalidSignatureError:
            log.warning("line_bad_signature")
            return web.Response(status=400, text="bad signature")
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="bad body")
        for event in events:
            # LINE redelivers an event whose webhook call failed (e.g. while the bot restarted): answer once.
            if await self.flow.first_time(getattr(event, "webhook_event_id", None)):
                self.spawn(self.on_event(event), event.type)
            else:
                log.info("line_redelivery_skipped type=%s", event.type)
        return web.Response(text="OK")

    async def on_event(self, event: Event) -> None:
        """One event: the flow decides what to say, `_say` says it."""
        if event.source is None:  # nothing we answer comes without a chat
            return
        chat = await self._chat(event)
        message = getattr(event, "message", None)
        say: str | None = None
        if isinstance(message, (ImageMessageContent, VideoMessageContent)):
            say = await self.on_image(event, chat)
        elif isinstance(message, TextMessageContent):
            say = await self.on_text(event, chat)
        elif isinstance(event, MessageEvent) and not chat.is_group:
            say = self.flow.text("not_image", chat.lang)
        elif isinstance(event, JoinEvent):  # nobody's language is known yet in a new group: say both
            say = self.flow.text("join", "zh-TW") + "\n\n" + self.flow.text("join", "en")
        elif isinstance(event, FollowEvent):
            say = self.flow.text("help", chat.lang)
        await self._say(event, chat, say)

    async def on_text(self, event: MessageEvent, chat: Chat) -> str | None:
        """Commands: help, /mode all|fake|off (模式 全部|可疑|關閉), /leave (離開); else help in 1:1."""
        words = event.message.text.strip().split()
        command = words[0].lower() if words else ""
        if command in HELP_WORDS:
            return self.flow.text("help", chat.lang)
        if command in MODE_WORDS:  # any member may: LINE shows us no admins, and anyone can remove the bot
            return await self.flow.mode_command(chat, words[1] if len(words) > 1 else None)
        if command in LEAVE_WORDS and chat.is_group:
            await self._say(event, chat, self.flow.text("leaving", chat.lang))
            leave = self.api.leave_group if isinstance(event.source, GroupSource) else self.api.leave_room
            await leave(chat.chat_id)
            log.info("left source=%s", event.source.type)
            return None
        return None if chat.is_group or not words else self.flow.text("not_image", chat.lang)

    async def on_image(self, event: MessageEvent, chat: Chat) -> str | None:
        """An image (alone or one of an image set, which counts once against the limits) or a video message."""
        if self.flow.too_old(chat) or (mode := await self.flow.answer_mode(chat)) is None:
            return None
        reply_to = self._reply_to(event, chat) | {"lang": chat.lang, "only_suspicious": mode == "fake"}
        video = isinstance(event.message, VideoMessageContent)
        part = None if video else event.message.image_set
        in_set = bool(part is not None and part.total and part.index)
        if in_set:
            reply_to.update(album=f"{chat.chat_id}:{part.id}", album_size=part.total, album_index=part.index - 1)
        picture = Picture(lambda: self._download(event.message.id, video), reply_to, f"line-{event.message.id}",
                          clip=video)
        return (await self.flow.check(chat, picture, mode == "fake", album=in_set,
                                      rate_limited=not in_set or part.index == 1))[1]

    async def _download(self, message_id: str, video: bool = False) -> bytes:
        try:
            if video:  # LINE transcodes a video before it serves it
                deadline, wait = time.monotonic() + TRANSCODE_WAIT_S, 0.5
                while (status := (await self.blob.get_message_content_transcoding_by_message_id(message_id)).status) \
                        != "succeeded":
                    if status == "failed" or time.monotonic() > deadline:
                        raise DownloadFailed(f"transcoding {status}")
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 4.0)
            return bytes(await self.blob.get_message_content(message_id))
        except ApiException as exc:
            raise DownloadFailed(f"status {exc.status}") from exc

    async def _chat(self, event: Event) -> Chat:
        src = event.source
        chat_id, is_group = ((src.group_id, True) if isinstance(src, GroupSource) else
                             (src.room_id, True) if isinstance(src, RoomSource) else (src.user_id, False))
        user_id = getattr(src, "user_id", None)
        lang = await self.flow.user_lang(user_id, lambda: self._profile_lang(user_id))
        return Chat(chat_id, is_group, user_id, lang, event.timestamp / 1000)

    async def _profile_lang(self, user_id: str) -> str | None:
        try:
            return (await self.api.get_profile(user_id)).language
        except ApiException:  # not a friend of the bot, or no consent: no language to read
            return None

    @staticmethod
    def _reply_to(event: Event, chat: Chat) -> dict[str, Any]:
        return {"to": chat.chat_id, "reply_token": getattr(event, "reply_token", None), "event_ts": chat.sent_at,
                "quote_token": getattr(getattr(event, "message", None), "quote_token", None)}

    async def deliver(self, reply_to: dict[str, Any], text: str, request_id: str,
                      verdict: Verdict | None = None) -> None:
        """Reply while the token is fresh, push after; the marked copy by URL (served by the web adapter)."""
        messages: list[Any] = [TextMessage(text=text[:5000], quote_token=reply_to.get("quote_token"))]
        if verdict is not None and verdict.marked_image_key and self.settings.public_base_url:
            url = f"{self.settings.public_base_url}/api/marked/{verdict.request_id}"
            messages.append(ImageMessage(original_content_url=url, preview_image_url=url))
        token = reply_to.get("reply_token")
        if token and time.time() - float(reply_to.get("event_ts", 0)) < REPLY_TOKEN_MAX_AGE_S:
            try:
                await self.api.reply_message(ReplyMessageRequest(reply_token=token, messages=messages))
                log.info("line_sent via=reply request=%s", request_id)
                return
            except ApiException as exc:
                if exc.status != 400:  # 400: the token expired or was used; a push still works
                    raise
                log.info("reply_token_refused request=%s", request_id)
        retry_key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"zhenjia:{request_id}"))  # a retried push is sent once
        try:
            await self.api.push_message(PushMessageRequest(to=reply_to["to"], messages=messages),
                                        x_line_retry_key=retry_key)
        except ApiException as exc:
            if exc.status in (400, 403, 404):  # left the group, blocked, unknown chat
                raise PermanentDeliveryError(f"push status {exc.status}") from exc
            if exc.status != 409:  # 409: already accepted with this retry key
                raise
        log.info("line_sent via=push request=%s", request_id)

    async def working(self, chat: Chat) -> None:
        if not chat.is_group:  # LINE shows the loading animation in one-to-one chats only
            await self.api.show_loading_animation(ShowLoadingAnimationRequest(chat_id=chat.chat_id,
                                                                              loading_seconds=LOADING_SECONDS))

    async def _say(self, event: Event, chat: Chat, text: str | None) -> None:
        """An immediate answer (help, join, busy…): reply token, else push; failures are only logged."""
        try:
            if text:
                await self.deliver(self._reply_to(event, chat), text, f"answer-{uuid.uuid4().hex}")
        except (ApiException, PermanentDeliveryError) as exc:
            log.warning("answer_failed error=%s", type(exc).__name__)

    async def start(self) -> None:
        token = self.settings.line_channel_access_token
        # The blob (content) API lives on its own host: each client gets its own host setting.
        self._clients = [AsyncApiClient(Configuration(host=host, access_token=token))
                         for host in (self.settings.line_api_host, self.settings.line_data_api_host)]
        self.api, self.blob = AsyncMessagingApi(self._clients[0]), AsyncMessagingApiBlob(self._clients[1])
        log.info("line_started path=%s", self.settings.line_webhook_path)

    async def stop(self) -> None:
        await self.cancel_tasks()
        for client in self._clients:
            await client.close()
