"""Clips through the worker: latency of a 10-second 720p clip, peak memory on a 60-second 1080p clip, and
per-clip vs per-photo accuracy on the shared sample's TEST faces.

    .venv/bin/python bench/clip_latency.py [--models-dir models] [--n 6] [--faces-per-class 100]
                                           [--skip worker,memory,accuracy]

- latency: clips of 10 s, 1280x720, 30 frames/s, H.264 (a keyframe every second, like phones), one real face
  from the sample's valid split pasted at 300 px and moving; each through the worker's Pipeline (p50/p95 of the
  total, medians of decode / detect / classify), then the same clips as jobs through one real worker process
  on a private Redis (enqueue -> verdict, contact sheet included).
- memory: peak RSS (getrusage) of a fresh process that loads the pipeline, checks one photo, then one clip:
  10 s and 60 s of 1920x1080 at 30 frames/s; equal peaks = memory does not grow with the clip's length.
- accuracy: each test face once as a photo (160-220 px in a 1024x768 picture, JPEG q85: bench/worker_accuracy.py's
  "photo") and once as a 4-second clip (the same face and size, drifting and zooming in a 1024x768 frame, 8
  frames/s, H.264 crf 23 preset veryfast, about what a chat app sends); accuracy at the decision's threshold (a missed face counts as wrong), unsure share,
  accuracy when sure. Never used to tune anything.

Not a test; prints what it measured. Goals (issue 9): p50 <= 3 s for the 10-s 720p clip on 2 cores with one
worker; bounded memory on 60-s 1080p; per-clip accuracy >= per-photo accuracy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.private_redis import private_redis  # noqa: E402

DATA = Path(os.environ.get("FACES_DATA_DIR", REPO.parent / "shared/data/faces140k-sample/real-vs-fake"))


def background(size: tuple[int, int], rng: np.random.Generator):
    from PIL import Image, ImageFilter

    noise = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # face-free: smooth colour noise
    return Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))


def make_clip(face_path: Path, seconds: float, fps: int, size: tuple[int, int], face_px: int, seed: int,
              crf: int = 23, zoom: float = 0.1, preset: str = "ultrafast") -> bytes:
    """H.264 MP4 of one face drifting across a still background (about a face width over the clip) and zooming."""
    import av
    from PIL import Image

    rng = np.random.default_rng(seed)
    bg = background(size, rng)
    face = Image.open(face_path).convert("RGB")
    w, h = size
    n = int(round(seconds * fps))
    start = rng.uniform(0.1, 0.9, 2)
    end = np.clip(start + rng.uniform(-0.3, 0.3, 2), 0.05, 0.95)
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": preset, "crf": str(crf), "g": str(fps)}
        last_px, resized = None, None
        for i in range(n):
            a = i / max(1, n - 1)
            px = int(round(face_px * (1 + zoom * np.sin(2 * np.pi * a))))
            if px != last_px:
                resized, last_px = face.resize((px, px), Image.Resampling.LANCZOS), px  # as the photo is
            fx, fy = start + (end - start) * a
            frame = bg.copy()
            frame.paste(resized, (int(fx * (w - px)), int(fy * (h - px))))
            for packet in s.encode(av.VideoFrame.from_image(frame)):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return out.getvalue()


def faces(split: str, cls: str, n: int) -> list[Path]:
    return sorted((DATA / split / cls).glob("*.jpg"))[:n]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def latency(models_dir: Path, clips: list[bytes], n: int) -> None:
    from core.settings import Settings
    from inference_worker.pipeline import Pipeline

    pipe = Pipeline(Settings(models_dir=models_dir))
    pipe.check(clips[0], "warm-up", want_marked=True)
    rows = []
    for i in range(n):
        v = pipe.check(clips[i % len(clips)], f"r{i}", want_marked=True).verdict
        rows.append(v)
    total = [v.timings_ms["total"] for v in rows]
    parts = "  ".join(f"{k} {np.median([v.timings_ms[k] for v in rows]):.0f}" for k in ("decode", "detect", "classify"))
    v = rows[0]
    print(f"model {pipe.models.current.ident}  cores {os.cpu_count()}  TF threads default")
    print(f"pipeline 10 s 720p clip: n={n} p50 {pct(total, 50):.0f} ms  p95 {pct(total, 95):.0f} ms   "
          f"(medians: {parts} ms; {v.frames} frames sampled, {len(clips[0]) / 1e6:.1f} MB, "
          f"labels {sorted(set(r.label for r in rows))})  goal p50 <= 3000 ms")


def through_worker(models_dir: Path, clips: list[bytes], n: int, threads: int) -> None:
    """Enqueue -> verdict for clip jobs through one real worker on a private Redis."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from core.contract import JOB_FUNCTION, JobPayload
    from core.keys import result_key

    with private_redis() as url:
        r = redis.Redis.from_url(url)
        env = {**os.environ, "REDIS_URL": url, "MODELS_DIR": str(models_dir), "WORKER_TF_THREADS": str(threads),
               "LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "inference_worker", "--name", "clipbench"], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while r.scard("rq:workers") < 1:
                if proc.poll() is not None:
                    raise RuntimeError("the worker exited")
                time.sleep(0.2)
            q = Queue("checks", connection=r, serializer=JSONSerializer)

            def one(i: int) -> tuple[float, dict]:
                p = JobPayload.new("web", {}, image_sha256=f"clip{i}", want_marked=True)
                r.set(p.image_key, clips[i % len(clips)])
                t = time.perf_counter()
                q.enqueue(JOB_FUNCTION, p.to_dict(), job_id=p.request_id)
                got = r.blpop([result_key(p.request_id)], timeout=300)
                if got is None:
                    raise RuntimeError("a clip job got no verdict")
                return (time.perf_counter() - t) * 1000, json.loads(got[1])

            one(-1)  # warm-up (first TF calls of the process)
            results = [one(i) for i in range(n)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    wall = [ms for ms, _ in results]
    sheets = sum(1 for _, v in results if v.get("marked_image_key"))
    print(f"worker (1 process, TF threads {threads}) 10 s 720p clip: n={n} enqueue->verdict p50 {pct(wall, 50):.0f} ms "
          f"p95 {pct(wall, 95):.0f} ms; contact sheets {sheets}/{n}")


_RSS_CHILD = r"""
import io, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from core.logs import configure_logging
configure_logging("WARNING")
from core.settings import Settings
from inference_worker.pipeline import Pipeline
from PIL import Image
pipe = Pipeline(Settings(models_dir=Path(sys.argv[2])))
face = Image.open(sys.argv[3]).convert("RGB")
canvas = Image.new("RGB", (1920, 1080), (90, 110, 130)); canvas.paste(face, (800, 400))
buf = io.BytesIO(); canvas.save(buf, "JPEG", quality=90)
pipe.check(buf.getvalue(), "photo", want_marked=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
data = Path(sys.argv[4]).read_bytes()
t = time.perf_counter()
v = pipe.check(data, "clip", want_marked=True).verdict
print(json.dumps({"before": before, "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "ms": (time.perf_counter() - t) * 1000, "label": v.label, "frames": v.frames,
                  "timings": v.timings_ms, "mb": len(data) / 1e6}))
"""


def memory(models_dir: Path, face: Path, tmp: Path) -> None:
    for seconds in (10, 60):
        t = time.perf_counter()
        data = make_clip(face, seconds, 30, (1920, 1080), 420, seed=seconds, crf=28)
        path = tmp / f"clip-{seconds}s-1080p.mp4"
        path.write_bytes(data)
        made = time.perf_counter() - t
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(REPO), str(models_dir), str(face), str(path)],
                             capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        path.unlink()
        if out.returncode != 0:
            print(f"memory {seconds} s 1080p: the child failed:\n{out.stderr[-2000:]}")
            continue
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"memory {seconds:>2} s 1920x1080 30 fps ({m['mb']:.1f} MB, made in {made:.0f} s): peak RSS "
              f"{m['after']:.0f} MiB (after model + one photo: {m['before']:.0f} MiB, +{m['after'] - m['before']:.0f}); "
              f"checked in {m['ms']:.0f} ms ({m['frames']} frames, decode {m['timings']['decode']:.0f} ms), "
              f"label {m['label']}")


