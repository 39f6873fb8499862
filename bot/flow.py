"""The chat flow every platform shares: which pictures to check, what to say, and how a verdict is delivered.

An adapter (bot/telegram.py, bot/line.py) only translates its platform's events into a `Chat` and
`Picture`s, and implements the small `Platform` interface (bot/adapter.py) to put text (and a marked
picture) into a chat. Everything else — old group messages, group modes and typed commands, rate limits,
submit, turning "too large" / "busy" / a failed download into a sentence or into silence, album answers,
`fake`-mode silence — happens here, once, so a third platform behaves like the first two by construction.

Methods that answer the user return the text to say (or None for silence); the adapter says it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bot import metrics
from bot.chats import ChatState
from bot.checks import REDIS_ERRORS, Busy, Checker, TooLarge, Unavailable
from bot.messages import TEXTS, format_album, format_verdict, is_suspicious, pick_lang, t
from bot.settings import BotSettings
from core.contract import DEFAULT_LANG, Verdict
from core.keys import album_key, event_key

if TYPE_CHECKING:
    from bot.adapter import Platform

log = logging.getLogger(__name__)

CLIP_COST = 2  # a clip is up to 32 frames of work: it counts as two checks against the rate limits
EVENT_MEMORY_S = 24 * 3600  # platforms redeliver within minutes to hours; a day of markers is plenty
# Commands and mode words users type, in both languages (LINE users type Chinese; Telegram users /mode all).
HELP_COMMANDS = {"/help", "/start", "help", "說明", "幫助", "使用說明"}
MODE_COMMANDS = {"/mode", "模式"}
LEAVE_COMMANDS = {"/leave", "離開", "退出", "bye"}
MODE_WORDS = {"all": "all", "全部": "all", "fake": "fake", "可疑": "fake", "off": "off", "關閉": "off"}


class DownloadFailed(Exception):
    """The platform would not give us the picture's bytes (expired, deleted, network)."""


@dataclass
class Chat:
    """Who sent something, where, and when, whatever the platform; and where an answer to it at once goes."""

    chat_id: str | int
    is_group: bool
    user_id: str | int | None
    lang: str = DEFAULT_LANG
    sent_at: float = field(default_factory=time.time)  # epoch seconds of the platform's event
    answer_to: dict[str, Any] = field(default_factory=dict)  # the `reply_to` of `ChatAdapter.say`'s answers


@dataclass
class Picture:
    """One picture to check: how to fetch its bytes and where its answer goes."""

    fetch: Callable[[], Awaitable[bytes]]  # raises TooLarge, DownloadFailed or the platform's `sdk_errors`
    reply_to: dict[str, Any]  # the platform's address for the answer; travels in the job as JSON
    request_id: str = ""  # for album parts: a stable id of this picture within its album
    size: int | None = None  # bytes, when the platform says before the download (never fetch what is too large)
    clip: bool = False  # a video / GIF / round video: costs CLIP_COST checks against the rate limits


