"""Telegram adapter: python-telegram-bot 22 handlers, polling or webhook, verdict delivery.

`start()` builds the Application, starts receiving updates without blocking, starts the outbox
delivery task and returns an async stop function (bot/__main__.py wires it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import urlparse

from telegram import Message, ReplyParameters, Update
from telegram.constants import ChatAction, ChatMemberStatus, ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CommandHandler,
    ContextTypes,
    Defaults,
    MessageHandler,
    filters,
)

from bot.chats import ChatState
from bot.checks import REDIS_ERRORS, Busy, Checker, PermanentDeliveryError, TooLarge, deliver_forever
from bot.messages import MODES, format_album, format_verdict, is_suspicious, mode_text, pick_lang, t
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

PLATFORM = "telegram"
ALBUM_WAIT_S = 1.0  # Telegram sends an album as separate messages in quick succession
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the public Bot API refuses larger downloads
IMAGES = filters.PHOTO | filters.Document.IMAGE
NEW_MESSAGES = filters.UpdateType.MESSAGE  # edits and channel posts are not answered


def _image_of(message: Message) -> tuple[Any, bool] | None:
    """(file object, sent_as_photo) for a photo (largest size) or an image document."""
    if message.photo:
        return message.photo[-1], True
    doc = message.document
    if doc is not None and (doc.mime_type or "").startswith("image/"):
        return doc, False
    return None


class TelegramBot:
    """The handlers and the delivery `send` of one Telegram bot."""

    def __init__(self, app: Application, checker: Checker, settings: BotSettings) -> None:
        self.app = app
        self.checker = checker
        self.settings = settings
        self.state = ChatState(checker.redis, PLATFORM, settings.user_rate_per_min, settings.chat_rate_per_min)
        self.download_limit = min(TELEGRAM_DOWNLOAD_LIMIT, settings.service.max_image_bytes)
        # Self-hosted telegram-bot-api servers have no 20 MB limit: trust the service limit there.
        if "api.telegram.org" not in settings.telegram_base_url:
            self.download_limit = settings.service.max_image_bytes
        self._albums: dict[str, list[Message]] = {}

    def register(self) -> None:
        app = self.app
        app.add_handler(CommandHandler(["start", "help"], self.on_help, filters=NEW_MESSAGES))
        app.add_handler(CommandHandler("check", self.on_check, filters=NEW_MESSAGES))
        app.add_handler(CommandHandler("mode", self.on_mode, filters=NEW_MESSAGES))
        app.add_handler(MessageHandler(NEW_MESSAGES & IMAGES, self.on_image))
        app.add_handler(MessageHandler(NEW_MESSAGES & filters.ChatType.PRIVATE & ~filters.COMMAND, self.on_other))
        app.add_error_handler(self.on_error)

    # --- handlers --------------------------------------------------------------------
    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start and /help: what the bot does, in the user's language."""
        msg = update.effective_message
        await msg.reply_text(t("help", self._lang(msg)))

    async def on_other(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Stickers, non-image files, text in a 1:1 chat: a short help line (groups stay silent)."""
        msg = update.effective_message
        await msg.reply_text(t("not_image", self._lang(msg)))

    async def on_image(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or image file, sent or forwarded, alone or in an album."""
        msg = update.effective_message
        lang = self._lang(msg)
        is_group = self._is_group(msg)
        if is_group and self._too_old(msg):
            log.info("skip_old chat_type=%s age_s=%.0f", msg.chat.type, time.time() - msg.date.timestamp())
            return
        mode = await self.state.get_mode(msg.chat_id, is_group)  # 1:1 chats default to `all`
        if mode == "off":
            return
        only_suspicious = mode == "fake"
        if msg.media_group_id:
            self._collect_album(msg, lang, only_suspicious)
            return
        await self._check(msg, msg.from_user.id if msg.from_user else None, lang, only_suspicious)

    async def on_check(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/check as a reply to an image: works in privacy mode and in every group mode."""
        msg = update.effective_message
        lang = self._lang(msg)
        if self._is_group(msg) and self._too_old(msg):
            return
        target = msg.reply_to_message
        if target is None or _image_of(target) is None:
            await msg.reply_text(t("check_needs_reply", lang))
            return
        await self._check(target, msg.from_user.id if msg.from_user else None, lang, only_suspicious=False)

    async def on_mode(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/mode [all|fake|off]: show or set how the bot answers in this chat (admins only in groups)."""
        msg = update.effective_message
        lang = self._lang(msg)
        is_group = self._is_group(msg)
        args = [a.lower() for a in (context.args or [])]
        try:
            if not args:
                await msg.reply_text(mode_text(await self.state.get_mode(msg.chat_id, is_group), lang, False))
                return
            if args[0] not in MODES:
                await msg.reply_text(t("mode_bad", lang))
                return
            if is_group and not await self._is_admin(msg):
                await msg.reply_text(t("mode_admins_only", lang))
                return
            await self.state.set_mode(msg.chat_id, args[0])
        except REDIS_ERRORS:
            await msg.reply_text(t("busy", lang))
            return
        log.info("mode_set chat_type=%s mode=%s", msg.chat.type, args[0])
        await msg.reply_text(mode_text(args[0], lang, True))

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log handler errors without message text; the bot keeps running."""
        err = context.error
        log.error("handler_error error=%s detail=%s", type(err).__name__, str(err)[:200])

    # --- checking --------------------------------------------------------------------
    async def _check(self, target: Message, user_id: int | None, lang: str, only_suspicious: bool) -> None:
        """Rate-limit, download, submit one picture; answer at once on a cache hit or an error."""
        quiet = only_suspicious  # in a `fake`-mode group only verdicts may speak, not errors
        allowed, first_refusal = await self.state.allow(user_id, target.chat_id)
        if not allowed:
            if first_refusal:
                await self._note(target, "rate_limited", lang)
            return
        image, as_photo = _image_of(target)  # type: ignore[misc]
        reply_to = {"chat_id": target.chat_id, "message_id": target.message_id, "lang": lang,
                    "only_suspicious": only_suspicious, "photo": as_photo}
        try:
            data = await self._download(image)
            submission = await self.checker.submit(PLATFORM, reply_to, data, lang=lang)
        except TooLarge:
            if not quiet:
                await self._note(target, "too_large", lang, limit_mb=self.download_limit // (1024 * 1024))
            return
        except Busy as exc:
            log.warning("busy chat_type=%s detail=%s", target.chat.type, exc)
            if not quiet:
                await self._note(target, "busy", lang)
            return
        except TelegramError as exc:
            log.warning("download_failed error=%s", type(exc).__name__)
            if not quiet:
                await self._note(target, "download_failed", lang)
            return
        if submission.verdict is not None:
            await self.send({"request_id": submission.request_id, "reply_to": reply_to}, submission.verdict)
            return
        try:
            await target.get_bot().send_chat_action(target.chat_id, ChatAction.TYPING)
        except TelegramError:
            pass  # only a courtesy

    async def _download(self, image: Any) -> bytes:
        if image.file_size and image.file_size > self.download_limit:
            raise TooLarge(f"{image.file_size} bytes")
        try:
            file = await image.get_file()
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                raise TooLarge(str(exc)) from exc
            raise
        return bytes(await file.download_as_bytearray())

    def _collect_album(self, msg: Message, lang: str, only_suspicious: bool) -> None:
        """Gather an album's messages briefly, then check them together (one combined reply)."""
        key = f"{msg.chat_id}:{msg.media_group_id}"
        if key in self._albums:
            self._albums[key].append(msg)
            return
        self._albums[key] = [msg]
        self.app.create_task(self._check_album(key, lang, only_suspicious), name=f"album-{key}")

    async def _check_album(self, key: str, lang: str, only_suspicious: bool) -> None:
        await asyncio.sleep(ALBUM_WAIT_S)
        messages = sorted(self._albums.pop(key), key=lambda m: m.message_id)
        first = messages[0]
        # Pictures of the same album that straggle in after the wait form their own, separate reply.
        album_id = f"{key}:{first.message_id}"
        user_id = first.from_user.id if first.from_user else None
        allowed, first_refusal = await self.state.allow(user_id, first.chat_id)  # an album counts once
        if not allowed:
            if first_refusal:
                await self._note(first, "rate_limited", lang)
            return
        size = len(messages)
        for index, message in enumerate(messages):
            image, as_photo = _image_of(message)  # type: ignore[misc]
            reply_to = {"chat_id": first.chat_id, "message_id": first.message_id, "lang": lang,
                        "only_suspicious": only_suspicious, "photo": as_photo, "album": album_id,
                        "album_size": size, "album_index": index}
            payload = {"request_id": f"album-{album_id}-{index}", "reply_to": reply_to}
            try:
                data = await self._download(image)
                submission = await self.checker.submit(PLATFORM, reply_to, data, lang=lang)
            except Busy:
                if not only_suspicious:
                    await self._note(first, "busy", lang)
                return
            except TooLarge:
                await self.send(payload, Verdict(payload["request_id"], "unreadable", None,
                                                  reasons=["too_large_bytes"]))
                continue
            except TelegramError:
                await self.send(payload, Verdict.failed(payload["request_id"]))
                continue
            if submission.verdict is not None:
                await self.send(payload, submission.verdict)
        try:
            await first.get_bot().send_chat_action(first.chat_id, ChatAction.TYPING)
        except TelegramError:
            pass

    # --- delivery --------------------------------------------------------------------
    async def send(self, payload: dict[str, Any], verdict: Verdict) -> None:
        """Deliver one verdict as a reply to its picture (albums: once all pictures are in)."""
        reply_to = payload["reply_to"]
        album = reply_to.get("album")
        if album is None:
            if reply_to.get("only_suspicious") and not is_suspicious(verdict):
                log.info("silent request=%s label=%s", payload.get("request_id"), verdict.label)
                return
            await self._send_single(reply_to, verdict)
            return

        async def send_album(done: list[tuple[dict[str, Any], Verdict]]) -> None:
            await self._reply(reply_to, format_album([v for _, v in done], reply_to.get("lang", "zh-TW")))

        await self.state.answer_album(reply_to, verdict, send_album)

    async def _send_single(self, reply_to: dict[str, Any], verdict: Verdict) -> None:
        text = format_verdict(verdict, reply_to.get("lang", "zh-TW"), sent_as_photo=bool(reply_to.get("photo")))
        marked = None
        if verdict.marked_image_key:
            marked = await self.checker.redis.get(verdict.marked_image_key)
        if marked:
            try:
                await self._reply(reply_to, text, photo=bytes(marked))
                return
            except PermanentDeliveryError as exc:
                if isinstance(exc.__cause__, Forbidden):
                    raise
                log.warning("photo_refused error=%s", exc)  # the text alone still answers
        await self._reply(reply_to, text)

    async def _reply(self, reply_to: dict[str, Any], text: str, photo: bytes | None = None) -> None:
        bot = self.app.bot
        params = ReplyParameters(message_id=reply_to["message_id"], allow_sending_without_reply=True)
        try:
            if photo is not None:
                await bot.send_photo(reply_to["chat_id"], photo=photo, caption=text, reply_parameters=params)
            else:
                await bot.send_message(reply_to["chat_id"], text, reply_parameters=params)
        except (Forbidden, BadRequest) as exc:  # blocked, kicked, chat gone: retrying cannot help
            raise PermanentDeliveryError(f"{type(exc).__name__}: {exc}") from exc

    async def _note(self, target: Message, key: str, lang: str, **fmt: Any) -> None:
        """A short text reply (busy, too large, ...); failures here are only logged."""
        try:
            await target.reply_text(t(key, lang, **fmt))
        except TelegramError as exc:
            log.warning("note_failed key=%s error=%s", key, type(exc).__name__)

    # --- helpers ---------------------------------------------------------------------
    def _lang(self, msg: Message) -> str:
        code = msg.from_user.language_code if msg.from_user else None
        return pick_lang(code, self.settings.default_lang)

    @staticmethod
    def _is_group(msg: Message) -> bool:
        return msg.chat.type != ChatType.PRIVATE

    def _too_old(self, msg: Message) -> bool:
        return time.time() - msg.date.timestamp() > self.settings.group_event_max_age_s

    async def _is_admin(self, msg: Message) -> bool:
        if msg.sender_chat is not None and msg.sender_chat.id == msg.chat_id:
            return True  # an anonymous admin posts as the group itself
        if msg.from_user is None:
            return False
        member = await msg.get_bot().get_chat_member(msg.chat_id, msg.from_user.id)
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)


async def start(checker: Checker, settings: BotSettings) -> Callable[[], Awaitable[None]]:
    """Start the Telegram bot (polling, or webhook when TELEGRAM_WEBHOOK_URL is set) without blocking."""
    app = (Application.builder().token(settings.telegram_token)
           .base_url(settings.telegram_base_url).base_file_url(settings.telegram_base_file_url)
           .rate_limiter(AIORateLimiter(max_retries=2))
           .defaults(Defaults(do_quote=True))  # every answer is a reply to what it answers, in 1:1 too
           .concurrent_updates(True)  # a slow download must not hold up other chats
           .build())
    bot = TelegramBot(app, checker, settings)
    bot.register()
    await app.initialize()
    await app.start()
    if settings.telegram_webhook_url:
        path = urlparse(settings.telegram_webhook_url).path.lstrip("/")
        await app.updater.start_webhook(listen=settings.telegram_webhook_listen, port=settings.telegram_webhook_port,
                                        url_path=path, webhook_url=settings.telegram_webhook_url,
                                        secret_token=settings.telegram_webhook_secret or None,
                                        allowed_updates=[Update.MESSAGE])
    else:
        await app.updater.start_polling(allowed_updates=[Update.MESSAGE])
    delivery = asyncio.create_task(deliver_forever(checker, PLATFORM, bot.send, consumer=settings.instance),
                                   name="telegram-delivery")
    log.info("telegram_started mode=%s", "webhook" if settings.telegram_webhook_url else "polling")

    async def stop() -> None:
        delivery.cancel()
        await asyncio.gather(delivery, return_exceptions=True)
        if app.updater.running:
            await app.updater.stop()
        await app.stop()
        await app.shutdown()

    return stop
