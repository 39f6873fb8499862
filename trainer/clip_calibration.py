"""`python -m trainer calibrate-clips`: the calibration and decision for people in clips.

The worker judges a person in a clip on the mean of their per-frame logits (inference_worker/clips.py). That
aggregate, over frames that went through video compression, is not the single re-aligned photo face the
re-aligned calibration was fitted on, so it gets its own temperature, threshold and unsure band, fitted on
clips made from the VALID split's faces (never test):

- each clip shows one face pasted into a random canvas (framing.py's idea: smooth colour-noise background,
  face 120-240 px, canvas 1.2-1.8 times the face), drifting and zooming (+-10 %) over 2.5-3.5 s, each frame
  JPEG-recompressed at a random quality (75-95), encoded as an H.264 MP4 at 8-12 frames/s and crf 20-28 (a
  chat app's quality, with inter-frame compression), long enough for the worker to sample 6-8 frames;
- every clip goes through the worker's own clip path (`clips.check_clip`: decoding, detector batches,
  alignment, linking, the model's raw outputs), and the person seen in the most frames gives one aggregate;
  clips where no face was found, or whose face the worker would call too small to judge, are left out;
- temperature (`fit_temperature` on the aggregates), threshold (`choose_threshold`) and unsure band
  (`choose_unsure_band` with the model's own target accuracy) are fitted, then written to the model's
  metadata.json as `calibration_clip` (method `mean_logit`) and `decision_clip`, with `metrics.valid_clip`.

Workers read them at model load: restart them (or promote a new model) to apply a new clip calibration.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from trainer.calibration import (apply_temperature, choose_threshold, choose_unsure_band,
                                 expected_calibration_error, fit_temperature)
from trainer.data import Split, scan_split
from trainer.framing import CANVAS_RATIO, JPEG_Q
from trainer.registry import METADATA_FILE, read_metadata, utc_now, write_json_atomic

log = logging.getLogger("trainer.clip_calibration")

FRAMES = (6, 8)  # frames the worker checks per clip (sampled at CLIP_SAMPLE_FPS from a longer clip)
# Clips are encoded the way phones and chat apps send them: 8-12 frames/s, inter-frame H.264 at a chat app's
# quality, so that the sampled frames carry real video compression (which wipes out some of the GAN texture),
# not the near-intra quality of a 2-frames/s clip.
ENCODE_FPS = (8, 12)
CRF = (20, 28)
# Pasted face size: MTCNN's box is ~0.55 of it, and the worker never judges a face whose box is under 64 px, so
# framing.py's 96-208 px would leave a third of the clips out; clips' faces start a little larger here.
FACE_PX = (120, 240)
SAMPLE_FPS = 2  # = the worker's default CLIP_SAMPLE_FPS
ZOOM = 0.10
DEFAULT_TARGET_ACCURACY = 0.98


def clip_frames(face_bytes: bytes, rng: np.random.Generator, fps: int) -> list[Any]:
    """The frames (PIL RGB, one even size) of one synthetic clip of this face at `fps`, long enough for the
    worker to sample 6-8 of them."""
    from PIL import Image, ImageFilter

    with Image.open(io.BytesIO(face_bytes)) as im:
        face = im.convert("RGB")
    checked = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
    n = int(round((checked - 1) / SAMPLE_FPS * fps)) + 1  # the worker samples 1 + floor(span * 2) frames
    s = int(rng.integers(FACE_PX[0], FACE_PX[1] + 1))
    side = int(s * rng.uniform(*CANVAS_RATIO) * (1 + ZOOM))
    w, h = side, max(int(side * rng.uniform(0.75, 1.33)), int(s * (1 + ZOOM)) + 4)
    w, h = w + (w & 1), h + (h & 1)  # H.264 4:2:0 wants even sides
    noise = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    background = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    z0, z1 = rng.uniform(1 - ZOOM, 1 + ZOOM, 2)
    start, end = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)  # where the face is, as a share of the free room
    frames = []
    for i in range(n):
        a = i / (n - 1)
        px = max(16, int(round(s * (z0 + (z1 - z0) * a))))
        fx, fy = start + (end - start) * a
        x, y = int(fx * max(0, w - px)), int(fy * max(0, h - px))
        canvas = background.copy()
        canvas.paste(face.resize((px, px), Image.Resampling.LANCZOS), (x, y))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=int(rng.integers(JPEG_Q[0], JPEG_Q[1] + 1)))
        with Image.open(buf) as im:
            frames.append(im.convert("RGB"))
    return frames


def encode_mp4(frames: list[Any], fps: int, crf: int) -> bytes:
    """H.264 MP4 bytes of the frames, in memory."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_image(f)):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return out.getvalue()


