"""Telegram adapter: python-telegram-bot 22 handlers over the shared chat flow (bot/flow.py).

Polling, or a webhook when TELEGRAM_WEBHOOK_URL is set. An album arrives as separate messages in quick
succession, without a count: the base adapter gathers them (`gather_album`) and the flow checks them as one.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from telegram import Message, ReplyParameters, Update
from telegram.constants import ChatAction, ChatMemberStatus, ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import (AIORateLimiter, Application, ApplicationHandlerStop, CommandHandler, ContextTypes,
                          MessageHandler, TypeHandler, filters)

from bot.checks import Checker, PermanentDeliveryError, TooLarge
from bot.adapter import ChatAdapter
from bot.flow import Chat, Picture
from bot.messages import pick_lang
from bot.settings import BotSettings
from core.contract import Verdict

log = logging.getLogger(__name__)

TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the public Bot API refuses larger downloads
NEW = filters.UpdateType.MESSAGE  # edits and channel posts are not answered


class Adapter(ChatAdapter):
    """One Telegram bot: its handlers, and `post` for the flow."""

    name = "telegram"
    wants_marked = True
    sdk_errors = (TelegramError,)

    def __init__(self, checker: Checker, settings: BotSettings, web_app: Any = None) -> None:
        # Self-hosted telegram-bot-api servers have no 20 MB limit: trust the service limit there.
        official = "api.telegram.org" in settings.telegram_base_url
        super().__init__(checker, settings, TELEGRAM_DOWNLOAD_LIMIT if official else None)
        self.app = (Application.builder().token(settings.telegram_token)
                    .base_url(settings.telegram_base_url).base_file_url(settings.telegram_base_file_url)
                    .rate_limiter(AIORateLimiter(max_retries=2))
                    .concurrent_updates(True)  # a slow download must not hold up other chats
                    .build())
        self.app.add_handler(TypeHandler(Update, self.on_update), group=-1)  # runs before every other handler
        commands = CommandHandler(["start", "help", "mode", "check"], self.on_command, filters=NEW)
        self.app.add_handlers([commands, MessageHandler(NEW & ~filters.COMMAND, self.on_message)])
        self.app.add_error_handler(self.on_error)

    async def on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Every update once: a webhook retry or a re-sent update (same update_id) is dropped here."""
        if not await self.flow.first_time(update.update_id):
            raise ApplicationHandlerStop

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start, /help: what the bot does; /mode [all|fake|off] (admins in groups); /check as a reply."""
        msg = update.effective_message
        chat, command = self._chat(msg), msg.text[:msg.entities[0].length].split("@")[0]  # "/mode@zhenjia_bot"
        if command.lower() != "/check":
            return await self.say(chat.answer_to, await self.flow.command(chat, command, context.args,
                                                                          lambda: self._is_admin(msg)))
        # /check replies to a picture or clip: it works in privacy mode and in every group mode.
        picture = self._picture(msg.reply_to_message) if msg.reply_to_message else None
        await self.say(picture.reply_to if picture else chat.answer_to, await self.flow.asked(chat, picture))

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo, clip or file of either, alone or in an album (sent or forwarded); else a hint in 1:1."""
        msg = update.effective_message
        album = f"{msg.chat_id}:{msg.media_group_id}" if msg.media_group_id else None  # parts come one by one
        await self.message(self._chat(msg), self._picture(msg), album, msg.message_id)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log handler errors without message text; the bot keeps running."""
        log.error("handler_error error=%s detail=%s", type(context.error).__name__, str(context.error)[:200])

    def _chat(self, msg: Message) -> Chat:
        user = msg.from_user
        lang = pick_lang(user.language_code if user else None, self.settings.default_lang)
        return Chat(msg.chat_id, msg.chat.type != ChatType.PRIVATE, user.id if user else None, lang,
                    msg.date.timestamp(), {"chat_id": msg.chat_id, "message_id": msg.message_id})

    def _picture(self, msg: Message) -> Picture | None:
        """A photo (largest size), video, GIF (an `animation`, sent as MP4), round video note, or image / video
        file, as the flow's Picture; None for any other message."""
        mime = (msg.document.mime_type or "") if msg.document else ""
        if msg.photo:
            media, as_photo, clip = msg.photo[-1], True, False
        elif (media := msg.animation or msg.video or msg.video_note) is not None:
            as_photo, clip = False, True
        elif mime.startswith(("image/", "video/")):
            media, as_photo, clip = msg.document, False, mime.startswith("video/") or mime == "image/gif"
        else:
            return None
        reply_to = {"chat_id": msg.chat_id, "message_id": msg.message_id, "photo": as_photo}
        return Picture(lambda: self._download(media), reply_to, size=media.file_size, clip=clip)

    async def _download(self, media: Any) -> bytes:
        try:
            return bytes(await (await media.get_file()).download_as_bytearray())
        except BadRequest as exc:  # any other refusal is a failed download (`sdk_errors`)
            if "too big" not in str(exc).lower():
                raise
            raise TooLarge(str(exc)) from exc

    async def post(self, reply_to: dict[str, Any], text: str, verdict: Verdict | None,
                   token: str | None = None, retry_key: str = "") -> None:
        """A reply to the picture; with the marked copy as a photo while Redis still has it."""
        marked = await self.flow.marked(verdict)
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
