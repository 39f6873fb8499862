"""Load test: web + chat load on the whole service, with a worker SIGKILLed and the queue Redis restarted mid-run.

Starts its own two redis-servers (queue: memory only; state: append-only file in a temp dir), the stand-in
Telegram and LINE servers, the real `python -m bot` with both platforms, and --workers real
`python -m inference_worker` processes (WORKER_TF_THREADS=1, WORKER_HEARTBEAT_S=1) serving the repo's
promoted model. Then --web POST /api/check at --concurrency (a client pauses 5 s after a 503 before its next
picture), interleaved with --chat pictures split between Telegram 1:1 chats (photos fetched by the bot through
getUpdates) and LINE 1:1 image events (signed, POSTed to the webhook). Every picture is distinct bytes (a
committed face re-encoded at its own JPEG quality with a 1-px crop) so the verdict cache never answers.
At 1/3 of the requests a worker is SIGKILLed (a replacement starts 3 s later, as an orchestrator would); at
1/2 the queue Redis is stopped and, --redis-down-s later, started empty on the same port; the state Redis
keeps running. A worker that exits by itself is reported (and replaced with --restart-exited, as compose's
restart policy would). Everything stops at --max-seconds, whatever is left, and the report covers what it has.

Why a bench imports tests/: the stand-ins (tests/standins) are the only Telegram and LINE endpoints that exist
offline (the real ones need tokens, the internet and phones); the helpers that start the bot and workers
against them are the ones the tests trust.

Each request ends in exactly one outcome; a chat picture is matched to its replies by its own chat (the
Telegram chat id; on LINE the quote token of the image, carried by replies and pushes alike):
  verdict      a real answer: web 200 with any label but `error`; a chat reply that is a verdict
  busy         web 503 busy; chat "too many pictures are waiting"
  unavailable  web 503 unavailable; chat "the checker is restarting"
  send_again   chat: the in-flight watcher's "the check was lost, please send it again"
  gone         web: 504 + poll id, then the poll said 404. Lost-but-told, not lost: the client gets an answer
               (unknown id: send it again), though not the honest "restarting" one
  timeout      web: 504 + poll id, and the poll still said pending at the end
  other        any other answer (an `error` verdict, another status, a client error, another chat text)
  lost         no answer at all by the end (after waiting up to --grace s for late answers)
A chat picture answered more than once also counts as `doubled`. Exit status 0 when nothing was lost.

    .venv/bin/python bench/load_test.py --web 300 --concurrency 50 --chat 60 --workers 2 --max-seconds 480
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.private_redis import free_port  # noqa: E402
from bot.messages import t  # noqa: E402
from tests.fixtures_chat import LINE_SECRET, BotProcess, bot_env  # noqa: E402
from tests.fixtures_worker import launch_worker  # noqa: E402
from tests.processes import start_redis  # noqa: E402
from tests.standins.line_api import LineStandin, sign  # noqa: E402
from tests.standins.telegram_api import TelegramStandin  # noqa: E402

FACES = REPO / "tests/fixtures/faces/real-vs-fake"
OUTCOMES = ("verdict", "busy", "unavailable", "send_again", "gone", "timeout", "other", "lost")
CHANNELS = ("web", "telegram", "line")
LANGS = ("zh-TW", "en")


@dataclass
class Req:
    channel: str
    sent: float = 0.0  # epoch seconds (the stand-ins stamp their calls with time.time())
    outcome: str = "lost"
    latency: float | None = None
    text: str = ""  # what a non-verdict answer said
    answers: int = 0
    at: float = 0.0  # when the (first) answer came


def pictures(n: int) -> list[bytes]:
    """`n` distinct JPEGs: face i % 97 at its own quality (94..70) with one edge cropped by a pixel."""
    faces = [Image.open(p).convert("RGB") for p in sorted(FACES.glob("*/*/*.jpg"))]
    out = []
    for i in range(n):
        k, img, buf = i // len(faces), faces[i % len(faces)], io.BytesIO()
        w, h = img.size
        img.crop([(1, 0, w, h), (0, 1, w, h), (0, 0, w - 1, h), (0, 0, w, h - 1)][(k // 25) % 4]).save(
            buf, "JPEG", quality=94 - k % 25)
        out.append(buf.getvalue())
    assert len(set(out)) == n, "pictures are not all distinct"
    return out


def chat_outcome(text: str) -> str:
    """Which outcome a chat reply is, from the bot's own texts (either language)."""
    for key in ("busy", "unavailable", "send_again", "send_again_album"):
        if text in {t(key, lang) for lang in LANGS}:
            return key.removesuffix("_album")
    if any(text.startswith(t(f"v_{label}", lang)) for label in ("fake", "real", "unsure", "no_face", "unreadable")
           for lang in LANGS):
        return "verdict"
    return "other"


