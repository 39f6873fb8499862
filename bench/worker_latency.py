"""Worker speed: per-image latency (decode + face detection + alignment + classification) and
throughput of 1 vs 2 worker processes sharing one Redis.

    .venv/bin/python bench/worker_latency.py [--models-dir models] [--n 100] [--jobs 60]

Not a test. Prints what it measured; the throughput ratio is against 1 worker measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.classifier_cost import time_call  # noqa: E402
from bench.private_redis import private_redis  # noqa: E402

DATA = Path(os.environ.get("FACES_DATA_DIR", REPO.parent / "shared/data/faces140k-sample/real-vs-fake"))


def sample_images(n: int, seed: int = 0) -> list[bytes]:
    """n shared-sample faces as sent: half the dataset's 256-px crops, half a 1280x960 photo with the face in it."""
    from PIL import Image

    rng = random.Random(seed)
    files = sorted((DATA / "valid" / "real").glob("*.jpg")) + sorted((DATA / "valid" / "fake").glob("*.jpg"))
    rng.shuffle(files)
    out = []
    for i, f in enumerate(files[:n]):
        if i % 2 == 0:
            out.append(f.read_bytes())
            continue
        face = Image.open(f).convert("RGB").resize((320, 320), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (1280, 960), tuple(rng.randrange(40, 200) for _ in range(3)))
        canvas.paste(face, (rng.randrange(0, 960), rng.randrange(0, 640)))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def latency(models_dir: Path, images: list[bytes]) -> None:
    from inference_worker.pipeline import Pipeline
    from core.settings import Settings

    pipe = Pipeline(Settings(models_dir=models_dir))
    pipe.check(images[0], "warm-up")
    rows: dict[str, list[dict[str, float]]] = {"256-px crop": [], "1280x960 photo": []}
    for i, data in enumerate(images):
        v = pipe.check(data, f"r{i}").verdict
        rows["256-px crop" if i % 2 == 0 else "1280x960 photo"].append(v.timings_ms)
    print(f"model {pipe.models.current.ident} ({pipe.models.current.runtime})  detector {pipe.detector.device}  "
          f"cores {os.cpu_count()}")
    for kind, ts in rows.items():
        total = np.array([t["total"] for t in ts])
        parts = "  ".join(f"{k} p50 {np.median([t[k] for t in ts]):.0f}" for k in ("decode", "detect", "classify"))
        print(f"latency {kind:<15} n={len(ts):<4} p50 {np.percentile(total, 50):6.1f} ms  "
              f"p95 {np.percentile(total, 95):6.1f} ms   ({parts} ms)")
    import resource
    every = np.array([t["total"] for ts in rows.values() for t in ts])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"peak RSS of this process (one worker's pipeline: TensorFlow, the face detector, the model) {rss:.0f} MiB")
    print(f"latency all             n={len(every):<4} p50 {np.percentile(every, 50):6.1f} ms  "
          f"p95 {np.percentile(every, 95):6.1f} ms  (goal p50 <= 300 ms)")


