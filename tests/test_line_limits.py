"""LINE errors a user can cause, through the real bot process (LINE only) and the stand-in LINE API;
no worker: every case is answered before or instead of a check."""

from __future__ import annotations

import time

import pytest
import redis

from tests.fixtures_chat import BotProcess, bot_env, face_bytes
from tests.standins.line_api import LineStandin
from tests.test_line import GROUP, deliver

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def line_limits_url(redis_server) -> str:
    url = redis_server["url"] + "/6"  # its own database: no worker may take these jobs
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def line_bot(line_limits_url, line_api, tmp_path_factory):
    env = bot_env(line_limits_url, None, line_api, USER_RATE_PER_MIN="2", CHAT_RATE_PER_MIN="100",
                  MAX_QUEUE_LENGTH="3")
    bot = BotProcess(env, tmp_path_factory.mktemp("line-limits-bot") / "bot.log", None).start()
    yield bot
    bot.stop()


@pytest.fixture
def line(line_limits_url, line_api, line_bot) -> LineStandin:
    r = redis.Redis.from_url(line_limits_url)
    r.flushdb()
    line_api.reset()
    return line_api


def user(uid: str) -> dict:
    return {"type": "user", "userId": uid}


def test_rate_limit_answers_politely_once(line, line_bot, data_dir):
    if time.time() % 60 > 45:  # the limit counts per clock minute: do not straddle two
        time.sleep(61 - time.time() % 60)
    images = face_bytes(data_dir, n=4)
    for data in images:
        deliver(line_bot, line.image_event(data, user("Urate")))
    call = line.wait_for("reply")[0]
    assert call.params["messages"][0]["text"] == "傳得有點快喔，這張和接下來一分鐘內的圖片不會檢查，請稍等一分鐘再傳 🙏"
    time.sleep(1.0)
    assert len(line.calls_to("reply", "push")) == 1
    assert len(line.calls_to("content")) == 2


def test_long_queue_answers_busy_in_english_from_the_profile(line, line_bot, data_dir):
    line.profiles["Ubusy"] = {"language": "en"}
    images = face_bytes(data_dir, n=4, skip=4)
    for i, data in enumerate(images[:3]):
        deliver(line_bot, line.image_event(data, user(f"Uq{i}")))
    line.wait_for("loading", count=3)
    line.wait_for("content", count=3)
    time.sleep(0.5)
    deliver(line_bot, line.image_event(images[3], user("Ubusy")))
    call = line.wait_for("reply")[0]
    assert call.params["messages"][0]["text"] == (
        "Too many pictures are waiting to be checked right now. Please try again in a minute or two 🙏")


def test_bad_mode_argument_gets_usage_and_old_group_images_are_ignored(line, line_bot, data_dir):
    deliver(line_bot, line.text_event("/mode banana", GROUP))
    assert line.wait_for("reply")[0].params["messages"][0]["text"].startswith("用法：/mode all")
    deliver(line_bot, line.image_event(face_bytes(data_dir, skip=8)[0], GROUP, age_s=600))
    time.sleep(1.0)
    assert line.calls_to("content") == []
    assert len(line.calls_to("reply", "push")) == 1
