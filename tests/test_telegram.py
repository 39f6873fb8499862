"""End-to-end: the real `python -m bot` (python-telegram-bot) against the stand-in Bot API server,
real Redis and a real inference worker with a tiny real model (`always_fake` unless a test promotes
`always_real`, so labels are deterministic)."""

from __future__ import annotations

import json
import time
from io import BytesIO

import pytest
import redis
from PIL import Image

from tests.fixtures_chat import face_bytes, promote
from tests.standins.telegram_api import TelegramStandin

GROUP = -1001234
ADMIN = 7
pytestmark = pytest.mark.timeout(120)


def command(tg: TelegramStandin, chat_id: int, text: str, **fields) -> dict:
    word = text.split()[0]
    msg = tg.message(chat_id, text=text, entities=[{"type": "bot_command", "offset": 0, "length": len(word)}],
                     **fields)
    return tg.add_message(msg)


def replies(tg: TelegramStandin, message_id: int, timeout: float = 30, count: int = 1) -> list:
    return tg.wait_for(("sendMessage", "sendPhoto"), lambda c: _reply_id(c) == message_id, timeout, count)


def _reply_id(call) -> int | None:
    raw = call.params.get("reply_parameters")
    return json.loads(raw).get("message_id") if raw else None


def text_of(call) -> str:
    return call.params.get("text") or call.params.get("caption") or ""


def outbox_len(r: redis.Redis, platform: str = "telegram") -> int:
    stream = f"zhenjia:outbox:{platform}"
    return r.xlen(stream) if r.exists(stream) else 0


def wait_outbox_drained(r: redis.Redis, entries: int, platform: str = "telegram", timeout: float = 30) -> None:
    """Until the outbox holds `entries` verdicts and every one was handled (acked) by the bot."""
    stream = f"zhenjia:outbox:{platform}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if r.exists(stream) and r.xlen(stream) >= entries:
            groups = r.xinfo_groups(stream)
            last = r.xrevrange(stream, count=1)[0][0]
            if groups and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last:
                return
        time.sleep(0.1)
    raise AssertionError(f"outbox not drained: {r.xlen(stream) if r.exists(stream) else 0} entries")


@pytest.fixture
def tg(chat, chat_bot, chat_worker) -> TelegramStandin:
    return chat["tg"]


def test_photo_in_private_chat_gets_marked_photo_reply_in_chinese(tg, chat, data_dir):
    msg = tg.add_message(tg.message(42, lang="zh-hant", **tg.photo_fields(face_bytes(data_dir)[0])))
    reply = replies(tg, msg["message_id"])[0]
    assert reply.method == "sendPhoto"  # faces were found: the marked copy comes back
    assert reply.params["photo"][:2] == b"\xff\xd8"
    assert int(reply.params["chat_id"]) == 42
    assert text_of(reply).startswith("⚠️ 很可能是 AI 生成的假臉（AI 生成機率 ")
    assert "結果僅供參考" in text_of(reply)
    # work was shown while the worker ran, and the largest photo size was the one downloaded
    assert tg.calls_to("sendChatAction")
    downloads = [c.params["file_id"] for c in tg.calls_to("download")]
    assert downloads == [msg["photo"][-1]["file_id"]]


def test_image_file_is_checked_and_answered_in_english(tg, data_dir):
    data = face_bytes(data_dir, skip=1)[0]
    msg = tg.add_message(tg.message(43, lang="en-US", **tg.document_fields(data)))
    reply = replies(tg, msg["message_id"])[0]
    assert text_of(reply).startswith("⚠️ Likely an AI-generated (fake) face (probability of AI: ")
    assert "A first opinion, not proof" in text_of(reply)


def test_forwarded_photo_in_group_is_answered_in_default_fake_mode(tg, data_dir):
    origin = {"type": "hidden_user", "date": int(time.time()) - 3600, "sender_user_name": "Someone"}
    msg = tg.add_message(tg.message(GROUP, forward_origin=origin, **tg.photo_fields(face_bytes(data_dir, skip=2)[0])))
    reply = replies(tg, msg["message_id"])[0]
    assert int(reply.params["chat_id"]) == GROUP
    assert "很可能是 AI 生成的假臉" in text_of(reply)


def test_album_gets_one_combined_reply(tg, data_dir):
    images = face_bytes(data_dir, n=3, skip=3)
    sent = [tg.add_message(tg.message(44, lang="en", media_group_id="album-1", **tg.photo_fields(d)))
            for d in images]
    reply = replies(tg, sent[0]["message_id"])[0]
    text = text_of(reply)
    assert text.startswith("Results for these 3 pictures:")
    for i in (1, 2, 3):
        assert f"Picture {i}: ⚠️ Likely an AI-generated (fake) face" in text
    time.sleep(1.5)  # nothing else may arrive: one reply for the album, not three
    answers = tg.calls_to("sendMessage", "sendPhoto")
    assert len(answers) == 1, [text_of(c) for c in answers]