def answered(req: Req, text: str, at: float) -> None:
    req.answers += 1
    if req.answers == 1:
        req.outcome, req.at = chat_outcome(text), at
        req.latency, req.text = (at - req.sent, "") if req.outcome == "verdict" else (None, text)


class Run:
    """Everything one run started, and what it saw."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.qport, self.sport = free_port(), free_port()
        self.queue_url = f"redis://127.0.0.1:{self.qport}/0"
        self.queue = self.state = self.bot = None
        self.workers: list = []
        self.tg, self.line = TelegramStandin(), LineStandin()
        self.reqs: list[Req] = []
        self.by_chat: dict[int, Req] = {}  # Telegram: one private chat per picture
        self.by_quote: dict[str, Req] = {}  # LINE: the image message's quote token
        self.seen, self.gone, self.chaos = {"tg": 0, "line": 0}, set(), []  # calls read; dead workers; chaos tasks
        self.t0, self.timeline, self.at_end = time.time(), [], ""

    def event(self, what: str) -> None:
        self.timeline.append((time.time() - self.t0, what))
        print(f"  t={time.time() - self.t0:6.1f}s  {what}", flush=True)

    def start(self, deadline: float) -> None:
        a = self.args
        self.queue, self.state = start_redis(self.qport), start_redis(self.sport, self.tmp / "state")
        self.tg.start(), self.line.start()
        self.workers = [self.launch() for _ in range(a.workers)]
        extra = {"MAX_QUEUE_LENGTH": str(a.max_queue)} if a.max_queue else {}
        env = bot_env(self.queue_url, self.tg, self.line, STATE_REDIS_URL=f"redis://127.0.0.1:{self.sport}/0",
                      INFLIGHT_CHECK_S=str(a.inflight_check_s), WEB_WAIT_S=str(a.web_wait_s),
                      USER_RATE_PER_MIN="100000", CHAT_RATE_PER_MIN="100000", **extra)
        self.bot = BotProcess(env, self.tmp / "bot.log", self.tg).start(timeout=60)
        r = redis.Redis.from_url(self.queue_url)
        while r.scard("rq:workers") < a.workers:  # TensorFlow and the model load: the slow part
            if time.time() > deadline or not all(w.alive for w in self.workers):
                raise RuntimeError(f"workers not ready; see {self.tmp}")
            time.sleep(0.5)

    def launch(self):
        return launch_worker(self.queue_url, self.args.models_dir, self.tmp, wait=False, TF_CPP_MIN_LOG_LEVEL="3")

    def stop(self) -> None:
        """Stop everything this run started: SIGTERM, then SIGKILL after 10 s."""
        procs = [w.proc for w in self.workers] + [p for p in (self.bot and self.bot.proc, self.queue, self.state) if p]
        for proc in (p for p in procs if p.poll() is None):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001 - TimeoutExpired: kill it
                proc.kill()
                proc.wait(5)
        self.tg.stop(), self.line.stop()

    # --- chaos ---------------------------------------------------------------------------------
    async def kill_worker(self) -> None:
        victim = self.workers[0]
        self.gone.add(victim.name)
        victim.kill()
        self.event(f"SIGKILL worker {victim.name}")
        await self.replace()

    async def replace(self) -> None:
        """A new worker 3 s after one went, as an orchestrator would; returns once it serves (or died)."""
        await asyncio.sleep(3)
        fresh = await asyncio.to_thread(self.launch)
        self.workers.append(fresh)
        self.event(f"replacement worker {fresh.name} started")
        r = redis.Redis.from_url(self.queue_url, socket_timeout=1, socket_connect_timeout=1)
        while fresh.alive:
            try:
                if r.sismember("rq:workers", f"rq:worker:{fresh.name}"):
                    return self.event(f"replacement worker {fresh.name} registered (serving)")
            except redis.exceptions.RedisError:
                pass
            await asyncio.sleep(0.5)

    def check_workers(self) -> None:
        """A worker that exits by itself is a finding: say so (and replace it with --restart-exited)."""
        for w in list(self.workers):
            if w.name not in self.gone and not w.alive:
                self.gone.add(w.name)
                last = (w.log().strip().splitlines() or [""])[-1][:100]
                self.event(f"worker {w.name} EXITED by itself, rc {w.proc.returncode}: {last}")
                if self.args.restart_exited:
                    self.chaos.append(asyncio.create_task(self.replace()))

    async def restart_queue_redis(self) -> None:
        self.queue.terminate()
        await asyncio.to_thread(self.queue.wait, 10)
        self.event("queue Redis stopped")
        await asyncio.sleep(self.args.redis_down_s)
        self.queue = await asyncio.to_thread(start_redis, self.qport)
        self.event("queue Redis started again, empty, same port")

    # --- load ----------------------------------------------------------------------------------
    async def web_post(self, session: aiohttp.ClientSession, req: Req, data: bytes) -> str | None:
        """POST one picture; the poll path when the answer was 504 + an id."""
        req.sent = time.time()
        try:
            async with session.post(self.bot.web_url + "/api/check", data=data,
                                    headers={"Content-Type": "image/jpeg"}) as resp:
                status, body = resp.status, await resp.json(content_type=None)
        except Exception as exc:  # noqa: BLE001 - any client failure is an answer of sorts: "other"
            req.outcome, req.text = "other", f"client {type(exc).__name__}"
            return None
        if status == 504 and body.get("poll"):
            req.outcome, req.text, req.at = "timeout", "504 timeout, then the poll said pending", time.time()
            return body["poll"]
        self.web_answer(req, status, body)
        return None

    async def web_poll(self, session: aiohttp.ClientSession, req: Req, path: str) -> None:
        """Poll a 504's id every 2 s until a verdict or a 404 (or the end of the run cancels it)."""
        while True:
            await asyncio.sleep(2)
            try:
                async with session.get(self.bot.web_url + path) as resp:
                    status, body = resp.status, await resp.json(content_type=None)
            except Exception:  # noqa: BLE001 - the bot is busy: poll again
                continue
            if status == 404:
                req.outcome, req.text, req.at = "gone", f"504, then poll 404 {body.get('error')}", time.time()
                return
            if status == 200:
                return self.web_answer(req, status, body)

    @staticmethod
    def web_answer(req: Req, status: int, body: dict) -> None:
        req.at = time.time()
        if status == 200 and body.get("label") != "error":
            req.outcome, req.latency, req.text = "verdict", time.time() - req.sent, ""
        elif status == 503 and body.get("error") in ("busy", "unavailable"):
            req.outcome, req.text = body["error"], f"503 {body['error']}: {body.get('message')}"
        else:
            req.outcome, req.text = "other", f"{status} {body.get('error') or body.get('label')}"

    async def chat_one(self, session: aiohttp.ClientSession, i: int, data: bytes) -> None:
        if i % 2 == 0:  # Telegram: a 1:1 chat of its own, so every reply there is this picture's
            req, chat_id, fields = Req("telegram"), 500_000 + i, self.tg.photo_fields(data)
            self.by_chat[chat_id], req.sent = req, time.time()
            self.tg.add_message(self.tg.message(chat_id, user_id=chat_id, **fields))
        else:  # LINE: a 1:1 image event, signed like LINE signs it
            req, event = Req("line"), self.line.image_event(data, {"type": "user", "userId": f"Uload{i}"})
            body = LineStandin.webhook_body(event)
            self.by_quote[event["message"]["quoteToken"]], req.sent = req, time.time()
            try:
                async with session.post(self.bot.web_url + "/line/webhook", data=body.encode(), headers={
                        "Content-Type": "application/json", "X-Line-Signature": sign(LINE_SECRET, body)}) as resp:
                    if resp.status != 200:
                        req.outcome, req.text = "other", f"webhook {resp.status}"
            except Exception as exc:  # noqa: BLE001
                req.outcome, req.text = "other", f"webhook {type(exc).__name__}"
        self.reqs.append(req)

    def collect(self) -> None:
        """Match the stand-ins' new calls to the chat pictures they answer."""
        for name, server in (("tg", self.tg), ("line", self.line)):
            with server.lock:
                new = server.calls[self.seen[name]:]
            self.seen[name] += len(new)
            for c in new:
                if name == "tg" and c.method in ("sendMessage", "sendPhoto") and (
                        req := self.by_chat.get(int(c.params["chat_id"]))):
                    answered(req, c.params.get("text") or c.params.get("caption") or "", c.at)
                elif name == "line" and c.method in ("reply", "push") and (
                        req := self.by_quote.get((first := (c.params.get("messages") or [{}])[0]).get("quoteToken"))):
                    answered(req, first.get("text", ""), c.at)

    def snapshot(self) -> str:
        try:
            r = redis.Redis.from_url(self.queue_url, socket_timeout=2)
            listed, waiting = r.scard("rq:workers"), r.llen("rq:queue:checks")
        except redis.exceptions.RedisError as exc:
            listed = waiting = type(exc).__name__
        alive = sum(w.alive for w in self.workers)
        return f"{alive} worker processes alive, {listed} registered in RQ, {waiting} checks waiting in the queue"

    async def load(self, deadline: float) -> None:
        a = self.args
        pics = pictures(a.web + a.chat)
        # The schedule: chat pictures spread evenly among the web requests; chaos at 1/3 and 1/2 of it.
        order = sorted([(i / max(a.web, 1), "web") for i in range(a.web)]
                       + [((j + 0.5) / max(a.chat, 1), "chat") for j in range(a.chat)])
        n, sem, tasks, chaos = len(order), asyncio.Semaphore(a.concurrency), [], self.chaos
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=a.web_wait_s + 60)) as session:
            async def web_slot(req: Req, data: bytes) -> None:
                try:
                    poll = await self.web_post(session, req, data)
                    if req.outcome in ("busy", "unavailable"):
                        await asyncio.sleep(5)  # told "busy" / "restarting": this client waits before its next one
                finally:
                    sem.release()  # --concurrency bounds the POSTs in flight; polls run beside them
                if poll:
                    await self.web_poll(session, req, poll)

            async def collector() -> None:
                while True:
                    self.collect()
                    self.check_workers()
                    await asyncio.sleep(0.25)

            collecting = asyncio.create_task(collector())
            self.t0 = time.time()
            self.event(f"load starts: {a.web} web at concurrency {a.concurrency}, {a.chat} chat pictures")
            chat_i = 0
            for k, (_, kind) in enumerate(order):
                if k == n // 3:
                    chaos.append(asyncio.create_task(self.kill_worker()))
                if k == n // 2:
                    chaos.append(asyncio.create_task(self.restart_queue_redis()))
                if kind == "web":
                    await sem.acquire()
                    req = Req("web")
                    self.reqs.append(req)
                    tasks.append(asyncio.create_task(web_slot(req, pics[k])))
                else:
                    await self.chat_one(session, chat_i, pics[k])
                    chat_i += 1
                if time.time() > deadline:
                    break
            self.event(f"all {len(self.reqs)} requests sent; waiting up to {a.grace:.0f}s for answers")
            end = min(deadline, time.time() + a.grace)
            while time.time() < end and (any(r.outcome == "lost" for r in self.reqs if r.channel != "web")
                                         or not all(x.done() for x in tasks + chaos)):
                await asyncio.sleep(0.5)
            self.collect()
            settle = 2 * a.inflight_check_s + 1  # a little longer: late doubles ("send again" after a verdict)
            await asyncio.sleep(max(0.0, min(settle, deadline - time.time())))
            self.collect()
            self.event("end of the wait")
            for x in tasks + chaos + [collecting]:
                x.cancel()
            await asyncio.gather(*tasks, *chaos, collecting, return_exceptions=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(run: Run) -> int:
    print("\n| channel | sent | " + " | ".join(OUTCOMES) + " | doubled | busy share | verdict p50 / p95 / p99 |")
    print("|---" * (len(OUTCOMES) + 5) + "|")
    lost = 0
    for ch in CHANNELS:
        reqs = [r for r in run.reqs if r.channel == ch]
        counts = {o: sum(1 for r in reqs if r.outcome == o) for o in OUTCOMES}
        lost += counts["lost"]
        lat = [r.latency for r in reqs if r.latency is not None]
        times = f"{statistics.median(lat):.1f} / {pct(lat, .95):.1f} / {pct(lat, .99):.1f} s" if lat else "-"
        busy = f"{100 * counts['busy'] / len(reqs):.1f} %" if reqs else "-"
        doubled = sum(1 for r in reqs if r.answers > 1)
        print(f"| {ch} | {len(reqs)} | " + " | ".join(str(counts[o]) for o in OUTCOMES)
              + f" | {doubled} | {busy} | {times} |")
    print("\nchaos timeline (s since the load started):")
    for at, what in run.timeline:
        print(f"  {at:6.1f}  {what}")
    print("\nanswers other than verdicts, as the clients / stand-ins received them (first answer's time):")
    texts = Counter((r.channel, r.outcome, r.text) for r in run.reqs if r.text)
    for (ch, outcome, text), count in sorted(texts.items()):
        at = [r.at - run.t0 for r in run.reqs if (r.channel, r.outcome, r.text) == (ch, outcome, text) and r.at]
        when = f"t={min(at):.1f}..{max(at):.1f}s" if at else ""
        print(f"  {ch:8} {outcome:11} x{count:<4} {when:15} {text!r}")
    print(f"\nat the end: {run.at_end}")
    print(f"lost: {lost}  (exit status {int(lost > 0)})")
    return int(lost > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--web", type=int, default=1000, help="POST /api/check requests")
    ap.add_argument("--concurrency", type=int, default=100, help="web requests in flight at once")
    ap.add_argument("--chat", type=int, default=200, help="chat pictures, half Telegram, half LINE")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--max-seconds", type=float, default=600, help="budget of the whole run, start and stop included")
    ap.add_argument("--grace", type=float, default=120, help="seconds to wait for late answers after the last send")
    ap.add_argument("--redis-down-s", type=float, default=2.5)
    ap.add_argument("--inflight-check-s", type=float, default=2)
    ap.add_argument("--max-queue", type=int, default=0, help="MAX_QUEUE_LENGTH (0: the bot's default)")
    ap.add_argument("--web-wait-s", type=float, default=60, help="the bot's WEB_WAIT_S (its default)")
    ap.add_argument("--restart-exited", action="store_true",
                    help="replace a worker that exits by itself, as compose's restart policy would")
    ap.add_argument("--keep-logs", action="store_true", help="keep the logs folder even when nothing was lost")
    args = ap.parse_args()

    deadline = time.time() + args.max_seconds - 20  # 20 s kept for stopping everything and the report
    tmp = Path(tempfile.mkdtemp(prefix="load-test-"))
    run = Run(args, tmp)
    status = 1
    try:
        t0 = time.time()
        run.start(deadline)
        print(f"started 2 redis, stand-ins, bot, {args.workers} workers ({args.models_dir.name}) "
              f"in {time.time() - t0:.1f}s; logs in {tmp}", flush=True)
        try:
            asyncio.run(asyncio.wait_for(run.load(deadline), timeout=max(1.0, deadline - time.time())))
        except (asyncio.TimeoutError, TimeoutError):
            run.event(f"budget of {args.max_seconds:.0f}s spent: stopping")
        run.collect()
        run.at_end = run.snapshot()
        status = report(run)
    finally:
        run.stop()
        if status == 0 and not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}")
    return status


if __name__ == "__main__":
    sys.exit(main())
