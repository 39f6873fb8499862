"""Telegram adapter: python-telegram-bot 22 handlers over the shared chat flow (bot/flow.py).

Polling, or a webhook when TELEGRAM_WEBHOOK_URL is set. An album arrives as separate messages in quick
succession: they are gathered for ALBUM_WAIT_S and checked as one.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from telegram import Message, ReplyParameters, Update
from telegram.constants import ChatAction, ChatMemberStatus, ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import (AIORateLimiter, Application, ApplicationHandlerStop, CommandHandler, ContextTypes, Defaults,
                          MessageHandler, TypeHandler, filters)

from bot.checks import Checker, PermanentDeliveryError, TooLarge
from bot.adapter import ChatAdapter
from bot.flow import Chat, ChatFlow, DownloadFailed, Picture
from bot.messages import pick_lang
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

ALBUM_WAIT_S = 1.0
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the public Bot API refuses larger downloads
NEW = filters.UpdateType.MESSAGE  # edits and channel posts are not answered


MEDIA = filters.PHOTO | filters.Document.IMAGE | filters.Document.VIDEO | filters.VIDEO | filters.ANIMATION \
    | filters.VIDEO_NOTE


def _media_of(message: Message) -> tuple[Any, bool, bool] | None:
    """(file object, sent_as_photo, is_clip): a photo (largest size), a video, GIF (an `animation`, sent as
    MP4), round video note, or an image / video file."""
    if message.photo:
        return message.photo[-1], True, False
    clip = message.animation or message.video or message.video_note
    if clip is not None:
        return clip, False, True
    mime = (message.document.mime_type or "") if message.document else ""
    if mime.startswith(("image/", "video/")):
        return message.document, False, mime.startswith("video/") or mime == "image/gif"
    return None


class Adapter(ChatAdapter):
    """One Telegram bot: its handlers, and `deliver` for the flow."""

    name = "telegram"
    wants_marked = True

    def __init__(self, checker: Checker, settings: BotSettings, web_app: Any = None) -> None:
        self.settings = settings
        self.app = (Application.builder().token(settings.telegram_token)
                    .base_url(settings.telegram_base_url).base_file_url(settings.telegram_base_file_url)
                    .rate_limiter(AIORateLimiter(max_retries=2))
                    .defaults(Defaults(do_quote=True))  # every answer quotes what it answers, in 1:1 too
                    .concurrent_updates(True)  # a slow download must not hold up other chats
                    .build())
        # Self-hosted telegram-bot-api servers have no 20 MB limit: trust the service limit there.
        official = "api.telegram.org" in settings.telegram_base_url
        limit = min(settings.service.max_upload_bytes, TELEGRAM_DOWNLOAD_LIMIT if official else 1 << 62)
        self.flow = ChatFlow(self, checker, settings, limit)
        self.app.add_handler(TypeHandler(Update, self.on_update), group=-1)  # runs before every other handler
        self.app.add_handlers([
            CommandHandler(["start", "help"], self.on_help, filters=NEW),
            CommandHandler("check", self.on_check, filters=NEW),
            CommandHandler("mode", self.on_mode, filters=NEW),
            MessageHandler(NEW & MEDIA, self.on_image),
            MessageHandler(NEW & filters.ChatType.PRIVATE & ~filters.COMMAND, self.on_help)])
        self.app.add_error_handler(self.on_error)

    async def on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Every update once: a webhook retry or a re-sent update (same update_id) is dropped here."""
        if not await self.flow.first_time(update.update_id):
            log.info("telegram_duplicate_skipped")
            raise ApplicationHandlerStop

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start and /help: what the bot does; stickers, files, text in a 1:1 chat: a one-line hint."""
        msg = update.effective_message
        await self._say(msg, self.flow.text("help" if msg.text and msg.text.startswith("/") else "not_image",
                                            self._chat(msg).lang))

    async def on_image(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo, clip or file of either, sent or forwarded, alone or in an album."""
        msg = update.effective_message
        chat = self._chat(msg)
        if self.flow.too_old(chat) or (mode := await self.flow.answer_mode(chat)) is None:
            return
        if msg.media_group_id:  # an album: its messages come one by one, without a count
            self.gather(f"{msg.chat_id}:{msg.media_group_id}", msg, ALBUM_WAIT_S,
                        lambda album: self._check_album(album, chat, mode == "fake"))
            return
        _, say = await self.flow.check(chat, self._picture(msg, chat, mode == "fake"), mode == "fake")
        await self._say(msg, say)

    async def on_check(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/check as a reply to a picture or clip: works in privacy mode and in every group mode."""
        msg = update.effective_message
        chat, target = self._chat(msg), msg.reply_to_message
        if self.flow.too_old(chat):
            return
        if target is None or _media_of(target) is None:
            await self._say(msg, self.flow.text("check_needs_reply", chat.lang))
            return
        _, say = await self.flow.check(chat, self._picture(target, chat, False), only_suspicious=False)
        await self._say(target, say)

    async def on_mode(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/mode [all|fake|off]: show or set how the bot answers in this chat (admins only in groups)."""
        msg = update.effective_message
        word = context.args[0] if context.args else None
        await self._say(msg, await self.flow.mode_command(self._chat(msg), word, lambda: self._is_admin(msg)))

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log handler errors without message text; the bot keeps running."""
        log.error("handler_error error=%s detail=%s", type(context.error).__name__, str(context.error)[:200])

    def _chat(self, msg: Message) -> Chat:
        user = msg.from_user
        return Chat(msg.chat_id, msg.chat.type != ChatType.PRIVATE, user.id if user else None,
                    pick_lang(user.language_code if user else None, self.settings.default_lang), msg.date.timestamp())

    def _picture(self, msg: Message, chat: Chat, only_suspicious: bool, **album: Any) -> Picture:
        media, as_photo, clip = _media_of(msg)  # type: ignore[misc]
        reply_to = {"chat_id": chat.chat_id, "message_id": album.pop("quote", msg.message_id), "lang": chat.lang,
                    "only_suspicious": only_suspicious, "photo": as_photo, **album}
        rid = f"album-{album['album']}-{album['album_index']}" if album else ""
        return Picture(lambda: self._download(media), reply_to, rid, media.file_size, clip)

    async def _download(self, image: Any) -> bytes:
        try:
            return bytes(await (await image.get_file()).download_as_bytearray())
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                raise TooLarge(str(exc)) from exc
            raise DownloadFailed(type(exc).__name__) from exc
        except TelegramError as exc:
            raise DownloadFailed(type(exc).__name__) from exc

    async def _check_album(self, messages: list[Message], chat: Chat, only_suspicious: bool) -> None:
        first = min(messages, key=lambda m: m.message_id)
        messages = sorted(messages, key=lambda m: m.message_id)
        # Pictures of the same album that straggle in after the wait form their own, separate answer.
        album = {"album": f"{first.chat_id}:{first.media_group_id}:{first.message_id}", "album_size": len(messages),
                 "quote": first.message_id}
        pictures = [self._picture(m, chat, only_suspicious, album_index=i, **album) for i, m in enumerate(messages)]
        await self._say(first, await self.flow.check_album(chat, pictures, only_suspicious))

    async def deliver(self, reply_to: dict[str, Any], text: str, request_id: str,
                      verdict: Verdict | None = None) -> None:
        """A reply to the picture; with the marked copy as a photo while Redis still has it."""
        key = verdict.marked_image_key if verdict is not None else None
        marked = await self.flow.checker.redis.get(key) if key else None
        chat_id, params = reply_to["chat_id"], ReplyParameters(reply_to["message_id"], allow_sending_without_reply=True)
        try:
            if marked:
                try:
                    await self.app.bot.send_photo(chat_id, bytes(marked), caption=text, reply_parameters=params)
                    return
                except BadRequest as exc:  # the photo was refused: the text alone still answers
                    log.warning("photo_refused error=%s", exc)
            await self.app.bot.send_message(chat_id, text, reply_parameters=params)
        except (Forbidden, BadRequest) as exc:  # blocked, kicked, chat gone: retrying cannot help
            raise PermanentDeliveryError(f"{type(exc).__name__}: {exc}") from exc

    async def working(self, chat: Chat) -> None:
        await self.app.bot.send_chat_action(chat.chat_id, ChatAction.TYPING)

    async def _say(self, msg: Message, text: str | None) -> None:
        """An immediate short answer (help, busy, mode…); failures are only logged."""
        try:
            if text:
                await msg.reply_text(text)
        except TelegramError as exc:
            log.warning("say_failed error=%s", type(exc).__name__)

    async def _is_admin(self, msg: Message) -> bool:
        if msg.sender_chat is not None and msg.sender_chat.id == msg.chat_id:
            return True  # an anonymous admin posts as the group itself
        member = await msg.get_bot().get_chat_member(msg.chat_id, msg.from_user.id) if msg.from_user else None
        return member is not None and member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    async def start(self) -> None:
        await self.app.initialize()
        await self.app.start()
        s = self.settings
        if s.telegram_webhook_url:
            await self.app.updater.start_webhook(
                listen=s.telegram_webhook_listen, port=s.telegram_webhook_port,
                url_path=urlparse(s.telegram_webhook_url).path.lstrip("/"), webhook_url=s.telegram_webhook_url,
                secret_token=s.telegram_webhook_secret or None, allowed_updates=[Update.MESSAGE])
        else:
            await self.app.updater.start_polling(allowed_updates=[Update.MESSAGE])
        log.info("telegram_started mode=%s", "webhook" if s.telegram_webhook_url else "polling")

    async def stop(self) -> None:
        if self.app.updater.running:
            await self.app.updater.stop()
        await self.app.stop()
        await self.app.shutdown()
