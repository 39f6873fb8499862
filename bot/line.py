"""LINE adapter: signed webhook on the shared aiohttp server, async line-bot-sdk clients, delivery.

Reply tokens expire (about a minute, less in practice): a verdict is sent with the event's reply
token while it is fresh, and pushed to the chat after that (or when the reply is refused).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from aiohttp import web
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    AsyncMessagingApiBlob,
    Configuration,
    ImageMessage,
    PushMessageRequest,
    ReplyMessageRequest,
    ShowLoadingAnimationRequest,
    TextMessage,
)
from linebot.v3.messaging.exceptions import ApiException
from linebot.v3.webhook import WebhookParser
from linebot.v3.webhooks import (
    Event,
    FollowEvent,
    GroupSource,
    ImageMessageContent,
    JoinEvent,
    MessageEvent,
    RoomSource,
    TextMessageContent,
)

from bot.chats import ChatState
from bot.checks import REDIS_ERRORS, Busy, Checker, PermanentDeliveryError, TooLarge, deliver_forever
from bot.messages import format_album, format_verdict, is_suspicious, mode_text, pick_lang, t
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

PLATFORM = "line"
REPLY_TOKEN_MAX_AGE_S = 25.0  # LINE documents ~1 min; tokens have been seen to die after ~30 s
LOADING_SECONDS = 20  # the loading animation disappears by itself when our reply arrives
APP_KEY = web.AppKey("line_bot", object)

HELP_WORDS = {"/help", "/start", "help", "說明", "幫助", "使用說明"}
LEAVE_WORDS = {"/leave", "離開", "退出", "bye"}
MODE_WORDS = {"/mode", "模式"}
MODE_ARGS = {"all": "all", "全部": "all", "fake": "fake", "可疑": "fake", "off": "off", "關閉": "off"}


def _chat_of(event: Event) -> tuple[str, bool]:
    """(chat id to push to, is a group or room) for an event's source."""
    src = event.source
    if isinstance(src, GroupSource):
        return src.group_id, True
    if isinstance(src, RoomSource):
        return src.room_id, True
    return src.user_id, False