def clip_aggregates(folder: Path, split: Split, seed: int = 0, detector: Any = None, progress_every: int = 50
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(mean logits, labels, left-out counts) of one synthetic clip per face of `split`, through the worker."""
    from core.settings import Settings
    from inference_worker.classifier import Classifier
    from inference_worker.clips import check_clip
    from inference_worker.detector import Detector
    from inference_worker.faces import MIN_FACE_PX

    clf = Classifier(folder)
    # The worker's clip path on this model (promoted or not) with the default clip settings.
    pipe = SimpleNamespace(settings=Settings(), models=SimpleNamespace(current=clf), detector=detector or Detector())
    z, ys = [], []
    left_out = {"no_face": 0, "too_small": 0, "unreadable": 0}
    t0 = time.perf_counter()
    for i, (path, y) in enumerate(zip(split.paths, split.labels)):
        rng = np.random.default_rng([seed, int(hashlib.sha256(Path(path).name.encode()).hexdigest()[:12], 16)])
        fps = int(rng.integers(ENCODE_FPS[0], ENCODE_FPS[1] + 1))
        data = encode_mp4(clip_frames(Path(path).read_bytes(), rng, fps), fps, int(rng.integers(CRF[0], CRF[1] + 1)))
        result = check_clip(pipe, data, f"calibrate-{i}")  # type: ignore[arg-type]
        v = result.verdict
        if v.label == "unreadable":
            left_out["unreadable"] += 1
        elif not v.faces:
            left_out["no_face"] += 1
        else:
            k = max(range(len(v.faces)), key=lambda j: v.faces[j].frames)  # the pasted face: seen the most
            if v.faces[k].size_px < MIN_FACE_PX:
                left_out["too_small"] += 1
            else:
                z.append(result.mean_logits[k])
                ys.append(y)
        if progress_every and (i + 1) % progress_every == 0:
            log.info("clips=%d/%d used=%d elapsed_s=%.0f", i + 1, len(split), len(z), time.perf_counter() - t0)
    return np.array(z, np.float64), np.array(ys, np.int64), left_out


def calibrate_clips(folder: Path, data_dir: Path, per_class: int, seed: int = 0, detector: Any = None
                    ) -> dict[str, Any]:
    """Fit and write `calibration_clip` / `decision_clip` (+ `metrics.valid_clip`) into folder/metadata.json."""
    from trainer.report import classification_metrics

    split = scan_split(data_dir, "valid", per_class)
    meta = read_metadata(folder)
    target = float((meta.get("train_config") or {}).get("unsure_target_accuracy", DEFAULT_TARGET_ACCURACY))
    t0 = time.perf_counter()
    z, y, left_out = clip_aggregates(folder, split, seed, detector)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"too few usable clips to calibrate on ({len(y)}; left out {left_out})")
    p_raw = 1.0 / (1.0 + np.exp(-z))  # the aggregate as a probability: fit_temperature works on logit(p_raw) = z
    temperature = fit_temperature(p_raw, y)
    p = apply_temperature(p_raw, temperature)
    threshold = choose_threshold(p, y)
    band, band_stats = choose_unsure_band(p, y, threshold, target)
    meta = read_metadata(folder)  # again: the least time between reading and replacing the file
    meta["calibration_clip"] = {
        "method": "mean_logit", "temperature": round(temperature, 5),
        "ece_valid_before": round(expected_calibration_error(p_raw, y), 4),
        "ece_valid_after": round(expected_calibration_error(p, y), 4),
        "clips": int(len(y)), "frames_per_clip": list(FRAMES), "left_out": left_out,
        "fitted_on": f"valid faces pasted into moving, zooming canvases ({FACE_PX[0]}-{FACE_PX[1]} px, every frame "
                     f"JPEG q{JPEG_Q[0]}-{JPEG_Q[1]}), H.264 MP4 at {ENCODE_FPS[0]}-{ENCODE_FPS[1]} frames/s crf "
                     f"{CRF[0]}-{CRF[1]}, through the worker's clip path; the aggregate is the mean of a person's "
                     "per-frame logits",
        "encoding": {"fps": list(ENCODE_FPS), "crf": list(CRF), "preset": "veryfast"},
        "seed": seed, "calibrated_at": utc_now(),
    }
    meta["decision_clip"] = {"threshold": threshold, "unsure_band": band, **band_stats}
    meta.setdefault("metrics", {})["valid_clip"] = classification_metrics(p, y, threshold, band, p_raw)
    write_json_atomic(folder / METADATA_FILE, meta)
    log.info("calibrated clips=%d T=%.3f threshold=%s band=%s wall_s=%.0f", len(y), temperature, threshold, band,
             time.perf_counter() - t0)
    return meta
