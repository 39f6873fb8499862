"""Errors a user can cause, through the real bot process and the stand-in Bot API (no worker needed:
every case here is answered before or instead of a check)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.fixtures_chat import BotProcess, bot_env, face_bytes
from tests.standins.telegram_api import TelegramStandin
from tests.test_telegram import command, replies, text_of

GROUP = -1005555
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def limits_bot(chat_redis_url, telegram_api, tmp_path_factory):
    env = bot_env(chat_redis_url, telegram_api, None, USER_RATE_PER_MIN="2", CHAT_RATE_PER_MIN="100",
                  MAX_QUEUE_LENGTH="3")
    bot = BotProcess(env, tmp_path_factory.mktemp("limits-bot") / "bot.log", telegram_api).start()
    yield bot
    bot.stop()


@pytest.fixture
def tg(chat, limits_bot) -> TelegramStandin:
    chat["redis"].delete("rq:queue:checks")  # no worker here: jobs pile up, each test starts empty
    return chat["tg"]


def test_per_user_rate_limit_answers_politely_once(tg, data_dir):
    if time.time() % 60 > 45:  # the limit counts per clock minute: do not straddle two
        time.sleep(61 - time.time() % 60)
    images = face_bytes(data_dir, n=4)
    sent = [tg.add_message(tg.message(50, **tg.photo_fields(d))) for d in images[:3]]
    # The three arrive in one batch and are handled concurrently: whichever comes third is the refused one.
    note = tg.wait_for("sendMessage")[0]
    assert text_of(note) == "傳得有點快喔，這張和接下來一分鐘內的圖片不會檢查，請稍等一分鐘再傳 🙏"
    assert json.loads(note.params["reply_parameters"])["message_id"] in {m["message_id"] for m in sent}
    tg.add_message(tg.message(50, **tg.photo_fields(images[3])))
    time.sleep(1.0)
    assert len(tg.calls_to("sendMessage")) == 1  # not one apology per picture
    assert len(tg.calls_to("download")) == 2  # refused pictures are not even downloaded


def test_long_queue_answers_busy(tg, chat, data_dir):
    images = face_bytes(data_dir, n=4, skip=4)
    for user, data in zip((60, 61, 62), images):
        tg.add_message(tg.message(user, user_id=user, **tg.photo_fields(data)))
    tg.wait_for("sendChatAction", count=3)
    msg = tg.add_message(tg.message(63, user_id=63, lang="en", **tg.photo_fields(images[3])))
    assert text_of(replies(tg, msg["message_id"])[0]) == (
        "Too many pictures are waiting to be checked right now. Please try again in a minute or two 🙏")
    assert chat["redis"].llen("rq:queue:checks") == 3


def test_file_over_20_mb_gets_a_polite_answer_without_download(tg, chat):
    fields = tg.document_fields(b"\xff\xd8" + b"0" * 100)
    fields["document"]["file_size"] = 25 * 1024 * 1024
    msg = tg.add_message(tg.message(51, **fields))
    assert text_of(replies(tg, msg["message_id"])[0]) == "這個檔案太大了（上限 20 MB），請傳較小的版本。"
    assert tg.calls_to("getFile", "download") == []
    # a size the message did not tell: the Bot API itself refuses the download
    fields = tg.document_fields(b"\xff\xd8" + b"1" * 100)
    tg.file_sizes[fields["document"]["file_id"]] = 30 * 1024 * 1024
    del fields["document"]["file_size"]
    msg = tg.add_message(tg.message(51, lang="en", **fields))
    assert text_of(replies(tg, msg["message_id"])[0]) == "This file is too large (limit 20 MB). Please send a smaller version."
    assert chat["redis"].llen("rq:queue:checks") == 0


def test_old_group_messages_are_not_answered_but_old_private_ones_are(tg, data_dir):
    data = face_bytes(data_dir, skip=9)[0]
    tg.add_message(tg.message(GROUP, age_s=600, **tg.photo_fields(data)))
    tg.add_message(tg.message(52, age_s=600, **tg.photo_fields(data)))
    tg.wait_for("sendChatAction")
    time.sleep(0.5)
    assert [int(c.params["chat_id"]) for c in tg.calls_to("sendChatAction")] == [52]
    assert len(tg.calls_to("download")) == 1


def test_stickers_text_and_other_files_get_help_in_private_and_silence_in_groups(tg):
    sticker = {"file_id": "stk", "file_unique_id": "ustk", "type": "regular", "width": 512, "height": 512,
               "is_animated": False, "is_video": False}
    tg.add_message(tg.message(GROUP, sticker=sticker))
    tg.add_message(tg.message(GROUP, **tg.document_fields(b"%PDF-1.4", mime="application/pdf", name="a.pdf")))
    a = tg.add_message(tg.message(53, sticker=sticker))
    b = tg.add_message(tg.message(53, lang="en", **tg.document_fields(b"%PDF", mime="application/pdf", name="a.pdf")))
    c = tg.add_message(tg.message(53, text="is this real?"))
    assert text_of(replies(tg, a["message_id"])[0]) == "我只能檢查圖片和短片（照片、圖片檔、影片或 GIF）。請傳一張有人臉的照片或短片給我。"
    assert text_of(replies(tg, b["message_id"])[0]).startswith("I can only check pictures")
    replies(tg, c["message_id"])
    time.sleep(0.5)
    assert all(int(call.params["chat_id"]) == 53 for call in tg.calls_to("sendMessage"))
    assert tg.calls_to("download") == []


def test_start_and_help_are_bilingual(tg):
    zh = command(tg, 54, "/start", lang=None)  # no language code: zh-TW
    en = command(tg, 54, "/help", lang="en-GB")
    assert text_of(replies(tg, zh["message_id"])[0]).startswith("真的假不了 🔍\n把可疑的照片傳給我")
    help_en = text_of(replies(tg, en["message_id"])[0])
    assert help_en.startswith("Zhenjia (真的假不了) 🔍")
    assert "as a file keeps more detail" in help_en and "/check" in help_en


def test_logs_carry_neither_the_token_nor_message_text(tg, limits_bot):
    msg = command(tg, 55, "/help")
    tg.add_message(tg.message(55, text="my secret words"))
    replies(tg, msg["message_id"])
    tg.wait_for("sendMessage", count=2)
    log = limits_bot.log()
    assert "telegram_started" in log  # the log is there and has our lines...
    assert tg.token not in log and tg.token.split(":")[1] not in log  # ...but no token (it sits in URLs)
    assert "my secret words" not in log


def test_webhook_mode_with_secret_token_answers_each_update_once(chat, chat_redis_url, telegram_api, tmp_path):
    """TELEGRAM_WEBHOOK_URL set: PTB's webhook server takes updates, checking the secret token."""
    tg = telegram_api
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/telegram/hook"
    env = bot_env(chat_redis_url, tg, None, TELEGRAM_WEBHOOK_URL=url, TELEGRAM_WEBHOOK_SECRET="s3cret-Token",
                  TELEGRAM_WEBHOOK_LISTEN="127.0.0.1", TELEGRAM_WEBHOOK_PORT=str(port))
    bot = BotProcess(env, tmp_path / "bot.log", None).start()
    try:
        hook = tg.wait_for("setWebhook")[0]
        assert hook.params["url"] == url and hook.params["secret_token"] == "s3cret-Token"
        msg = tg.message(56, lang="en", text="/help", entities=[{"type": "bot_command", "offset": 0, "length": 5}])

        def post(secret: str | None) -> int:
            headers = {"Content-Type": "application/json"}
            if secret:
                headers["X-Telegram-Bot-Api-Secret-Token"] = secret
            body = json.dumps({"update_id": 1, "message": msg}).encode()
            try:
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        deadline = time.time() + 20
        while True:  # the webhook server starts right after setWebhook
            try:
                status = post("wrong")
                break
            except urllib.error.URLError:
                assert time.time() < deadline
                time.sleep(0.2)
        assert status == 403
        assert post(None) == 403
        time.sleep(0.3)
        assert tg.calls_to("sendMessage") == []
        assert post("s3cret-Token") == 200
        assert text_of(replies(tg, msg["message_id"])[0]).startswith("Zhenjia (真的假不了)")
        # Telegram retries a webhook call it thinks failed: the same update_id again is acknowledged, not answered.
        assert post("s3cret-Token") == 200 and post("s3cret-Token") == 200
        time.sleep(1.0)
        assert len(tg.replies_to(msg["message_id"])) == 1
    finally:
        bot.stop()
