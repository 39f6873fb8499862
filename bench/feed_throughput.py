"""Input pipeline alone (no model): training faces per second of the tf.data pipeline and of its Pillow twin.

Both make the default recipe's batches (chat augmentation, half of the faces re-aligned, half of those in a
foreign background) from the same files in the same run; no network runs, so this is the rate at which each
can feed a trainer. Every face gets the same plausible landmarks (re-aligning costs the same whatever they
are, and no detector has to run). The Pillow feed is measured in this process, in N worker processes (as
Keras runs it with --feed-workers N) and in N threads; tf.data uses every core it finds, its first (decoding,
caching) epoch and its second reported apart.

    .venv/bin/python bench/feed_throughput.py [--data-dir DIR] [--per-class 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LANDMARKS = [[92, 112], [164, 110], [128, 150], [100, 188], [158, 187]]  # eyes, nose, mouth corners (256 px)
FEED = None  # the Pillow feed, inherited by forked worker processes


def _batch(i: int) -> int:
    return len(FEED[i][1])


def _rate(mapper) -> float:
    """Faces per second for one epoch of FEED's batches, made by `mapper` (map, or a pool's map)."""
    t0 = time.perf_counter()
    seen = sum(mapper(_batch, range(len(FEED))))
    return seen / (time.perf_counter() - t0)


def main() -> int:
    global FEED
    from tests.conftest import DATA
    from trainer.data import scan_split, train_dataset
    from trainer.feed import train_feed
    from trainer.framing import align_params
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FACES_DATA_DIR", str(DATA)))
    p.add_argument("--per-class", type=int, default=256)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args()
    split = scan_split(Path(a.data_dir), "train", a.per_class)
    n = len(split)
    align = align_params(np.tile(np.array(LANDMARKS, np.float32), (n, 1, 1)))
    recipe = dict(framing=0.0, align=align, realign_share=0.5, foreign_share=0.5, rescale_min=0.55, small_jpeg=0.0)
    print(f"{n} training faces, batch {a.batch_size}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")

    ds = train_dataset(split, a.batch_size, "chat", (60, 95), True, 1, **recipe)
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in ds)
        rates.append(seen / (time.perf_counter() - t0))
    base = rates[1]
    print(f"tf.data            first epoch {rates[0]:7.1f} faces/s, second {base:7.1f} faces/s (1.00x)")

    FEED = train_feed(split, a.batch_size, "chat", (60, 95), 1, **recipe)
    one = _rate(map)
    print(f"pillow, 1 process  {one:7.1f} faces/s ({one / base:.2f}x tf.data's second epoch), "
          f"{1000 / one:.1f} ms per face")
    if a.workers > 1:
        for kind, pool in (("processes", concurrent.futures.ProcessPoolExecutor(
                               a.workers, mp_context=mp.get_context("fork"))),
                           ("threads  ", concurrent.futures.ThreadPoolExecutor(a.workers))):
            with pool:
                many = _rate(pool.map)
            print(f"pillow, {a.workers} {kind} {many:7.1f} faces/s ({many / base:.2f}x), "
                  f"{many / one:.2f}x one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
