"""LINE adapter: a signed webhook on the shared web server and async line-bot-sdk clients, over bot/flow.py.

LINE has no /check and no admins the bot can see; an image set comes as one event per picture, numbered.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
from bot.adapter import ChatAdapter, TokenRefused
from bot.flow import Chat, DownloadFailed, Picture
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

LOADING_SECONDS = 20  # the loading animation disappears by itself when our answer arrives
TRANSCODE_WAIT_S = 40  # LINE transcodes a video before serving it; longer than this: "download failed"


class Adapter(ChatAdapter):
    """One LINE channel: webhook handlers, and `post` for the flow."""

    name = "line"
    sdk_errors = (ApiException,)

    def __init__(self, checker: Checker, settings: BotSettings, web_app: web.Application) -> None:
        super().__init__(checker, settings)
        self.wants_marked = bool(settings.public_base_url)  # LINE shows pictures only from an HTTPS URL
        self.parser = WebhookParser(settings.line_channel_secret)
        web_app.router.add_post(settings.line_webhook_path, self.on_webhook)

    async def on_webhook(self, request: web.Request) -> web.Response:
        """POST from LINE: verify X-Line-Signature, answer 200 at once, handle the events in the background."""
        try:  # a missing signature is a bad one
            events = self.parser.parse(await request.text(), request.headers.get("X-Line-Signature", ""))
        except InvalidSignatureError:
            log.warning("line_bad_signature")
            return web.Response(status=400, text="bad signature")
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="bad body")
        for event in events:
            self.spawn(self.on_event(event), event.type)
        return web.Response(text="OK")

    async def on_event(self, event: Event) -> None:
        """One event, translated for the base adapter and the flow, which decide what to say."""
        # LINE redelivers an event whose webhook call failed (e.g. while the bot restarted): answer it once.
        if event.source is None or not await self.flow.first_time(getattr(event, "webhook_event_id", None)):
            return  # nothing we answer comes without a chat
        chat = await self._chat(event)
        if isinstance(getattr(event, "message", None), TextMessageContent):
            await self.on_text(event, chat)
        elif isinstance(event, MessageEvent):  # a picture, a video, or anything else
            await self.message(chat, self._picture(event.message, chat))
        elif isinstance(event, (JoinEvent, FollowEvent)):  # added to a group, or as a friend
            await self.say(chat.answer_to, self.flow.greeting(chat))

    async def on_text(self, event: MessageEvent, chat: Chat) -> None:
        """Commands: help, /mode all|fake|off (模式 全部|可疑|關閉), /leave (離開); else help in 1:1."""
        command, *args = event.message.text.split() or [""]
        # Any member may set the mode (LINE shows us no admins) or make the bot leave (anyone can remove it).
        await self.say(chat.answer_to, await self.flow.command(chat, command, args))
        if self.flow.leaves(chat, command):
            leave = self.api.leave_group if isinstance(event.source, GroupSource) else self.api.leave_room
            await leave(chat.chat_id)
            log.info("left source=%s", event.source.type)

    def _picture(self, message: Any, chat: Chat) -> Picture | None:
        """An image (alone or one part of an image set, which LINE numbers) or a video message; else None."""
        if not isinstance(message, (ImageMessageContent, VideoMessageContent)):
            return None
        reply_to = dict(chat.answer_to)
        video, part = isinstance(message, VideoMessageContent), getattr(message, "image_set", None)
        if part is not None and part.total and part.index:
            reply_to.update(album=f"{chat.chat_id}:{part.id}", album_size=part.total, album_index=part.index - 1)
        return Picture(lambda: self._download(message.id, video), reply_to, f"line-{message.id}", clip=video)

    async def _download(self, message_id: str, video: bool = False) -> bytes:
        if video:  # LINE transcodes a video before it serves it
            deadline, wait = time.monotonic() + TRANSCODE_WAIT_S, 0.5
            while (status := (await self.blob.get_message_content_transcoding_by_message_id(message_id)).status) \
                    != "succeeded":
                if status == "failed" or time.monotonic() > deadline:
                    raise DownloadFailed(f"transcoding {status}")
                await asyncio.sleep(wait)
                wait = min(wait * 2, 4.0)
        return bytes(await self.blob.get_message_content(message_id))  # LINE's refusals: a failed download

    async def _chat(self, event: Event) -> Chat:
        src, user_id, sent_at = event.source, getattr(event.source, "user_id", None), event.timestamp / 1000
        chat_id, is_group = ((src.group_id, True) if isinstance(src, GroupSource) else
                             (src.room_id, True) if isinstance(src, RoomSource) else (user_id, False))
        lang = await self.flow.user_lang(user_id, lambda: self._profile_lang(user_id))
        answer_to = {"to": chat_id, "reply_token": getattr(event, "reply_token", None), "event_ts": sent_at,
                     "quote_token": getattr(getattr(event, "message", None), "quote_token", None)}
        return Chat(chat_id, is_group, user_id, lang, sent_at, answer_to)

    async def _profile_lang(self, user_id: str) -> str | None:
        return (await self.api.get_profile(user_id)).language  # refused: not the bot's friend, or no consent

    async def post(self, reply_to: dict[str, Any], text: str, verdict: Verdict | None,
                   token: str | None = None, retry_key: str = "") -> None:
        """A reply with `token`, else a push; the marked copy by URL."""
        messages: list[Any] = [TextMessage(text=text[:5000], quote_token=reply_to.get("quote_token"))]
        if url := self.flow.marked_url(verdict):  # LINE fetches it from there
            messages.append(ImageMessage(original_content_url=url, preview_image_url=url))
        try:
            if token:
                await self.api.reply_message(ReplyMessageRequest(reply_token=token, messages=messages))
            else:
                await self.api.push_message(PushMessageRequest(to=reply_to["to"], messages=messages),
                                            x_line_retry_key=retry_key)
        except ApiException as exc:
            if token and exc.status == 400:  # the token expired or was used
                raise TokenRefused(exc.status) from exc
            if not token and exc.status in (400, 403, 404):  # left the group, blocked, unknown chat
                raise PermanentDeliveryError(f"push status {exc.status}") from exc
            if token or exc.status != 409:  # 409: a push already accepted with this retry key
                raise

    async def working(self, chat: Chat) -> None:
        if not chat.is_group:  # LINE shows the loading animation in one-to-one chats only
            await self.api.show_loading_animation(ShowLoadingAnimationRequest(chat_id=chat.chat_id,
                                                                              loading_seconds=LOADING_SECONDS))

    async def start(self) -> None:
        s = self.settings
        # The blob (content) API lives on its own host: each client gets its own host setting.
        self._clients = [AsyncApiClient(Configuration(host=host, access_token=s.line_channel_access_token))
                         for host in (s.line_api_host, s.line_data_api_host)]
        self.api, self.blob = AsyncMessagingApi(self._clients[0]), AsyncMessagingApiBlob(self._clients[1])
        log.info("line_started path=%s", s.line_webhook_path)

    async def stop(self) -> None:
        await self.cancel_tasks()
        await asyncio.gather(*(client.close() for client in self._clients))
