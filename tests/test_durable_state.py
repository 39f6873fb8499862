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


class Stack:
    """A memory-only queue Redis, a persisted (AOF) state Redis, the real bot on them and, if asked, a real worker."""

    def __init__(self, tg, tmp_path, models_dir=None) -> None:
        self.qport, self.sport, self.aof = _port(), _port(), tmp_path / "state"
        self.queue, self.state = start_redis(self.qport), start_redis(self.sport, self.aof)
        url = f"redis://127.0.0.1:{self.qport}/0"
        self.bot = BotProcess(bot_env(url, tg, None, STATE_REDIS_URL=f"redis://127.0.0.1:{self.sport}/0",
                                      INFLIGHT_CHECK_S="1"), tmp_path / "bot.log", tg).start()
        self.worker = None if models_dir is None else spawn_worker(url, models_dir, tmp_path / "worker.log")

    def restart_queue(self) -> None:
        """Stopped, then started again empty on the same port (what a restart of a memory-only Redis leaves)."""
        self.stop_queue()
        self.start_queue()

    def stop_queue(self) -> None:
        stop(self.queue)

    def start_queue(self) -> None:
        self.queue = start_redis(self.qport)

    def restart_state(self) -> None:
        stop(self.state)
        self.state = start_redis(self.sport, self.aof)  # reads its append-only file back

    def close(self) -> None:
        self.bot.stop()
        if self.worker is not None:
            self.worker.stop()
        stop(self.queue)
        stop(self.state)


def healthz(bot: BotProcess) -> dict:
    try:
        with urllib.request.urlopen(bot.web_url + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_modes_survive_restarts_and_a_lost_check_is_admitted_exactly_once(chat, telegram_api, tmp_path, data_dir):
    tg = telegram_api
    stack = Stack(tg, tmp_path)  # no worker
    bot = stack.bot
    try:
        tg.admins.add((GROUP, ADMIN))
        chosen = command(tg, GROUP, "/mode all", user_id=ADMIN)
        assert text_of(replies(tg, chosen["message_id"])[0]).startswith("已設定群組模式：all")
        # No worker runs: this picture's check waits in the queue Redis when both Redis servers restart.
        photo = tg.add_message(tg.message(88, **tg.photo_fields(face_bytes(data_dir, skip=4)[0])))
        deadline = time.time() + 10
        while not redis.Redis(port=stack.sport).hlen("zhenjia:inflight:telegram"):
            assert time.time() < deadline, "the check was never recorded as in flight"
            time.sleep(0.1)
        stack.restart_queue()
        stack.restart_state()

        told = replies(tg, photo["message_id"], timeout=30)
        assert [text_of(c) for c in told] == [SEND_AGAIN]
        time.sleep(3)  # several more watcher rounds: still told once
        assert len(tg.replies_to(photo["message_id"])) == 1
        asked = command(tg, GROUP, "/mode", user_id=42)
        assert text_of(replies(tg, asked["message_id"])[0]).startswith("目前的群組模式：all")  # the group's choice
        assert bot.alive and "Traceback" not in bot.log()
    finally:
        stack.close()


def test_a_check_that_survives_gets_one_verdict_and_the_served_model_is_back_after_a_restart(
        chat, chat_models_dir, telegram_api, tmp_path, data_dir):
    tg = telegram_api
    stack = Stack(tg, tmp_path, chat_models_dir)
    bot, worker = stack.bot, stack.worker
    try:
        photo = tg.add_message(tg.message(89, **tg.photo_fields(face_bytes(data_dir, skip=5)[0])))
        assert "很可能是 AI 生成的假臉" in text_of(replies(tg, photo["message_id"], timeout=60)[0])
        time.sleep(3)  # watcher rounds after the verdict: no "send again" for a check that was answered
        assert len(tg.replies_to(photo["message_id"])) == 1
        assert redis.Redis(port=stack.sport).hlen("zhenjia:inflight:telegram") == 0
        assert healthz(bot)["serving_model"] == "always_fake@1"

        stack.restart_queue()  # back and empty: nobody restarted the worker or promoted a model
        deadline = time.time() + 30
        r = redis.Redis(port=stack.qport)
        while healthz(bot).get("serving_model") != "always_fake@1" or not r.scard("rq:workers"):
            assert time.time() < deadline, f"served model / worker not announced again: {healthz(bot)}"
            time.sleep(0.5)
        assert worker.alive  # and counted again by RQ (the operators' zhenjia_workers gauge)
    finally:
        stack.close()


def test_a_worker_busy_when_the_queue_redis_restarts_stays_up_and_checks_the_next_picture(
        chat, chat_models_dir, telegram_api, tmp_path, data_dir):
    from tests.clipmaker import make_clip

    tg = telegram_api
    stack = Stack(tg, tmp_path, chat_models_dir)
    worker = stack.worker
    try:
        # A long clip keeps the worker busy for seconds (32 sampled 720p frames through the face detector).
        faces = face_bytes(data_dir, n=2, skip=6)
        clip = make_clip(faces, seconds=16, fps=4, size=(1280, 720), face_px=300, fmt="mp4")
        long_check = tg.add_message(tg.message(90, **tg.clip_fields(clip, width=1280, height=720, duration=16)))
        deadline = time.time() + 60
        while not redis.Redis(port=stack.qport).zcard("rq:wip:checks"):  # the worker has started it
            assert time.time() < deadline, "the clip's job never started"
            time.sleep(0.05)
        stack.stop_queue()  # down until the worker, done with the clip, fails to publish its verdict
        deadline = time.time() + 60
        while "job_lost_with_redis" not in worker.log():
            assert worker.alive, f"the worker quit when Redis went away:\n{worker.log()[-2000:]}"
            assert time.time() < deadline, "the clip's check never ended"
            time.sleep(0.1)
        stack.start_queue()
        # The lost clip is admitted once; the worker, still alive, checks the next picture.
        assert [text_of(c) for c in replies(tg, long_check["message_id"], timeout=30)] == [SEND_AGAIN]
        photo = tg.add_message(tg.message(91, **tg.photo_fields(face_bytes(data_dir, skip=7)[0])))
        assert "很可能是 AI 生成的假臉" in text_of(replies(tg, photo["message_id"], timeout=60)[0])
        time.sleep(2)
        assert len(tg.replies_to(long_check["message_id"])) == 1 and worker.alive
    finally:
        stack.close()