def test_check_reply_in_group_works_when_mode_is_off(tg, chat, data_dir):
    tg.admins.add((GROUP, ADMIN))
    done = command(tg, GROUP, "/mode@zhenjia_test_bot off", user_id=ADMIN)
    assert "已設定群組模式：off" in text_of(replies(tg, done["message_id"])[0])
    photo = tg.add_message(tg.message(GROUP, **tg.photo_fields(face_bytes(data_dir, skip=6)[0])))
    check = command(tg, GROUP, "/check", reply_to_message=photo)
    reply = replies(tg, photo["message_id"])[0]  # the verdict answers the picture, not the command
    assert "很可能是 AI 生成的假臉" in text_of(reply)
    assert check["message_id"] != photo["message_id"]
    assert len(tg.calls_to("download")) == 1  # the photo alone (mode off) was never downloaded


def test_check_without_a_replied_image_explains_how(tg):
    msg = command(tg, GROUP, "/check", lang="en")
    assert text_of(replies(tg, msg["message_id"])[0]) == "Reply to a picture with /check and I will check that picture."


def test_only_admins_change_the_group_mode(tg, chat):
    msg = command(tg, GROUP, "/mode all", user_id=99)
    assert text_of(replies(tg, msg["message_id"])[0]) == "只有群組管理員可以更改模式。"
    assert chat["redis"].get(f"zhenjia:mode:telegram:{GROUP}") is None
    asked = command(tg, GROUP, "/mode", user_id=99, lang="en")
    assert text_of(replies(tg, asked["message_id"])[0]).startswith("Current group mode: fake")


def test_group_mode_fake_stays_silent_on_a_real_face_and_all_answers(tg, chat, data_dir):
    promote(chat["models"], "always_real")
    real = face_bytes(data_dir, label="real", n=2)
    base = outbox_len(chat["redis"])
    tg.add_message(tg.message(GROUP, **tg.photo_fields(real[0])))
    wait_outbox_drained(chat["redis"], base + 1)  # the verdict came and was handled...
    time.sleep(0.5)
    assert tg.calls_to("sendMessage", "sendPhoto") == []  # ...without a word in the group
    tg.admins.add((GROUP, ADMIN))
    mode = command(tg, GROUP, "/mode all", user_id=ADMIN)
    replies(tg, mode["message_id"])  # set before the next picture comes (updates run concurrently)
    msg = tg.add_message(tg.message(GROUP, **tg.photo_fields(real[1])))
    reply = replies(tg, msg["message_id"])[0]
    assert text_of(reply).startswith("✅ 看起來是真實的照片（AI 生成機率 ")


def test_cache_hit_answers_without_a_job(tg, chat, data_dir):
    data = face_bytes(data_dir, skip=7)[0]
    first = tg.add_message(tg.message(45, **tg.photo_fields(data)))
    replies(tg, first["message_id"])
    jobs_before = len(chat["redis"].keys("rq:job:*"))
    second = tg.add_message(tg.message(46, lang="en", **tg.photo_fields(data)))  # the viral forward
    reply = replies(tg, second["message_id"], timeout=10)[0]
    assert "(this picture was checked before)" in text_of(reply)
    assert reply.method == "sendMessage"  # marked copies are not kept beyond the check
    assert len(chat["redis"].keys("rq:job:*")) == jobs_before


def test_picture_without_a_face_says_so(tg, data_dir):
    buf = BytesIO()
    Image.new("RGB", (256, 256), (30, 120, 200)).save(buf, "JPEG")
    msg = tg.add_message(tg.message(47, **tg.document_fields(buf.getvalue(), name="sky.jpg")))
    reply = replies(tg, msg["message_id"])[0]
    assert reply.method == "sendMessage"
    assert text_of(reply).startswith("🙈 找不到人臉")


def test_bot_blocked_by_user_drops_the_verdict_instead_of_retrying(tg, chat, data_dir):
    tg.blocked.add(48)
    base = outbox_len(chat["redis"])
    tg.add_message(tg.message(48, **tg.photo_fields(face_bytes(data_dir, skip=8)[0])))
    wait_outbox_drained(chat["redis"], base + 1)  # acknowledged although the send was refused (403)
    assert len([c for c in tg.calls_to("sendPhoto", "sendMessage") if int(c.params["chat_id"]) == 48]) == 1