def call_styles(models_dir: Path, repeats: int = 20) -> None:
    """Classification alone: Keras predict() and model(x) (baselines) vs the worker's two runtimes, same run."""
    from inference_worker.classifier import Classifier, promoted_name

    folder = models_dir / promoted_name(models_dir)
    clf = Classifier(folder, runtime="tensorflow")
    lite = Classifier(folder, runtime="litert")
    x = np.random.default_rng(0).uniform(0, 255, (1, clf.input_size, clf.input_size, 3)).astype(np.float32)
    x32 = np.repeat(x, 32, axis=0)
    styles = {"keras predict()": lambda b: clf.net.model.predict(b, verbose=0),
              "keras model(x)": lambda b: clf.net.model(b, training=False),
              "worker tensorflow": clf.raw}
    if lite.runtime == "litert":
        styles["worker litert"] = lite.raw
    ms = {name: time_call(fn, x, repeats) for name, fn in styles.items()}
    per_face = {name: time_call(fn, x32, max(3, repeats // 4)) / 32 for name, fn in styles.items()}
    base = ms["keras predict()"]
    print(f"classify [{clf.metadata.get('arch')} @ {clf.metadata.get('image_size')}], ms for 1 face / ms per face "
          f"at batch 32 (goal <= 15 / <= 8):")
    for name in styles:
        print(f"  {name:<18} {ms[name]:6.1f} ms ({base / ms[name]:4.1f}x predict())   {per_face[name]:5.2f} ms/face")
    if clf.second is not None:
        print("  (a model with a second opinion: the keras rows are its first network alone, and on this noise the "
              "second is asked or not by chance; bench/classifier_cost.py --faces times it on real faces)")
    size_mb = {f.name: f.stat().st_size / 1e6 for f in folder.glob("model.*")}
    print("  model files: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sorted(size_mb.items()))
          + ("" if lite.runtime == "litert" else "; no sound model.tflite: workers serve with TensorFlow"))


def throughput(models_dir: Path, images: list[bytes], jobs: int, workers: int, threads: int) -> float:
    """Jobs per second through real worker processes on a private Redis."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from core.contract import JOB_FUNCTION, JobPayload
    from core.keys import result_key

    procs: list[subprocess.Popen] = []
    with private_redis() as url:
        r = redis.Redis.from_url(url)
        try:
            env = {**os.environ, "REDIS_URL": url, "MODELS_DIR": str(models_dir), "WORKER_TF_THREADS": str(threads),
                   "LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
            for i in range(workers):
                procs.append(subprocess.Popen([sys.executable, "-m", "inference_worker", "--name", f"bench{i}"],
                                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            while r.scard("rq:workers") < workers:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a worker exited")
                time.sleep(0.2)
            q = Queue("checks", connection=r, serializer=JSONSerializer)
            # Warm each worker (first TF call per process) before timing.
            warm = []
            for i in range(workers * 2):
                p = JobPayload.new("web", {}, image_sha256=f"warm{i}", want_marked=False)
                r.set(p.image_key, images[i % len(images)])
                q.enqueue(JOB_FUNCTION, p.to_dict(), job_id=p.request_id)
                warm.append(p.request_id)
            for rid in warm:
                r.blpop([result_key(rid)], timeout=120)
            ids = []
            start = time.perf_counter()
            with r.pipeline() as pipe:
                for i in range(jobs):
                    p = JobPayload.new("web", {}, image_sha256=f"j{i}", want_marked=True)
                    pipe.set(p.image_key, images[i % len(images)])
                    ids.append(p)
                pipe.execute()
            for p in ids:
                q.enqueue(JOB_FUNCTION, p.to_dict(), job_id=p.request_id)
            for p in ids:
                if r.blpop([result_key(p.request_id)], timeout=300) is None:
                    raise RuntimeError("a job got no verdict")
            return jobs / (time.perf_counter() - start)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path(os.environ.get("MODELS_DIR", REPO / "models")))
    ap.add_argument("--n", type=int, default=100, help="images for the latency run")
    ap.add_argument("--jobs", type=int, default=60, help="jobs per throughput run")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    from core.logs import configure_logging

    configure_logging("WARNING")
    images = sample_images(args.n)
    latency(args.models_dir, images)  # first: its peak RSS is then one worker's pipeline, not the styles' models
    call_styles(args.models_dir)
    if args.skip_throughput:
        return
    cores = os.cpu_count() or 1
    one = throughput(args.models_dir, images, args.jobs, workers=1, threads=cores)
    print(f"throughput 1 worker  (TF threads {cores}): {one:5.2f} images/s")
    one_t1 = throughput(args.models_dir, images, args.jobs, workers=1, threads=1)
    print(f"throughput 1 worker  (TF threads 1): {one_t1:5.2f} images/s")
    two = throughput(args.models_dir, images, args.jobs, workers=2, threads=1)
    print(f"throughput 2 workers (TF threads 1 each): {two:5.2f} images/s  "
          f"ratio vs 1 worker: {two / one:.2f}x (vs 1 worker 1 thread: {two / one_t1:.2f}x); {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
