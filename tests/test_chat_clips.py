"""Clips end to end: the real `python -m bot` (PTB, line-bot-sdk, web) against the stand-ins, real Redis and a real
worker (tiny `always_fake` model), with clips encoded by the tests themselves (tests/clipmaker.py)."""

from __future__ import annotations

import pytest

from tests.clipmaker import make_clip, truncated
from tests.fixtures_chat import face_bytes
from tests.fixtures_web import http, post_image
from tests.test_line import USER, deliver
from tests.test_telegram import replies, text_of

pytestmark = pytest.mark.timeout(180)
FAKE = "很可能是 AI 生成的假臉"


@pytest.fixture
def stack(chat, chat_bot, chat_worker):
    return chat


@pytest.fixture(scope="module")
def clips(data_dir) -> dict[str, bytes]:
    faces = face_bytes(data_dir, n=3, skip=8)
    # Faces pasted at 200 px: large enough that the detector's box clears the "too small to judge" size.
    return {"mp4": make_clip([faces[0]], seconds=2, fps=8, size=(400, 300), face_px=200, fmt="mp4"),
            "gif": make_clip([faces[1]], seconds=2, fps=6, size=(400, 300), face_px=200, fmt="gif"),
            "note": make_clip([faces[2]], seconds=2, fps=8, size=(320, 320), face_px=200, fmt="mp4")}


@pytest.mark.parametrize("kind", ["video", "animation", "video_note", "document"])
def test_every_telegram_clip_kind_gets_a_verdict_with_its_frames_and_a_contact_sheet(stack, clips, kind):
    tg = stack["tg"]
    data = clips["note" if kind == "video_note" else "mp4"]
    fields = tg.document_fields(data, mime="video/mp4", name="clip.mp4") if kind == "document" else \
        tg.clip_fields(data, kind=kind)
    msg = tg.add_message(tg.message(61, **fields))
    reply = replies(tg, msg["message_id"], timeout=60)[0]
    text = text_of(reply)
    assert FAKE in text and "（檢查了 " in text and " 個畫面）" in text
    assert reply.method == "sendPhoto"  # the contact sheet of the most telling frames, boxed and labelled


def test_a_broken_telegram_video_is_called_a_clip_that_could_not_be_read(stack, clips):
    tg = stack["tg"]
    msg = tg.add_message(tg.message(63, lang="en", **tg.clip_fields(truncated(clips["mp4"]), kind="video")))
    text = text_of(replies(tg, msg["message_id"], timeout=60)[0])
    assert text.startswith("❌ I could not read this clip.") and "incomplete" in text


def test_a_clip_over_the_telegram_download_limit_is_refused_without_download(stack, clips):
    tg = stack["tg"]
    fields = tg.clip_fields(clips["mp4"], kind="video")
    fields["video"]["file_size"] = 25 * 1024 * 1024  # what Telegram reports for a long 1080p clip
    msg = tg.add_message(tg.message(62, lang="en", **fields))
    assert text_of(replies(tg, msg["message_id"])[0]) == "This file is too large (limit 20 MB). Please send a " \
                                                         "smaller version."
    assert tg.calls_to("download") == []


def test_a_line_video_is_fetched_once_line_has_transcoded_it(stack, chat_bot, clips):
    line = stack["line"]
    event = line.video_event(clips["mp4"], USER, statuses=("processing", "processing", "succeeded"))
    deliver(chat_bot, event)
    call = line.wait_for(("reply", "push"), timeout=60)[0]
    text = call.params["messages"][0]["text"]
    assert FAKE in text and "個畫面）" in text
    polls = line.calls_to("transcoding")
    assert [c.params["status"] for c in polls] == ["processing", "processing", "succeeded"]
    assert len(line.calls_to("content")) == 1  # downloaded only after "succeeded"


def test_a_line_video_that_fails_transcoding_gets_a_polite_answer(stack, chat_bot, clips):
    line = stack["line"]
    deliver(chat_bot, line.video_event(clips["mp4"], USER, statuses=("processing", "failed")))
    call = line.wait_for(("reply", "push"), timeout=30)[0]
    assert call.params["messages"][0]["text"] == "抱歉，我沒辦法下載這張圖片，請再傳一次。"
    assert line.calls_to("content") == []


def test_the_web_api_checks_a_gif_and_shows_its_contact_sheet(stack, chat_bot, clips):
    res = post_image(chat_bot.web_url, clips["gif"], filename="clip.gif", ctype="image/gif")
    assert res.status == 200, res.body
    verdict = res.json()
    assert verdict["label"] == "fake" and verdict["frames"] >= 2 and verdict["faces"][0]["frames"] >= 2
    sheet = http("GET", f"{chat_bot.web_url}/api/marked/{verdict['request_id']}")
    assert sheet.status == 200 and sheet.body[:2] == b"\xff\xd8"