class LineBot:
    """Webhook handlers and the delivery `send` of one LINE channel."""

    def __init__(self, checker: Checker, settings: BotSettings) -> None:
        self.checker = checker
        self.settings = settings
        self.parser = WebhookParser(settings.line_channel_secret)
        self.state = ChatState(checker.redis, PLATFORM, settings.user_rate_per_min, settings.chat_rate_per_min)
        self._tasks: set[asyncio.Task] = set()
        self._delivery: asyncio.Task | None = None
        self.api_client: AsyncApiClient | None = None
        self.data_client: AsyncApiClient | None = None

    # --- lifecycle -------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        token = self.settings.line_channel_access_token
        # The blob (content) API lives on its own host; each client gets its own host setting.
        self.api_client = AsyncApiClient(Configuration(host=self.settings.line_api_host, access_token=token))
        self.data_client = AsyncApiClient(Configuration(host=self.settings.line_data_api_host, access_token=token))
        self.api = AsyncMessagingApi(self.api_client)
        self.blob = AsyncMessagingApiBlob(self.data_client)
        self._delivery = asyncio.create_task(deliver_forever(self.checker, PLATFORM, self.send,
                                                             consumer=self.settings.instance), name="line-delivery")
        log.info("line_started path=%s", self.settings.line_webhook_path)

    async def on_cleanup(self, app: web.Application) -> None:
        if self._delivery is not None:
            self._delivery.cancel()
            await asyncio.gather(self._delivery, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in (self.api_client, self.data_client):
            if client is not None:
                await client.close()

    # --- webhook ---------------------------------------------------------------------
    async def on_webhook(self, request: web.Request) -> web.Response:
        """POST from LINE: verify X-Line-Signature, answer 200 at once, handle events in tasks."""
        signature = request.headers.get("X-Line-Signature", "")
        body = await request.text()
        if not signature:
            return web.Response(status=400, text="missing signature")
        try:
            events = self.parser.parse(body, signature)
        except InvalidSignatureError:
            log.warning("line_bad_signature")
            return web.Response(status=400, text="bad signature")
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="bad body")
        for event in events:
            task = asyncio.create_task(self._handle(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(text="OK")

    async def _handle(self, event: Event) -> None:
        try:
            if isinstance(event, MessageEvent):
                if isinstance(event.message, ImageMessageContent):
                    await self.on_image(event)
                elif isinstance(event.message, TextMessageContent):
                    await self.on_text(event)
                elif not _chat_of(event)[1]:
                    await self._answer(event, t("not_image", await self._lang(event)))
            elif isinstance(event, JoinEvent):
                # Nobody's language is known yet in a new group: say it in both.
                await self._answer(event, t("line_join", "zh-TW") + "\n\n" + t("line_join", "en"))
            elif isinstance(event, FollowEvent):
                await self._answer(event, t("line_help", await self._lang(event)))
        except Exception as exc:  # one bad event must not take the others down
            log.error("line_event_error type=%s error=%s detail=%s", event.type, type(exc).__name__, str(exc)[:200])

    async def on_text(self, event: MessageEvent) -> None:
        """Commands: help, /mode all|fake|off (模式 全部|可疑|關閉), /leave (離開)."""
        words = event.message.text.strip().split()
        if not words:
            return
        command = words[0].lower()
        chat_id, is_group = _chat_of(event)
        lang = await self._lang(event)
        if command in HELP_WORDS:
            await self._answer(event, t("line_help", lang))
        elif command in MODE_WORDS:
            # LINE cannot tell us who is a group admin, and any member can remove a bot in the LINE
            # app anyway, so any member may change the mode; the confirmation is seen by everyone.
            arg = MODE_ARGS.get(words[1].lower()) if len(words) > 1 else None
            try:
                if len(words) == 1:
                    text = mode_text(await self.state.get_mode(chat_id, is_group), lang, False)
                elif arg is None:
                    text = t("mode_bad", lang)
                else:
                    await self.state.set_mode(chat_id, arg)
                    log.info("mode_set source=%s mode=%s", event.source.type, arg)
                    text = mode_text(arg, lang, True)
            except REDIS_ERRORS:
                text = t("busy", lang)
            await self._answer(event, text)
        elif command in LEAVE_WORDS and is_group:
            await self._answer(event, t("leaving", lang))
            if isinstance(event.source, GroupSource):
                await self.api.leave_group(chat_id)
            else:
                await self.api.leave_room(chat_id)
            log.info("left source=%s", event.source.type)
        elif not is_group:
            await self._answer(event, t("not_image", lang))

    async def on_image(self, event: MessageEvent) -> None:
        """An image message (possibly one of an image set): download, submit, show loading."""
        chat_id, is_group = _chat_of(event)
        age = time.time() - event.timestamp / 1000
        if is_group and age > self.settings.group_event_max_age_s:
            log.info("skip_old source=%s age_s=%.0f", event.source.type, age)
            return
        mode = await self.state.get_mode(chat_id, is_group)  # 1:1 chats default to `all`
        if mode == "off":
            return
        only_suspicious = mode == "fake"
        lang = await self._lang(event)
        image_set = event.message.image_set
        in_set = image_set is not None and image_set.total and image_set.index
        if not in_set or image_set.index == 1:  # an image set counts once against the limits
            allowed, first_refusal = await self.state.allow(event.source.user_id, chat_id)
            if not allowed:
                if first_refusal:
                    await self._answer(event, t("rate_limited", lang))
                return
        reply_to: dict[str, Any] = {"to": chat_id, "reply_token": event.reply_token,
                                    "event_ts": event.timestamp / 1000, "quote_token": event.message.quote_token,
                                    "lang": lang, "only_suspicious": only_suspicious}
        if in_set:
            reply_to.update(album=f"{chat_id}:{image_set.id}", album_size=image_set.total,
                            album_index=image_set.index - 1)
        if not is_group:
            try:
                await self.api.show_loading_animation(
                    ShowLoadingAnimationRequest(chat_id=chat_id, loading_seconds=LOADING_SECONDS))
            except ApiException as exc:
                log.warning("loading_failed status=%s", exc.status)
        payload = {"request_id": f"line-{event.message.id}", "reply_to": reply_to}
        try:
            data = bytes(await self.blob.get_message_content(event.message.id))
            # LINE can only show a picture from an HTTPS URL: marked copies need PUBLIC_BASE_URL.
            submission = await self.checker.submit(PLATFORM, reply_to, data, lang=lang,
                                                   want_marked=bool(self.settings.public_base_url))
        except TooLarge:
            await self.send(payload, Verdict(payload["request_id"], "unreadable", None, reasons=["too_large_bytes"]))
            return
        except Busy as exc:
            log.warning("busy source=%s detail=%s", event.source.type, exc)
            if not only_suspicious:
                await self._answer(event, t("busy", lang))
            return
        except ApiException as exc:
            log.warning("download_failed status=%s", exc.status)
            if in_set:
                await self.send(payload, Verdict.failed(payload["request_id"]))
            elif not only_suspicious:
                await self._answer(event, t("download_failed", lang))
            return
        if submission.verdict is not None:
            await self.send({"request_id": submission.request_id, "reply_to": reply_to}, submission.verdict)

    # --- delivery --------------------------------------------------------------------
    async def send(self, payload: dict[str, Any], verdict: Verdict) -> None:
        """Deliver a verdict quoting its image: reply while the token is fresh, push after."""
        reply_to = payload["reply_to"]
        lang = reply_to.get("lang", "zh-TW")
        album = reply_to.get("album")
        if album is None:
            if reply_to.get("only_suspicious") and not is_suspicious(verdict):
                log.info("silent request=%s label=%s", payload.get("request_id"), verdict.label)
                return
            image_url = None
            if verdict.marked_image_key and self.settings.public_base_url:
                # Served by the web adapter from Redis while it lasts (IMAGE_TTL_S).
                image_url = f"{self.settings.public_base_url}/api/marked/{verdict.request_id}"
            await self._deliver(reply_to, format_verdict(verdict, lang), payload.get("request_id", ""), image_url)
            return

        async def send_album(done: list[tuple[dict[str, Any], Verdict]]) -> None:
            # Any unused, still fresh reply token of the set will do; the first image is quoted.
            freshest = max((r for r, _ in done), key=lambda r: r.get("event_ts", 0))
            target = dict(done[0][0], reply_token=freshest.get("reply_token"), event_ts=freshest.get("event_ts", 0))
            await self._deliver(target, format_album([v for _, v in done], lang), f"album-{album}")

        await self.state.answer_album(reply_to, verdict, send_album)

    async def _deliver(self, reply_to: dict[str, Any], text: str, request_id: str,
                       image_url: str | None = None) -> None:
        messages: list[Any] = [TextMessage(text=text[:5000], quote_token=reply_to.get("quote_token"))]
        if image_url:
            messages.append(ImageMessage(original_content_url=image_url, preview_image_url=image_url))
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
        # The retry key makes a retried push idempotent on LINE's side.
        retry_key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"zhenjia:{request_id}"))
        try:
            await self.api.push_message(PushMessageRequest(to=reply_to["to"], messages=messages),
                                        x_line_retry_key=retry_key)
        except ApiException as exc:
            if exc.status in (400, 403, 404):  # left the group, blocked, unknown chat
                raise PermanentDeliveryError(f"push status {exc.status}") from exc
            if exc.status == 409:  # already accepted with this retry key
                return
            raise
        log.info("line_sent via=push request=%s", request_id)

    async def _answer(self, event: Event, text: str) -> None:
        """An immediate answer to an event (help, join, busy...): reply token, else push."""
        reply_to = {"to": _chat_of(event)[0], "reply_token": getattr(event, "reply_token", None),
                    "event_ts": event.timestamp / 1000}
        if isinstance(event, MessageEvent):
            reply_to["quote_token"] = getattr(event.message, "quote_token", None)
        try:
            await self._deliver(reply_to, text, f"answer-{uuid.uuid4().hex}")
        except (ApiException, PermanentDeliveryError) as exc:
            log.warning("answer_failed error=%s", type(exc).__name__)

    async def _lang(self, event: Event) -> str:
        """The user's language from their LINE profile (cached a day), zh-TW when unknown."""
        user_id = getattr(event.source, "user_id", None)
        if not user_id:
            return self.settings.default_lang
        cached = await self.state.cached_lang(user_id)
        if cached:
            return cached
        try:
            profile = await self.api.get_profile(user_id)
            lang = pick_lang(profile.language, self.settings.default_lang)
        except ApiException:  # not a friend of the bot, or no consent: no language to read
            lang = self.settings.default_lang
        await self.state.remember_lang(user_id, lang)
        return lang


def setup(app: web.Application, checker: Checker, settings: BotSettings) -> None:
    """Add the LINE webhook route and the client/delivery lifecycle to the shared aiohttp app."""
    line = LineBot(checker, settings)
    app[APP_KEY] = line
    app.router.add_post(settings.line_webhook_path, line.on_webhook)
    app.on_startup.append(line.on_startup)
    app.on_cleanup.append(line.on_cleanup)
