"""The process wiring: `python -m bot` alone, the README's commands' contracts, `.env.example`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_web import http, start_bot

REPO = Path(__file__).resolve().parent.parent
# How our code reads a setting: Settings/BotSettings' `_env("NAME"...)` or a direct os.environ lookup.
_READS = re.compile(r"""(?:_env\w*\(|\benv\(|os\.environ\.get\(|os\.getenv\(|os\.environ\[)\s*["']([A-Z][A-Z0-9_]+)["']""")
# Variables that are not ours to document (set for libraries, or by the test harness).
_NOT_OURS = {"TF_CPP_MIN_LOG_LEVEL", "CI", "FACES_DATA_DIR", "PYTHONUNBUFFERED", "HOME"}


def _settings_read() -> set[str]:
    names: set[str] = set()
    for pkg in ("core", "bot", "inference_worker", "trainer"):
        for path in (REPO / pkg).glob("*.py"):
            names |= set(_READS.findall(path.read_text()))
    return names - _NOT_OURS


def _documented(path: Path) -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", path.read_text(), re.M))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_bot_alone_serves_the_page_and_stops_cleanly(redis_url, tmp_path, sig):
    bot = start_bot(redis_url, tmp_path)
    page = http("GET", bot.url + "/")
    assert page.status == 200 and "真的假不了".encode() in page.body
    assert bot.stop(sig, timeout=15) == 0
    log = bot.log()
    assert "Traceback" not in log
    assert "chat=none" in log and "msg=stopped" in log


def test_bot_warns_about_half_a_line_configuration(redis_url, tmp_path):
    bot = start_bot(redis_url, tmp_path, LINE_CHANNEL_SECRET="only-the-secret")
    try:
        assert http("GET", bot.url + "/healthz").status == 200  # the web page still runs
    finally:
        assert bot.stop() == 0
    log = bot.log()
    assert "line_disabled reason=needs_both" in log and "chat=none" in log
    assert "only-the-secret" not in log  # secrets never reach the logs


def test_bot_refuses_a_malformed_setting(redis_url):
    env = {**os.environ, "REDIS_URL": redis_url, "WEB_PORT": "not-a-number"}
    res = subprocess.run([sys.executable, "-m", "bot"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "bad setting" in res.stderr


def test_bot_reports_a_taken_port(redis_url, tmp_path):
    bot = start_bot(redis_url, tmp_path)
    try:
        port = bot.url.rsplit(":", 1)[1]
        env = {**os.environ, "REDIS_URL": redis_url, "WEB_PORT": port}
        res = subprocess.run([sys.executable, "-m", "bot"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 2 and "cannot_start" in res.stderr
    finally:
        bot.stop()


def test_env_example_lists_every_setting():
    read = _settings_read()
    assert {"REDIS_URL", "TELEGRAM_BOT_TOKEN", "LINE_CHANNEL_SECRET", "WEB_PORT"} <= read  # the scan works
    documented = _documented(REPO / ".env.example")
    assert read - documented == set(), "add these to .env.example with a one-line comment"
    text = (REPO / ".env.example").read_text().splitlines()
    for i, line in enumerate(text):  # each variable has its comment on the line above
        if re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", line):
            assert i > 0 and text[i - 1].startswith("# ") and "=" not in text[i - 1].split()[1], line
            assert not re.match(r"^[A-Z_]+=.+", line) or "TOKEN" not in line, "no secrets in the example"


def test_readme_settings_table_lists_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = {name for name in _documented(REPO / ".env.example") if f"`{name}`" not in readme}
    assert missing == set()


def _test_sh(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(["bash", str(REPO / "scripts/test.sh"), *args, "-p", "no:cacheprovider"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_test_command_fails_when_no_test_runs():
    res = _test_sh("tests/test_scripts.py", "-k", "no_test_has_this_name")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "collected no tests" in res.stderr


def test_test_command_passes_pytest_failures_through(tmp_path):
    (tmp_path / "test_fails.py").write_text("def test_fails():\n    assert 1 == 2\n")
    (tmp_path / "test_passes.py").write_text("def test_passes():\n    assert 1 == 1\n")
    failing = _test_sh(str(tmp_path / "test_fails.py"), "--rootdir", str(tmp_path))
    assert failing.returncode == 1 and "1 failed" in failing.stdout
    passing = _test_sh(str(tmp_path / "test_passes.py"), "--rootdir", str(tmp_path))
    assert passing.returncode == 0 and "1 passed" in passing.stdout


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci/run").read_text()
    assert "scripts/test.sh" in ci
    readme = (REPO / "README.md").read_text()
    assert "scripts/run.sh" in readme and "scripts/test.sh" in readme


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, grandchildren...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_run_command_serves_a_verdict_and_leaves_no_orphans(worker_models_dir, data_dir, tmp_path):
    """README command 1 with no REDIS_URL and no tokens: private Redis + worker + bot; TERM stops all."""
    from tests.conftest import free_port
    from tests.fixtures_web import post_image

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TELEGRAM_", "LINE_", "PYTEST_"))}
    env.update({"WEB_PORT": str(port), "MODELS_DIR": str(worker_models_dir), "WORKERS": "1",
                "WORKER_TF_THREADS": "1"})
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(REPO / "scripts/run.sh")], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        import time

        deadline = time.monotonic() + 180
        while "web page: http://127.0.0.1:%d/" % port not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert "private Redis on 127.0.0.1:" in log.read_text()
        face = sorted((data_dir / "valid" / "real").glob("*.jpg"))[0].read_bytes()
        res = post_image(f"http://127.0.0.1:{port}", face)  # the worker may still be loading: POST waits
        assert res.status == 200, res.body
        assert res.json()["label"] in ("fake", "real", "unsure")
        children = _descendants(proc.pid)
        assert len(children) >= 3  # redis-server, a worker, the bot
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 143
    left = [pid for pid in children if _alive(pid)]
    assert left == [], f"orphans left: {left}\n{log.read_text()}"
    assert "Traceback" not in log.read_text()


def test_bot_stops_promptly_while_a_page_waits_for_a_verdict(redis_url, tmp_path):
    """SIGTERM during a long POST /api/check wait (no worker): the bot still exits cleanly and soon."""
    import io
    import threading
    import time

    from PIL import Image

    from tests.fixtures_web import post_image

    bot = start_bot(redis_url, tmp_path, WEB_WAIT_S="120", QUEUE_NAME="nobody-works-here")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "JPEG")
    replies = []
    waiter = threading.Thread(target=lambda: replies.append(post_image(bot.url, buf.getvalue(), timeout=60)),
                              daemon=True)
    waiter.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    assert bot.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - t0 < 6
    waiter.join(timeout=10)
    # The page is told to poll (its verdict will still come from the worker), not left hanging.
    assert replies and replies[0].status == 504 and replies[0].json()["request_id"]
    assert "Traceback" not in bot.log()


def test_bot_help_lists_its_settings_and_bad_flags_get_usage():
    """`python -m bot --help` answers without touching Redis; an unknown flag is a usage error, not a start."""
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing listens there: must not matter
    res = subprocess.run([sys.executable, "-m", "bot", "--help"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m bot")
    listed = set(re.findall(r"^  ([A-Z][A-Z0-9_]+)=", res.stdout, re.M))
    bots = set(_READS.findall((REPO / "bot" / "settings.py").read_text())) - _NOT_OURS
    assert bots and bots <= listed, bots - listed  # every setting the bot process reads, with its default
    assert "WORKER_TF_THREADS" not in listed  # a worker's setting is not the bot's
    bad = subprocess.run([sys.executable, "-m", "bot", "--bogus"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "usage: python -m bot" in bad.stderr and "--bogus" in bad.stderr