def accuracy(models_dir: Path, per_class: int) -> None:
    from PIL import Image, ImageFilter

    from core.settings import Settings
    from inference_worker.pipeline import Pipeline
    from trainer.calibration import confidently_wrong
    from trainer.report import roc_auc

    if not (DATA / "test" / "real").is_dir():
        print(f"accuracy: unavailable (no test split at {DATA})")
        return
    pipe = Pipeline(Settings(models_dir=models_dir))
    clf = pipe.models.current
    items = [(f, y) for y, cls in ((0, "real"), (1, "fake")) for f in faces("test", cls, per_class)]
    rows: dict[str, list[tuple[int, float | None, str, float]]] = {"photo": [], "clip": []}
    t0 = time.perf_counter()
    for i, (f, y) in enumerate(items):
        rng = np.random.default_rng(i)
        size = int(rng.integers(160, 221))
        # Photo: bench/worker_accuracy.py's "photo" variant (busy background, JPEG q85).
        noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        canvas = Image.fromarray(noise).resize((1024, 768), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))
        face = Image.open(f).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        canvas.paste(face, (int(rng.integers(0, 1024 - size)), int(rng.integers(0, 768 - size))))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=85)
        clip = make_clip(f, 4, 8, (1024, 768), size, seed=i, preset="veryfast")
        for kind, data in (("photo", buf.getvalue()), ("clip", clip)):
            result = pipe.check(data, f"{kind}-{i}")
            v = result.verdict
            if v.faces:
                k = max(range(len(v.faces)), key=lambda j: (v.faces[j].frames, v.faces[j].size_px))
                face_v = v.faces[k]
                d = clf.decision_clip if kind == "clip" else clf.decision_for(face_v.realigned)
                rows[kind].append((y, face_v.p_fake, face_v.label, d.threshold))
            else:
                rows[kind].append((y, None, "no_face", 0.5))
    print(f"accuracy on test faces ({per_class} per class, {time.perf_counter() - t0:.0f} s); clip decision: "
          f"T {clf.decision_clip.temperature} threshold {clf.decision_clip.threshold} band "
          f"[{clf.decision_clip.unsure_lo}, {clf.decision_clip.unsure_hi}]")
    print(f"{'input':<6} {'n':>4} {'found':>6} {'acc':>6} {'auc':>6} {'real->fake':>10} {'fake->real':>10} {'unsure':>7} "
          f"{'acc|sure':>9} {'conf.wrong':>10}")
    for kind, rs in rows.items():
        y = np.array([r[0] for r in rs])
        found = np.array([r[1] is not None for r in rs])
        p = np.array([r[1] if r[1] is not None else np.nan for r in rs])
        pred = np.where(found, (np.nan_to_num(p) >= np.array([r[3] for r in rs])).astype(int), -1)
        sure = np.array([r[2] in ("fake", "real") for r in rs])
        unsure = float(np.mean([r[2] == "unsure" for r in rs]))
        acc_sure = float((pred[sure] == y[sure]).mean()) if sure.any() else float("nan")
        wrong = confidently_wrong(np.nan_to_num(p, nan=0.5), y)
        auc = roc_auc(p[found], y[found]) if found.any() else float("nan")
        print(f"{kind:<6} {len(rs):>4} {found.mean():>6.1%} {(pred == y).mean():>6.1%} {auc:>6.3f} "
              f"{int(((pred == 1) & (y == 0)).sum()):>10} {int(((pred == 0) & (y == 1)).sum()):>10} {unsure:>7.1%} "
              f"{acc_sure:>9.1%} {wrong:>10.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path(os.environ.get("MODELS_DIR", REPO / "models")))
    ap.add_argument("--n", type=int, default=6, help="timed runs of the 10-s 720p clip (pipeline and worker)")
    ap.add_argument("--faces-per-class", type=int, default=100, help="test faces per class for the accuracy part")
    ap.add_argument("--skip", default="", help="comma-separated: worker, memory, accuracy")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    from core.logs import configure_logging

    configure_logging("WARNING")
    t = time.perf_counter()
    clips = [make_clip(f, 10, 30, (1280, 720), 300, seed=i) for i, f in enumerate(faces("valid", "real", 3))]
    print(f"made {len(clips)} clips of 10 s 1280x720 30 fps in {time.perf_counter() - t:.0f} s "
          f"({np.mean([len(c) for c in clips]) / 1e6:.1f} MB each)")
    latency(args.models_dir, clips, args.n)
    if "worker" not in skip:
        through_worker(args.models_dir, clips, args.n, threads=os.cpu_count() or 1)
    if "memory" not in skip:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            memory(args.models_dir, faces("valid", "fake", 1)[0], Path(tmp))
    if "accuracy" not in skip:
        accuracy(args.models_dir, args.faces_per_class)


if __name__ == "__main__":
    main()
