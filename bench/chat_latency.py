"""Chat → verdict latency through the stand-in Telegram Bot API, Redis and one inference worker.

Starts a private redis-server, the stand-in Telegram server, one `python -m inference_worker` and
the real `python -m bot`, then sends N face photos one at a time (a new chat each, so no cache hit)
and measures from the moment the update is available to getUpdates until the bot's sendPhoto /
sendMessage reply arrives at the stand-in. The worker's own time per image (its `timings_ms.total`,
read back from the verdict cache) is the baseline: the difference is what the chat path adds.

    .venv/bin/python bench/chat_latency.py [--n 60] [--models-dir models] [--split test]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.private_redis import private_redis  # noqa: E402
from tests.fixtures_chat import BotProcess, bot_env, spawn_worker  # noqa: E402
from tests.standins.telegram_api import TelegramStandin  # noqa: E402

DATA = REPO.parent / "shared/data/faces140k-sample/real-vs-fake"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--split", default="test")  # never used for tuning, fine for timing
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    with private_redis() as url:
        run(args, url)
    return 0


def run(args: argparse.Namespace, url: str) -> None:
    """Start the stand-in, a worker and the bot on the Redis at `url`; time the chat path."""
    r = redis.Redis.from_url(url)
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    tg = TelegramStandin().start()
    worker = bot = None
    try:
        t0 = time.perf_counter()
        worker = spawn_worker(url, args.models_dir, tmp / "worker.log", timeout=300)
        bot = BotProcess(bot_env(url, tg, None, USER_RATE_PER_MIN="10000", CHAT_RATE_PER_MIN="10000"),
                         tmp / "bot.log", tg).start()
        print(f"started redis, worker ({args.models_dir.name}), bot in {time.perf_counter() - t0:.1f}s")
        files = sorted((args.data / args.split / "fake").glob("*.jpg"))[: (args.n + args.warmup) // 2 + 1]
        files += sorted((args.data / args.split / "real").glob("*.jpg"))[: (args.n + args.warmup) // 2 + 1]
        files = files[: args.n + args.warmup]
        latencies, worker_ms, labels = [], [], {}
        for i, path in enumerate(files):
            data = path.read_bytes()
            chat_id = 100_000 + i
            fields = tg.photo_fields(data)
            start = time.perf_counter()
            msg = tg.add_message(tg.message(chat_id, **fields))
            tg.wait_for(("sendPhoto", "sendMessage"), lambda c, cid=chat_id: int(c.params["chat_id"]) == cid,
                        timeout=60)
            elapsed = time.perf_counter() - start
            if i < args.warmup:
                continue
            latencies.append(elapsed)
            cached = r.get(f"zhenjia:cache:{hashlib.sha256(data).hexdigest()}")
            if cached:
                verdict = json.loads(cached)
                labels[verdict["label"]] = labels.get(verdict["label"], 0) + 1
                if "total" in verdict.get("timings_ms", {}):
                    worker_ms.append(verdict["timings_ms"]["total"] / 1000)
            del msg
        n = len(latencies)
        print(f"images: {n} (+{args.warmup} warm-up), one at a time, labels: {labels}")
        print(f"chat -> verdict latency: p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p95 {pct(latencies, 0.95) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
        if worker_ms:
            w50 = statistics.median(worker_ms)
            print(f"baseline, worker's own check time: p50 {w50 * 1000:.0f} ms, p95 {pct(worker_ms, 0.95) * 1000:.0f} ms")
            print(f"chat path adds (p50 latency - p50 worker): {(statistics.median(latencies) - w50) * 1000:.0f} ms; "
                  f"latency / worker time = {statistics.median(latencies) / w50:.2f}x")
        print(f"goal p50 <= 1000 ms: {'met' if statistics.median(latencies) <= 1.0 else 'NOT met'}")
    finally:
        if bot is not None:
            bot.stop()
        if worker is not None:
            worker.stop()
        tg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
