"""The shared chat flow (bot/flow.py) driven by a third, made-up platform: what a new adapter gets for free.

`Demo` below is all a new platform writes besides its SDK calls: it subclasses ChatAdapter, records
what it is asked to say, and uses the real flow, the real Checker, a real Redis and the real outbox
reader fed by the worker's real `publish` — nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from bot.checks import Checker, TooLarge, deliver_forever
from bot.adapter import ChatAdapter
from bot.flow import Chat, ChatFlow, DownloadFailed, Picture
from bot.messages import format_verdict, t
from bot.settings import BotSettings
from core.contract import Verdict
from core.settings import Settings
from inference_worker.jobs import publish

FACE = b"\xff\xd8 a picture's bytes"


class Demo(ChatAdapter):
    """A whole chat platform for the flow: it only records what it would put into chats."""

    def __init__(self, checker: Checker, settings: BotSettings, name: str = "demo") -> None:
        self.name = name
        self.flow = ChatFlow(self, checker, settings, download_limit=2 * 1024 * 1024)
        self.said: list[tuple[dict[str, Any], str]] = []
        self.typing: list[Any] = []

    async def deliver(self, reply_to: dict[str, Any], text: str, request_id: str,
                      verdict: Verdict | None = None) -> None:
        self.said.append((reply_to, text))

    async def working(self, chat: Chat) -> None:
        self.typing.append(chat.chat_id)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def settings_for(redis_url: str, **service: Any) -> BotSettings:
    return BotSettings(service=replace(Settings(), redis_url=redis_url, **service), user_rate_per_min=3)


async def fetch_ok() -> bytes:
    return FACE


def picture(chat: Chat, fetch=fetch_ok, **reply_to: Any) -> Picture:
    return Picture(fetch, {"chat": chat.chat_id, "lang": chat.lang, **reply_to}, reply_to.get("rid", ""))


async def published(checker: Checker, demo: Demo, verdicts: dict[int, Verdict], want: int) -> None:
    """Answer each queued job as a worker would (jobs.publish), and run the outbox reader until `want` are said."""
    sync = redis.Redis.from_url(checker.settings.redis_url)
    for index, job in enumerate(checker.queue.get_jobs()):
        payload = job.args[0]
        verdict = replace(verdicts[index], request_id=payload["request_id"])
        publish(sync, payload, verdict, checker.settings)
    reader = asyncio.create_task(deliver_forever(checker, demo.name, demo.send, consumer="test"))
    try:
        for _ in range(100):
            if len(demo.said) >= want:
                break
            await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def run(redis_url: str, scenario, name: str = "demo", **service: Any):
    async def go():
        checker = Checker(settings_for(redis_url, **service).service)
        demo = Demo(checker, settings_for(redis_url, **service), name)
        try:
            return await scenario(checker, demo)
        finally:
            await checker.close()

    return asyncio.run(go())


def test_one_to_one_picture_is_checked_and_answered_through_the_outbox(redis_url):
    fake = Verdict("x", "fake", 0.97, model={"name": "m", "version": "1"})

    async def scenario(checker, demo):
        chat = Chat(7, is_group=False, user_id=1, lang="en")
        assert await demo.flow.answer_mode(chat) == "all"
        assert await demo.flow.check(chat, picture(chat), only_suspicious=False) == (True, None)
        assert demo.typing == [7]  # a "typing…" sign while the worker checks
        await published(checker, demo, {0: fake}, want=1)
        return demo.said

    ((reply_to, text),) = run(redis_url, scenario)
    assert reply_to["chat"] == 7 and text == format_verdict(fake, "en")


def test_a_group_in_the_default_mode_hears_only_suspicious_verdicts_and_sees_no_typing(redis_url):
    real = Verdict("x", "real", 0.03, model={"name": "m", "version": "1"})
    fake = Verdict("y", "fake", 0.98, model={"name": "m", "version": "1"})

    async def scenario(checker, demo):
        chat = Chat(-5, is_group=True, user_id=1)
        mode = await demo.flow.answer_mode(chat)
        for i in range(2):
            await demo.flow.check(chat, picture(chat, only_suspicious=mode == "fake", n=i), mode == "fake")
        assert demo.typing == []  # the answer may well be silence: promise nothing
        await published(checker, demo, {0: real, 1: fake}, want=1)
        await asyncio.sleep(0.3)  # time for a (wrong) second answer to show up
        return mode, demo.said

    mode, said = run(redis_url, scenario)
    assert mode == "fake"
    assert [r["n"] for r, _ in said] == [1] and said[0][1] == format_verdict(fake, "zh-TW")


def test_errors_a_user_causes_get_one_clear_sentence_or_silence_in_a_quiet_group(redis_url):
    async def too_big() -> bytes:
        raise TooLarge("the platform said so")

    async def gone() -> bytes:
        raise DownloadFailed("deleted")

    async def never() -> bytes:
        raise AssertionError("a picture known to be too large must not be downloaded")

    async def scenario(checker, demo):
        chat = Chat(9, is_group=False, user_id=2, lang="en")
        out = [(await demo.flow.check(chat, picture(chat, fetch=too_big), False))[1],
               (await demo.flow.check(chat, Picture(never, {}, size=3 * 1024 * 1024), False))[1],
               (await demo.flow.check(chat, picture(chat, fetch=gone), False))[1]]
        group = Chat(-9, is_group=True, user_id=3)
        out.append((await demo.flow.check(group, picture(group, fetch=gone), only_suspicious=True))[1])
        out.append(checker.queue.count)  # nothing was enqueued for any of them
        return out

    limit, big, failed, quiet, queued = run(redis_url, scenario)
    assert limit == big == t("too_large", "en", limit_mb=2)
    assert failed == t("download_failed", "en")
    assert quiet is None and queued == 0


def test_busy_and_rate_limits_are_said_once(redis_url):
    async def scenario(checker, demo):
        chat = Chat(11, is_group=False, user_id=4, lang="en")
        return [(await demo.flow.check(chat, picture(chat), False))[1] for _ in range(5)]

    def refused(reason: str) -> float:  # operators see refusals in the metrics (an unknown platform is "other")
        return REGISTRY.get_sample_value("zhenjia_submit_refused_total", {"platform": "other", "reason": reason}) or 0

    before = refused("busy"), refused("rate_limited")
    busy = run(redis_url, scenario, max_queue_length=0)  # the queue is "full" from the start
    assert busy[:3] == [t("busy", "en")] * 3  # within the user's limit of 3 a minute: busy each time
    assert busy[3] == t("rate_limited", "en") and busy[4] is None  # over it: said once, then silence
    assert (refused("busy") - before[0], refused("rate_limited") - before[1]) == (3, 2)


def test_an_album_gets_one_answer_even_when_some_pictures_cannot_be_fetched(redis_url):
    async def too_big() -> bytes:
        raise TooLarge("x")

    async def gone() -> bytes:
        raise DownloadFailed("x")

    fake = Verdict("x", "fake", 0.95, model={"name": "m", "version": "1"})

    async def scenario(checker, demo):
        chat = Chat(12, is_group=False, user_id=5, lang="en")
        parts = [Picture(f, {"chat": 12, "lang": "en", "album": "a", "album_size": 3, "album_index": i}, f"p{i}")
                 for i, f in enumerate((fetch_ok, too_big, gone))]
        assert await demo.flow.check_album(chat, parts, only_suspicious=False) is None
        assert demo.said == []  # nothing until every picture has its verdict
        await published(checker, demo, {0: fake}, want=1)
        return demo.said

    ((reply_to, text),) = run(redis_url, scenario)
    lines = text.splitlines()[1:]  # after the "Results for these 3 pictures:" head
    assert text.splitlines()[0] == t("album_head", "en", n=3)
    assert reply_to["album_index"] == 0  # quoting the album's first picture
    assert lines[0].startswith("Picture 1") and "AI" in lines[0]
    assert lines[1].startswith("Picture 2") and t("r_too_large_bytes", "en") in lines[1]
    assert lines[2].startswith("Picture 3") and t("v_error", "en") in lines[2]


@pytest.mark.parametrize("platform", ["demo", "line"])
def test_mode_commands_in_both_languages_and_the_platform_wording(redis_url, platform):
    async def no() -> bool:
        return False

    async def scenario(checker, demo):
        group = Chat(-20, is_group=True, user_id=6, lang="zh-TW")
        return (await demo.flow.mode_command(group, None), await demo.flow.mode_command(group, "loud"),
                await demo.flow.mode_command(group, "全部", may_change=no),
                await demo.flow.mode_command(group, "全部"), await demo.flow.answer_mode(group),
                await demo.flow.mode_command(group, "OFF"), await demo.flow.answer_mode(group))

    show, bad, refused, set_all, mode_all, set_off, mode_off = run(redis_url, scenario, name=platform)
    assert "fake" in show and bad == demo_text(platform, "mode_bad")
    assert refused == t("mode_admins_only", "zh-TW")
    assert "all" in set_all and mode_all == "all" and "off" in set_off and mode_off is None
    if platform == "line":  # LINE has neither /check nor admins the bot can see: its texts never say so
        for text in (show, set_off):
            assert "/check" not in text and "管理員" not in text


def demo_text(platform: str, key: str) -> str:
    from bot.messages import TEXTS

    return t(f"{platform}_{key}" if f"{platform}_{key}" in TEXTS else key, "zh-TW")


def test_a_clip_costs_two_checks_against_the_rate_limit(redis_url):
    async def scenario(checker, demo):
        chat = Chat(13, is_group=False, user_id=7, lang="en")
        clip = Picture(fetch_ok, {"chat": 13, "lang": "en"}, clip=True)
        first = await demo.flow.check(chat, clip, False)  # 2 of the user's 3 a minute
        second = await demo.flow.check(chat, clip, False)  # 4 > 3: refused
        photo = await demo.flow.check(chat, picture(chat), False)  # still refused in this window
        return first, second, photo

    first, second, photo = run(redis_url, scenario)
    assert first == (True, None)
    assert second == (False, t("rate_limited", "en")) and photo == (False, None)


def test_a_vanished_check_is_admitted_once_and_its_late_verdict_stays_unsaid(redis_url):
    from rq.job import Job

    from bot.inflight import watch_forever

    fake = Verdict("x", "fake", 0.97, model={"name": "m", "version": "1"})

    async def scenario(checker, demo):
        chat = Chat(14, is_group=False, user_id=8, lang="en")
        await demo.flow.check(chat, picture(chat), False)
        (job,) = checker.queue.get_jobs()
        payload = job.args[0]
        redis.Redis.from_url(redis_url).delete(Job.key_for(job.id))  # what a Redis restart does to it
        watcher = asyncio.create_task(watch_forever(checker.inflight, demo.name, demo.flow.send_again, 0.2))
        try:
            for _ in range(50):
                if demo.said:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # more rounds: still told once
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        told = list(demo.said)
        # The worker kept the job through the restart and publishes after all: the user was told already.
        publish(redis.Redis.from_url(redis_url), payload, replace(fake, request_id=payload["request_id"]),
                checker.settings)
        reader = asyncio.create_task(deliver_forever(checker, demo.name, demo.send, consumer="t"))
        await asyncio.sleep(1.0)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return told, demo.said

    told, said = run(redis_url, scenario)
    assert [text for _, text in told] == [t("send_again", "en")]
    assert said == told


def test_typed_commands_in_both_languages_greetings_and_other_text(redis_url):
    async def scenario(checker, demo):
        flow, one, group = demo.flow, Chat(21, is_group=False, user_id=9, lang="en"), Chat(-21, True, 9)
        said = {word: await flow.command(one, word, []) for word in ("/HELP", "說明", "/leave", "hello", "")}
        return (said, await flow.command(group, "離開", []), flow.leaves(group, "/Leave"),
                flow.leaves(one, "/leave"), await flow.command(group, "hello", []), flow.greeting(group),
                flow.greeting(one))

    said, leaving, leaves, stays, quiet, joined, followed = run(redis_url, scenario, name="line")
    assert said["/HELP"] == said["說明"] == followed == t("line_help", "en")  # a new friend gets the help too
    assert said["/leave"] == said["hello"] == t("not_image", "en") and said[""] is None  # 1:1: the hint
    assert leaving == t("leaving", "zh-TW") and leaves and not stays and quiet is None  # groups: only /leave
    assert joined == t("line_join", "zh-TW") + "\n\n" + t("line_join", "en")  # nobody's language is known yet


def test_an_album_without_a_count_is_gathered_and_answered_once_quoting_its_first_part(redis_url):
    fake = Verdict("x", "fake", 0.95, model={"name": "m", "version": "1"})

    async def scenario(checker, demo):
        chat = Chat(22, is_group=False, user_id=10, lang="en")
        for order in (7, 5, 6):  # the parts of one album, arriving out of order, as separate events
            await demo.message(chat, picture(chat, message=order), album="22:a", order=order)
        await asyncio.sleep(1.5)  # ALBUM_WAIT_S after the first: gathered and checked as one
        assert len(checker.queue.get_jobs()) == 3 and demo.typing == [22]
        await published(checker, demo, {0: fake, 1: fake, 2: fake}, want=1)
        await asyncio.sleep(0.3)  # time for a (wrong) second answer to show up
        return demo.said

    ((reply_to, text),) = run(redis_url, scenario)
    assert text.splitlines()[0] == t("album_head", "en", n=3) and reply_to["message"] == 5
