"""The texts both chat bots send (bot/messages.py) and the per-chat state in real Redis (bot/chats.py)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from bot.chats import ChatState
from bot.messages import TEXTS, format_album, format_verdict, pick_lang, t
from core.contract import LANGS, REASONS, FaceVerdict, Verdict


def test_every_text_exists_in_both_languages_and_every_reason_has_a_sentence():
    for key, texts in TEXTS.items():
        assert set(texts) == set(LANGS), key
        assert all(v.strip() for v in texts.values()), key
    for reason in REASONS:
        assert f"r_{reason}" in TEXTS


def test_languages_from_platform_codes():
    assert pick_lang(None) == "zh-TW"
    assert pick_lang("zh-hant") == pick_lang("zh-TW") == pick_lang("zh") == "zh-TW"
    assert pick_lang("en-US") == pick_lang("ja") == "en"
    assert t("busy", "fr") == t("busy", "zh-TW")  # unknown: the default language


def test_confidence_is_never_printed_as_certainty():
    sure = format_verdict(Verdict("r", "fake", 0.99997), "en")
    assert "(probability of AI: 99%)" in sure
    assert "(AI 生成機率 1%)" in format_verdict(Verdict("r", "real", 0.00001), "zh-TW").replace("（", "(").replace("）", ")")


def test_several_faces_reasons_and_the_send_as_file_hint():
    faces = [FaceVerdict([0, 0, 50, 50], "fake", 0.91, 50), FaceVerdict([60, 0, 50, 50], "real", 0.08, 50)]
    v = Verdict("r", "fake", 0.91, faces=faces, reasons=["several_faces", "heavily_compressed"])
    text = format_verdict(v, "en", sent_as_photo=True)
    assert text.splitlines()[:3] == ["⚠️ Likely an AI-generated (fake) face (probability of AI: 91%)",
                                     "Face 1: likely fake (91%)", "Face 2: real (8%)"]
    assert "The picture is heavily compressed; details are lost." in text
    assert "💡 Sending the original as a file keeps more detail." in text
    assert "keeps more detail" not in format_verdict(v, "en", sent_as_photo=False)  # it was a file already
    unsure = format_verdict(Verdict("r", "unsure", 0.55), "zh-TW")
    assert unsure.startswith("🤔 無法確定是真是假（AI 生成機率 55%）") and "請勿單憑這個結果下定論。" in unsure


def test_errors_and_no_face_read_as_sentences_without_probabilities():
    assert format_verdict(Verdict.failed("r"), "en").startswith("😥 Sorry, the check failed this time.")
    bad = format_verdict(Verdict("r", "unreadable", None, reasons=["truncated"]), "zh-TW")
    assert bad == "❌ 無法讀取這張圖片。\n檔案不完整或已損毀。"
    album = format_album([Verdict("a", "fake", 0.9), Verdict("b", "no_face", None)], "en")
    assert album.splitlines()[:3] == ["Results for these 2 pictures:",
                                      "Picture 1: ⚠️ Likely an AI-generated (fake) face (probability of AI: 90%)",
                                      "Picture 2: 🙈 No face found. I only judge whether faces are AI generated."]


def test_rate_limit_refuses_after_the_limit_and_says_so_once(redis_url):
    async def run() -> list[tuple[bool, bool]]:
        r = aioredis.Redis.from_url(redis_url)
        state = ChatState(r, "telegram", user_rate_per_min=2, chat_rate_per_min=3)
        out = [await state.allow(1, 10) for _ in range(4)]
        out.append(await state.allow(2, 10))  # another user, same chat: the chat limit (3) is spent
        await r.aclose()
        return out

    results = asyncio.run(run())
    assert results == [(True, False), (True, False), (False, True), (False, False), (False, False)]


def test_album_completes_once_in_order_whatever_order_verdicts_arrive(redis_url):
    async def run():
        r = aioredis.Redis.from_url(redis_url)
        state = ChatState(r, "line", 6, 20)
        got = []
        for index in (2, 0, 1):
            got.append(await state.add_to_album("a1", 3, index, {"i": index}, Verdict(str(index), "real", 0.1)))
        again = await state.add_to_album("a1", 3, 1, {"i": 1}, Verdict("1", "real", 0.1))  # a redelivery
        await r.aclose()
        return got, again

    got, again = asyncio.run(run())
    assert got[0] is None and got[1] is None
    assert [rt["i"] for rt, _ in got[2]] == [0, 1, 2]
    assert [v.request_id for _, v in got[2]] == ["0", "1", "2"]
    assert again is None  # answered once


def test_modes_default_by_chat_kind_and_fail_open_without_redis():
    async def run():
        dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        state = ChatState(dead, "telegram", 6, 20)
        out = (await state.get_mode(-1, True), await state.get_mode(1, False), await state.allow(1, 1))
        await dead.aclose()
        return out

    assert asyncio.run(run()) == ("fake", "all", (True, False))


def test_a_clip_is_called_a_clip_not_a_photo():
    real = format_verdict(Verdict("r", "real", 0.03, frames=8), "en")
    assert real.startswith("✅ The faces in this clip look real (probability of AI: 3%) (checked in 8 frames)")
    assert format_verdict(Verdict("r", "real", 0.03), "en").startswith("✅ Looks like a real photo")
    assert format_verdict(Verdict("r", "real", 0.03, frames=8), "zh-TW").startswith("✅ 影片中的人臉看起來是真的")
    # An unreadable clip has no frames: the flow passes on that it was sent as a video.
    broken = Verdict("r", "unreadable", None, reasons=["truncated"])
    assert format_verdict(broken, "en", clip=True).startswith("❌ I could not read this clip.")
    assert format_verdict(broken, "en").startswith("❌ I could not read this picture.")
    assert format_verdict(Verdict("r", "no_face", None, frames=6), "zh-TW").startswith("🙈 影片中找不到人臉。")
    fake = format_verdict(Verdict("r", "fake", 0.97, frames=8), "en")  # fake reads the same for both
    assert fake.startswith("⚠️ Likely an AI-generated (fake) face (probability of AI: 97%)")
