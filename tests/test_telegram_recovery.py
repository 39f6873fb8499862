"""Nothing is lost: a bot that crashes mid-job still delivers after its restart, and a bot whose Redis
goes away answers "restarting", stays up, and checks pictures again once Redis is back."""

from __future__ import annotations

import socket
import time

import pytest

from tests.fixtures_chat import BotProcess, bot_env, face_bytes, spawn_worker
from tests.processes import start_redis
from tests.test_telegram import replies, text_of

pytestmark = pytest.mark.timeout(240)


def test_bot_killed_mid_job_delivers_the_verdict_after_restart(chat, chat_redis_url, telegram_api, tmp_path,
                                                               data_dir):
    tg = telegram_api
    bot = BotProcess(bot_env(chat_redis_url, tg, None, BOT_INSTANCE="bot-restart"), tmp_path / "bot.log", tg).start()
    worker = None
    try:
        msg = tg.add_message(tg.message(70, **tg.photo_fields(face_bytes(data_dir)[0])))
        tg.wait_for("sendChatAction")  # submitted: the job waits in the queue (no worker yet)
        bot.kill()  # a crash: no clean shutdown
        worker = spawn_worker(chat_redis_url, chat["models"], tmp_path / "worker.log")
        deadline = time.time() + 60
        while not (chat["redis"].exists("zhenjia:outbox:telegram") and chat["redis"].xlen("zhenjia:outbox:telegram")):
            assert time.time() < deadline, worker.log()[-2000:]
            time.sleep(0.2)
        assert tg.calls_to("sendMessage", "sendPhoto") == []  # the verdict waits for a bot
        bot.start()  # same BOT_INSTANCE: the consumer name under which nothing was acknowledged
        reply = replies(tg, msg["message_id"])[0]
        assert "很可能是 AI 生成的假臉" in text_of(reply)
        time.sleep(1.0)
        assert len(tg.calls_to("sendMessage", "sendPhoto")) == 1  # delivered once, not twice
    finally:
        bot.stop()
        if worker is not None:
            worker.stop()


def test_redis_stopped_and_restarted_bot_answers_restarting_then_recovers(chat, chat_models_dir, telegram_api,
                                                                          tmp_path, data_dir):
    tg = telegram_api
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port)
    bot = BotProcess(bot_env(url, tg, None), tmp_path / "bot.log", tg).start()
    workers = [spawn_worker(url, chat_models_dir, tmp_path / "worker.log")]
    images = face_bytes(data_dir, n=3, skip=10)
    try:
        first = tg.add_message(tg.message(71, **tg.photo_fields(images[0])))
        assert "很可能是 AI 生成的假臉" in text_of(replies(tg, first["message_id"])[0])

        server.terminate()
        server.wait(10)
        down = tg.add_message(tg.message(71, **tg.photo_fields(images[1])))
        assert text_of(replies(tg, down["message_id"])[0]) == "檢查服務正在重新啟動，請過一分鐘再傳一次 🙏"
        assert bot.alive

        server = start_redis(port)  # back, and empty: no queue, no outbox group
        if not workers[-1].alive:  # the worker's own recovery is not under test here
            workers.append(spawn_worker(url, chat_models_dir, tmp_path / "worker2.log"))
        back = tg.add_message(tg.message(71, **tg.photo_fields(images[2])))
        reply = replies(tg, back["message_id"], timeout=60)[0]
        assert "很可能是 AI 生成的假臉" in text_of(reply)
        assert bot.alive
        assert "Traceback" not in bot.log()
    finally:
        bot.stop()
        for w in workers:
            w.stop()
        server.terminate()
        server.wait(10)
