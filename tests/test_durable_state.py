"""Nothing forgotten, lost or doubled across Redis restarts: the real `python -m bot` with a memory-only queue
Redis and a persisted (AOF) state Redis, both really restarted, the Telegram stand-in, and a real worker."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import redis

from tests.fixtures_chat import BotProcess, bot_env, face_bytes, spawn_worker
from tests.processes import start_redis
from tests.test_telegram import command, replies, text_of

pytestmark = pytest.mark.timeout(240)

GROUP = -100777
ADMIN = 5
SEND_AGAIN = "抱歉，檢查服務剛剛重新啟動，這張圖片的檢查遺失了，請再傳一次 🙏"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


def healthz(bot: BotProcess) -> dict:
    try:
        with urllib.request.urlopen(bot.web_url + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_modes_survive_restarts_and_a_lost_check_is_admitted_exactly_once(chat, telegram_api, tmp_path, data_dir):
    tg = telegram_api
    qport, sport = _port(), _port()
    queue, state = start_redis(qport), start_redis(sport, tmp_path / "state")
    env = bot_env(f"redis://127.0.0.1:{qport}/0", tg, None, STATE_REDIS_URL=f"redis://127.0.0.1:{sport}/0",
                  INFLIGHT_CHECK_S="1")
    bot = BotProcess(env, tmp_path / "bot.log", tg).start()
    try:
        tg.admins.add((GROUP, ADMIN))
        chosen = command(tg, GROUP, "/mode all", user_id=ADMIN)
        assert text_of(replies(tg, chosen["message_id"])[0]).startswith("已設定群組模式：all")
        # No worker runs: this picture's check waits in the queue Redis when both Redis servers restart.
        photo = tg.add_message(tg.message(88, **tg.photo_fields(face_bytes(data_dir, skip=4)[0])))
        deadline = time.time() + 10
        while not redis.Redis(port=sport).hlen("zhenjia:inflight:telegram"):
            assert time.time() < deadline, "the check was never recorded as in flight"
            time.sleep(0.1)
        stop(queue)
        stop(state)
        queue, state = start_redis(qport), start_redis(sport, tmp_path / "state")

        told = replies(tg, photo["message_id"], timeout=30)
        assert [text_of(c) for c in told] == [SEND_AGAIN]
        time.sleep(3)  # several more watcher rounds: still told once
        assert len(tg.replies_to(photo["message_id"])) == 1
        asked = command(tg, GROUP, "/mode", user_id=42)
        assert text_of(replies(tg, asked["message_id"])[0]).startswith("目前的群組模式：all")  # the group's choice
        assert bot.alive and "Traceback" not in bot.log()
    finally:
        bot.stop()
        stop(queue)
        stop(state)


def test_a_check_that_survives_gets_one_verdict_and_the_served_model_is_back_after_a_restart(
        chat, chat_models_dir, telegram_api, tmp_path, data_dir):
    tg = telegram_api
    qport, sport = _port(), _port()
    queue, state = start_redis(qport), start_redis(sport, tmp_path / "state")
    url = f"redis://127.0.0.1:{qport}/0"
    bot = BotProcess(bot_env(url, tg, None, STATE_REDIS_URL=f"redis://127.0.0.1:{sport}/0", INFLIGHT_CHECK_S="1"),
                     tmp_path / "bot.log", tg).start()
    worker = spawn_worker(url, chat_models_dir, tmp_path / "worker.log")
    try:
        photo = tg.add_message(tg.message(89, **tg.photo_fields(face_bytes(data_dir, skip=5)[0])))
        assert "很可能是 AI 生成的假臉" in text_of(replies(tg, photo["message_id"], timeout=60)[0])
        time.sleep(3)  # watcher rounds after the verdict: no "send again" for a check that was answered
        assert len(tg.replies_to(photo["message_id"])) == 1
        assert redis.Redis(port=sport).hlen("zhenjia:inflight:telegram") == 0
        assert healthz(bot)["serving_model"] == "always_fake@1"

        stop(queue)
        queue = start_redis(qport)  # back and empty: nobody restarted the worker or promoted a model
        deadline = time.time() + 30
        while healthz(bot).get("serving_model") != "always_fake@1":
            assert time.time() < deadline, f"served model not announced again: {healthz(bot)}"
            time.sleep(0.5)
        assert worker.alive
    finally:
        bot.stop()
        worker.stop()
        stop(queue)
        stop(state)