class ChatFlow:
    """The shared steps between a platform event and a chat answer, for one platform."""

    def __init__(self, platform: Platform, checker: Checker, settings: BotSettings, download_limit: int) -> None:
        self.platform = platform
        self.checker = checker
        self.settings = settings
        self.download_limit = download_limit
        self.state = ChatState(checker.redis, platform.name, settings.user_rate_per_min, settings.chat_rate_per_min,
                               state=checker.state)

    def text(self, key: str, lang: str, **fmt: Any) -> str:
        """`t(key)`, preferring this platform's own wording (`line_help` over `help`) where there is one."""
        own = f"{self.platform.name}_{key}"
        return t(own if own in TEXTS else key, lang, **fmt)

    # --- which events to answer --------------------------------------------------------
    def too_old(self, chat: Chat) -> bool:
        """A group message older than GROUP_EVENT_MAX_AGE_S (the bot was down): answering now is noise."""
        age = time.time() - chat.sent_at
        if chat.is_group and age > self.settings.group_event_max_age_s:
            log.info("skip_old platform=%s age_s=%.0f", self.platform.name, age)
            return True
        return False

    async def answer_mode(self, chat: Chat) -> str | None:
        """'all' | 'fake' for a picture that should be checked unasked; None when the chat chose 'off' (or the
        message is too old to answer)."""
        if self.too_old(chat):
            return None
        mode = await self.state.get_mode(chat.chat_id, chat.is_group)  # 1:1 chats default to `all`
        return None if mode == "off" else mode

    def hint(self, chat: Chat) -> str | None:
        """What to say to a message that is no picture and no command: a hint in 1:1, nothing in groups."""
        return None if chat.is_group else self.text("not_image", chat.lang)

    def greeting(self, chat: Chat) -> str:
        """What to say when the bot was just added to a chat: the help to a new friend (1:1); in a group, an
        introduction in both languages, since nobody's language is known yet."""
        if not chat.is_group:
            return self.text("help", chat.lang)
        return self.text("join", "zh-TW") + "\n\n" + self.text("join", "en")

    async def command(self, chat: Chat, command: str, args: list[str],
                      may_change: Callable[[], Awaitable[bool]] | None = None) -> str | None:
        """What to say to a typed command — help, /mode [all|fake|off] (`may_change`: as for
        `mode_command`), /leave (then the adapter leaves: `leaves`) — or to other text; `command` is its first
        word ("" for none)."""
        if command.lower() in HELP_COMMANDS:
            return self.text("help", chat.lang)
        if command.lower() in MODE_COMMANDS:
            return await self.mode_command(chat, args[0] if args else None, may_change)
        if self.leaves(chat, command):
            return self.text("leaving", chat.lang)
        return self.hint(chat) if command else None

    @staticmethod
    def leaves(chat: Chat, command: str) -> bool:
        """Whether `command` asks the bot to leave this chat (/leave, 離開… in a group; only LINE listens)."""
        return chat.is_group and command.lower() in LEAVE_COMMANDS

    async def mode_command(self, chat: Chat, word: str | None,
                           may_change: Callable[[], Awaitable[bool]] | None = None) -> str:
        """/mode [all|fake|off]: the text that shows or confirms the chat's mode.

        `may_change` says whether this sender may change it (group admins on Telegram); None: anyone.
        """
        lang = chat.lang
        try:
            if word is None:
                return self._mode_text(await self.state.get_mode(chat.chat_id, chat.is_group), lang, False)
            mode = MODE_WORDS.get(word.lower())
            if mode is None:
                return self.text("mode_bad", lang)
            if chat.is_group and may_change is not None and not await may_change():
                return self.text("mode_admins_only", lang)
            await self.state.set_mode(chat.chat_id, mode)
        except REDIS_ERRORS:
            return self.text("unavailable", lang)
        log.info("mode_set platform=%s group=%s mode=%s", self.platform.name, chat.is_group, mode)
        return self._mode_text(mode, lang, True)

    def _mode_text(self, mode: str, lang: str, changed: bool) -> str:
        return self.text("mode_set" if changed else "mode_show", lang, mode=mode,
                         desc=self.text(f"mode_desc_{mode}", lang))

    async def user_lang(self, user_id: str | int | None, read_profile: Callable[[], Awaitable[str | None]]) -> str:
        """A user's language from their platform profile (cached a day); `read_profile` gives None for 'none'
        (and the platform's refusal counts as none)."""
        if user_id is None:
            return self.settings.default_lang
        cached = await self.state.cached_lang(str(user_id))
        if cached:
            return cached
        try:
            code = await read_profile()
        except self.platform.sdk_errors:  # the platform will not say (LINE: not the bot's friend, no consent)
            code = None
        lang = pick_lang(code, self.settings.default_lang)
        await self.state.remember_lang(str(user_id), lang)
        return lang

    # --- checking ----------------------------------------------------------------------
    async def picture(self, chat: Chat, picture: Picture) -> str | None:
        """A picture sent unasked — alone, or one part of a set the platform numbers (`album_index` in its
        `reply_to`: LINE's image set, one event a part) — checked as the chat's mode says; what to say now."""
        mode = await self.answer_mode(chat)
        if mode is None:
            return None
        part = picture.reply_to.get("album_index")  # a numbered set counts once against the limits: at part 0
        return (await self.check(chat, picture, mode == "fake", album=part is not None,
                                 rate_limited=not part))[1]

    async def album(self, chat: Chat, pictures: list[Picture]) -> str | None:
        """An album the adapter gathered (`ChatAdapter.gather_album`), sent unasked: checked as the chat's mode
        says; what to say now."""
        mode = await self.answer_mode(chat)
        return None if mode is None else await self.check_album(chat, pictures, mode == "fake")

    async def asked(self, chat: Chat, picture: Picture | None) -> str | None:
        """A picture someone asked about (Telegram's /check as a reply to it), whatever the chat's mode; what
        to say now. None for `picture`: the request named no picture, so say how to ask."""
        if self.too_old(chat):
            return None
        if picture is None:
            return self.text("check_needs_reply", chat.lang)
        return (await self.check(chat, picture, only_suspicious=False))[1]

    async def allowed(self, chat: Chat, cost: int = 1) -> tuple[bool, str | None]:
        """(go on, what to say): the rate limits; the polite refusal is said once per window and chat."""
        ok, first_refusal = await self.state.allow(chat.user_id, chat.chat_id, cost)
        if not ok:
            metrics.count_refused(self.platform.name, "rate_limited")
        return ok, (self.text("rate_limited", chat.lang) if first_refusal else None)

    async def check(self, chat: Chat, picture: Picture, only_suspicious: bool, album: bool = False,
                    rate_limited: bool = True, show_working: bool = True) -> tuple[bool, str | None]:
        """Fetch and submit one picture; (go on with the album, what to say now).

        Answers from the cache at once. In an album a picture that cannot be fetched becomes a verdict
        in the combined answer, so the answer still comes. In a `fake`-mode group (`only_suspicious`)
        only verdicts may speak: errors are logged, not said. The answer's address gets the chat's language
        and `only_suspicious`, which decide how (and whether) the verdict is said.
        """
        if rate_limited:
            ok, say = await self.allowed(chat, CLIP_COST if picture.clip else 1)
            if not ok:
                return False, say
        quiet = only_suspicious
        request_id = picture.request_id
        reply_to = picture.reply_to | {"lang": chat.lang, "only_suspicious": only_suspicious, "clip": picture.clip}
        try:
            if picture.size and picture.size > self.download_limit:
                raise TooLarge(f"{picture.size} bytes", self.download_limit)
            data = await picture.fetch()
            submission = await self.checker.submit(self.platform.name, reply_to, data, lang=chat.lang,
                                                   want_marked=self.platform.wants_marked and not album)
        except TooLarge as exc:
            metrics.count_refused(self.platform.name, "too_large")
            if album:
                await self.send({"request_id": request_id, "reply_to": reply_to},
                                Verdict(request_id, "unreadable", None, reasons=["too_large_bytes"]))
                return True, None
            limit = min(exc.limit or self.download_limit, self.download_limit)
            return False, None if quiet else self.text("too_large", chat.lang, limit_mb=limit // (1024 * 1024))
        except Busy as exc:  # a long queue, or (Unavailable) Redis restarting: different sentences
            log.warning("busy platform=%s detail=%s", self.platform.name, exc)
            reason = "unavailable" if isinstance(exc, Unavailable) else "busy"
            metrics.count_refused(self.platform.name, reason)
            return False, None if quiet else self.text(reason, chat.lang)
        except (DownloadFailed, *self.platform.sdk_errors) as exc:  # the platform would not give us the bytes
            log.warning("download_failed platform=%s error=%s", self.platform.name,
                        exc if isinstance(exc, DownloadFailed) else type(exc).__name__)
            if album:
                await self.send({"request_id": request_id, "reply_to": reply_to}, Verdict.failed(request_id))
                return True, None
            return False, None if quiet else self.text("download_failed", chat.lang)
        if submission.verdict is not None:
            await self.send({"request_id": submission.request_id, "reply_to": reply_to}, submission.verdict)
        elif show_working and not quiet:  # a `fake`-mode group's answer may be silence: promise nothing
            await self._working(chat)
        return True, None

    async def check_album(self, chat: Chat, pictures: list[Picture], only_suspicious: bool) -> str | None:
        """Check an album's pictures (counted once against the limits, clips dearer); one combined answer."""
        ok, say = await self.allowed(chat, max(CLIP_COST if p.clip else 1 for p in pictures))
        if not ok:
            return say
        for picture in pictures:
            go_on, say = await self.check(chat, picture, only_suspicious, album=True, rate_limited=False,
                                          show_working=False)
            if not go_on:
                return say
        if not only_suspicious:
            await self._working(chat)
        return None

    async def _working(self, chat: Chat) -> None:
        try:
            await self.platform.working(chat)
        except Exception as exc:  # only a courtesy: the check goes on
            log.info("working_sign_failed platform=%s error=%s", self.platform.name, type(exc).__name__)

    # --- delivery ----------------------------------------------------------------------
    async def first_time(self, event_id: str | int | None) -> bool:
        """False for an inbound event already handled (a platform's redelivery or retry): do nothing again.

        The marker is set before any work; when Redis cannot say, the event is handled (fail open).
        """
        if event_id is None:
            return True
        try:
            first = bool(await self.checker.redis.set(event_key(self.platform.name, event_id), 1, nx=True,
                                                      ex=EVENT_MEMORY_S))
        except REDIS_ERRORS:
            return True
        if not first:
            log.info("duplicate_skipped platform=%s", self.platform.name)
        return first

    async def send(self, payload: dict[str, Any], verdict: Verdict) -> None:
        """Deliver one verdict: alone as a reply to its picture, or (album) once all its pictures are in."""
        reply_to = payload["reply_to"]
        lang = reply_to.get("lang", DEFAULT_LANG)
        rid = payload.get("request_id")
        if rid:  # it came: the in-flight watcher stops waiting for it
            await self.checker.state_op(self.checker.inflight.forget, self.platform.name, rid)
            if await self.checker.state_op(self.checker.inflight.was_told, self.platform.name, rid, want=True):
                log.info("late_verdict_dropped request=%s", rid)  # the user was asked to send it again
                return
        if reply_to.get("album") is None:
            if reply_to.get("only_suspicious") and not is_suspicious(verdict):
                log.info("silent request=%s label=%s", payload.get("request_id"), verdict.label)
                return
            text = format_verdict(verdict, lang, sent_as_photo=bool(reply_to.get("photo")),
                                  clip=bool(reply_to.get("clip")))
            await self.platform.deliver(reply_to, text, payload.get("request_id", verdict.request_id), verdict)
            return

        async def send_album(done: list[tuple[dict[str, Any], Verdict]]) -> None:
            target = album_target([r for r, _ in done])
            await self.platform.deliver(target, format_album([v for _, v in done], lang), f"album-{reply_to['album']}")

        await self.state.answer_album(reply_to, verdict, send_album)

    async def marked(self, verdict: Verdict | None) -> bytes | None:
        """The marked copy of the picture (faces boxed) while Redis keeps it, for platforms that upload it."""
        key = verdict.marked_image_key if verdict is not None else None
        return await self.checker.redis.get(key) if key else None

    def marked_url(self, verdict: Verdict | None) -> str | None:
        """Where platforms that take pictures by URL fetch the marked copy (bot/web.py serves it while it is
        kept); None without one or without PUBLIC_BASE_URL."""
        if verdict is None or not verdict.marked_image_key or not self.settings.public_base_url:
            return None
        return f"{self.settings.public_base_url}/api/marked/{verdict.request_id}"

    async def send_again(self, request_id: str, reply_to: dict[str, Any]) -> None:
        """A check vanished with Redis (bot/inflight.py): ask for the picture again, once per picture or album."""
        lang = reply_to.get("lang", DEFAULT_LANG)
        album = reply_to.get("album")
        if album is not None:
            told = await self.checker.state.set(f"{album_key(self.platform.name, album)}:lost", 1, nx=True,
                                                ex=EVENT_MEMORY_S)
            if not told:
                return
        await self.platform.deliver(reply_to, self.text("send_again_album" if album else "send_again", lang),
                                    f"lost-{request_id}")


def album_target(reply_tos: list[dict[str, Any]]) -> dict[str, Any]:
    """Where an album's combined answer goes: quoting its first picture, with the freshest reply token.

    (LINE: any unused, still fresh reply token of the set will do; platforms without tokens ignore it.)
    """
    freshest = max(reply_tos, key=lambda r: r.get("event_ts", 0))
    target = dict(reply_tos[0])
    if "reply_token" in freshest:
        target.update(reply_token=freshest["reply_token"], event_ts=freshest.get("event_ts", 0))
    return target
