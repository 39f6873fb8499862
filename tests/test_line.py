"""End-to-end: the real `python -m bot` (line-bot-sdk async clients, signed webhook on the shared web
server) against the stand-in LINE API, real Redis and a real worker with a tiny real model."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.fixtures_chat import LINE_SECRET, face_bytes, promote
from tests.standins.line_api import LineStandin, sign

GROUP = {"type": "group", "groupId": "Cgroup1", "userId": "Uada"}
ROOM = {"type": "room", "roomId": "Rroom1", "userId": "Uada"}
USER = {"type": "user", "userId": "Ubob"}
pytestmark = pytest.mark.timeout(120)


def post(bot, body: str, signature: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Line-Signature"] = signature
    req = urllib.request.Request(bot.web_url + "/line/webhook", body.encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def deliver(bot, *events: dict) -> None:
    body = LineStandin.webhook_body(*events)
    assert post(bot, body, sign(LINE_SECRET, body)) == 200


@pytest.fixture
def line(chat, chat_bot, chat_worker) -> LineStandin:
    return chat["line"]


def test_image_in_group_is_answered_with_the_reply_token_quoting_it(line, chat_bot, data_dir):
    event = line.image_event(face_bytes(data_dir)[0], GROUP)
    deliver(chat_bot, event)
    call = line.wait_for("reply")[0]
    assert call.params["replyToken"] == event["replyToken"]
    message = call.params["messages"][0]
    assert message["quoteToken"] == event["message"]["quoteToken"]  # shown as a reply to the image
    assert message["text"].startswith("⚠️ 很可能是 AI 生成的假臉（AI 生成機率 ")
    image = call.params["messages"][1]  # the marked copy, fetched by LINE from PUBLIC_BASE_URL
    assert image["type"] == "image" and image["originalContentUrl"].startswith(chat_bot.web_url + "/api/marked/")
    with urllib.request.urlopen(image["originalContentUrl"], timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg" and resp.read(2) == b"\xff\xd8"
    assert line.calls_to("push") == []
    assert line.calls_to("loading") == []  # the loading animation exists in 1:1 chats only


def test_expired_reply_token_falls_back_to_push(line, chat_bot, data_dir):
    event = line.image_event(face_bytes(data_dir, skip=1)[0], GROUP, token_ttl_s=0.01)
    deliver(chat_bot, event)
    push = line.wait_for("push")[0]
    assert line.calls_to("reply_refused")  # the bot tried the token first, LINE refused it
    assert push.params["to"] == GROUP["groupId"]
    assert push.params["messages"][0]["quoteToken"] == event["message"]["quoteToken"]
    assert push.params["retry_key"]  # idempotent if the push itself is retried


def test_stale_token_in_one_to_one_is_not_even_tried(line, chat_bot, data_dir):
    line.profiles["Ubob"] = {"language": "en"}
    event = line.image_event(face_bytes(data_dir, skip=2)[0], USER, age_s=40)
    deliver(chat_bot, event)
    push = line.wait_for("push")[0]
    assert push.params["to"] == "Ubob"
    assert push.params["messages"][0]["text"].startswith("⚠️ Likely an AI-generated (fake) face")
    assert line.calls_to("reply", "reply_refused") == []
    loading = line.calls_to("loading")
    assert loading and loading[0].params["chatId"] == "Ubob"


def test_image_set_gets_one_combined_reply(line, chat_bot, data_dir):
    images = face_bytes(data_dir, n=3, skip=3)
    events = [line.image_event(d, ROOM, image_set={"id": "set1", "index": i, "total": 3})
              for i, d in enumerate(images, 1)]
    for event in events:  # LINE sends one webhook per image
        deliver(chat_bot, event)
    call = line.wait_for(("reply", "push"))[0]
    text = call.params["messages"][0]["text"]
    assert text.startswith("這組 3 張圖片的結果：")
    for i in (1, 2, 3):
        assert f"第 {i} 張：⚠️ 很可能是 AI 生成的假臉" in text
    time.sleep(1.5)
    assert len(line.calls_to("reply", "push")) == 1


def test_forged_or_missing_signature_is_rejected_and_nothing_is_enqueued(line, chat, chat_bot, data_dir):
    body = LineStandin.webhook_body(line.image_event(face_bytes(data_dir, skip=6)[0], GROUP))
    assert post(chat_bot, body, sign("not-the-secret", body)) == 400
    assert post(chat_bot, body, None) == 400
    assert post(chat_bot, body + " ", sign(LINE_SECRET, body)) == 400  # body changed after signing
    time.sleep(0.5)
    assert line.calls_to("content", "reply", "push") == []
    assert chat["redis"].llen("rq:queue:checks") == 0 and not chat["redis"].keys("zhenjia:image:*")


def test_join_message_mode_command_and_leave(line, chat, chat_bot, data_dir):
    deliver(chat_bot, line.join_event(GROUP))
    joined = line.wait_for("reply")[0].params["messages"][0]["text"]
    assert "真的假不了" in joined and "/leave" in joined and "Zhenjia" in joined
    deliver(chat_bot, line.text_event("模式 關閉", GROUP))
    assert line.wait_for("reply", count=2)[1].params["messages"][0]["text"].startswith("已設定群組模式：off")
    base = len(line.calls_to("content"))
    deliver(chat_bot, line.image_event(face_bytes(data_dir, skip=7)[0], GROUP))
    time.sleep(1.0)
    assert len(line.calls_to("content")) == base  # mode off: not even downloaded
    deliver(chat_bot, line.text_event("/leave", GROUP))
    left = line.wait_for("leave")[0]
    assert left.params["id"] == GROUP["groupId"]
    assert line.calls_to("reply")[-1].params["messages"][0]["text"].startswith("好的，我離開了")


def test_group_mode_fake_stays_silent_on_a_real_face(line, chat, chat_bot, data_dir):
    promote(chat["models"], "always_real")
    r = chat["redis"]
    before = r.xlen("zhenjia:outbox:line") if r.exists("zhenjia:outbox:line") else 0
    deliver(chat_bot, line.image_event(face_bytes(data_dir, label="real", skip=3)[0], GROUP))
    deadline = time.time() + 30
    while time.time() < deadline:
        if r.exists("zhenjia:outbox:line") and r.xlen("zhenjia:outbox:line") > before:
            groups = r.xinfo_groups("zhenjia:outbox:line")
            if groups and groups[0]["pending"] == 0:
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the verdict never reached the outbox")
    time.sleep(0.5)
    assert line.calls_to("reply", "push") == []


def test_other_messages_get_help_in_one_to_one_and_silence_in_groups(line, chat_bot):
    deliver(chat_bot, line.text_event("hello", GROUP))
    deliver(chat_bot, line.text_event("說明", USER))
    call = line.wait_for("reply")[0]
    assert call.params["messages"][0]["text"].startswith("真的假不了 🔍")
    time.sleep(0.5)
    assert len(line.calls_to("reply", "push")) == 1


def test_a_redelivered_event_is_acknowledged_and_answered_once(line, chat, chat_bot, data_dir):
    """LINE redelivers an event (same webhookEventId, isRedelivery) when our answer to its webhook call failed."""
    event = line.image_event(face_bytes(data_dir, skip=12)[0], USER, token_ttl_s=0.01)  # answers will be pushes
    deliver(chat_bot, event)
    line.wait_for("push")
    again = {**event, "deliveryContext": {"isRedelivery": True}}
    deliver(chat_bot, again)  # each still gets its 200...
    deliver(chat_bot, again)
    time.sleep(1.5)
    assert len(line.calls_to("push")) == 1  # ...but one answer, not three paid push messages
    assert len(line.calls_to("content")) == 1  # and the picture was fetched and checked once


def test_mode_texts_never_mention_check_or_admins(line, chat, chat_bot):
    """LINE has no /check and no admins the bot can see: its mode texts must not promise them."""
    for n, text in enumerate(("/mode", "模式 關閉", "/mode loud"), start=1):
        deliver(chat_bot, line.text_event(text, GROUP))
        line.wait_for("reply", count=n)  # one at a time: events are handled concurrently
    said = [m["text"] for c in line.calls_to("reply") for m in c.params["messages"]]
    assert said[0].startswith("目前的群組模式：fake") and said[1].startswith("已設定群組模式：off")
    for text in said:
        assert "/check" not in text and "管理員" not in text and "admin" not in text.lower()
