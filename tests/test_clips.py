"""Clips (videos, animated GIF / WebP) through the worker: decoding and sampling, limits, linking people across
frames, one verdict per person, the contact sheet; the real Pipeline with tiny models whose answer is fixed
(`always_fake` / `always_real`: a huge output bias), and one clip through a real RQ worker.

The clips are made here from the committed faces (tests/clipmaker.py), small and short so that all of this
stays fast.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from rq import Queue
from rq.serializers import JSONSerializer

from core.contract import JOB_FUNCTION, QUEUE_NAME, JobPayload, Verdict
from core.keys import result_key
from core.settings import Settings
from inference_worker import video
from inference_worker.classifier import Decision, mean_logit
from inference_worker.decode import Unreadable
from inference_worker.faces import Face
from tests.clipmaker import frame_times, frames, make_clip, truncated
from tests.fixtures_worker import write_tiny_model

REPO = Path(__file__).resolve().parent.parent
FACES = REPO / "tests" / "fixtures" / "faces" / "real-vs-fake"
REAL = FACES / "valid" / "real" / "00002.jpg"
FAKE = FACES / "valid" / "fake" / "00BYVMEI3I.jpg"
SIZE = (320, 240)
FACE_PX = 150  # the detector's box is about 0.5-0.6 of the pasted square: ~80 px, above MIN_FACE_PX
LIMITS = video.Limits.from_settings(Settings())


def clip(faces, seconds=2.0, fps=6, **kw) -> bytes:
    return make_clip(faces, seconds=seconds, fps=fps, size=kw.pop("size", SIZE), face_px=kw.pop("face_px", FACE_PX),
                     **kw)


# ---------------------------------------------------------------- sampling and decoding (no model)

def test_sample_plan_spreads_frames_evenly_within_both_caps():
    times = [i / 30 for i in range(300)]  # 10 s at 30 fps
    plan = video.sample_plan(times, max_fps=2, max_frames=32)
    assert len(plan) == 20 and plan[0] == 0 and plan[-1] == 299
    gaps = np.diff([times[i] for i in plan])
    assert gaps.min() >= 0.5 - 1 / 30 and gaps.max() - gaps.min() <= 2 / 30 + 1e-9
    long = [i / 30 for i in range(1800)]  # 60 s: the count cap
    plan = video.sample_plan(long, max_fps=2, max_frames=32)
    assert len(plan) == 32 and plan[0] == 0 and plan[-1] == 1799 and plan == sorted(set(plan))
    assert video.sample_plan([0.0, 0.1, 0.2], 2, 32) == [0]  # 0.2 s: one frame
    assert video.sample_plan([0.0, 1.0], 2, 32) == [0, 1]
    assert video.sample_plan([0.0, 1.0, 2.0], 2, 32) == [0, 1, 2]  # never more than the frames
    assert video.sample_plan([0.0, 0.01, 0.02, 5.0], 2, 32) == [0, 3]  # uneven: no burst of near-repeats
    assert video.sample_plan([], 2, 32) == []


@pytest.mark.parametrize("fmt", ["mp4", "mov", "mkv", "webm", "gif", "webp"])
def test_each_format_decodes_to_the_planned_frames_in_order(fmt):
    data = clip([REAL], seconds=3, fps=5, fmt=fmt)
    decoded = video.decode_clip(data, LIMITS)
    info = decoded.info
    assert info.format == {"mkv": "MKV", "webm": "WEBM"}.get(fmt, fmt.upper())
    assert (info.width, info.height) == SIZE and info.frames == 15 and abs(info.duration_s - 3.0) < 0.05
    assert abs(info.fps - 5) < 0.05 and decoded.notes == []
    # 3 s at 2 frames/s: 1 + floor(2.8 * 2) = 6 frames from the first to the last, oldest first.
    got = [(s.index, s.frame_no, s.time_s) for s in decoded.samples]
    assert [g[0] for g in got] == list(range(6)) and [g[1] for g in got] == [0, 3, 6, 8, 11, 14]
    # At most 2 per second over the clip; each the frame nearest its ideal time, so a gap may be a frame shorter.
    assert (len(got) - 1) / (got[-1][2] - got[0][2]) <= 2
    assert all(b[2] - a[2] >= 0.5 - 1 / 5 - 1e-6 for a, b in zip(got, got[1:]))
    if fmt not in ("webp",):  # PyAV reads the others: the times are the frames' own
        times = frame_times(data)
        assert [round(s.time_s, 3) for s in decoded.samples] == [round(times[i], 3) for i in (0, 3, 6, 8, 11, 14)]
    # The sampled picture is the frame at that time (not a neighbour): compare with the source frame.
    source = frames([REAL], 3, 5, SIZE, FACE_PX)
    for s in decoded.samples:
        assert s.image.mode == "RGB" and s.image.size == SIZE
        diff = np.abs(np.asarray(s.image, float) - np.asarray(source[s.frame_no], float)).mean()
        assert diff < (22 if fmt == "gif" else 8), (fmt, s.frame_no, diff)


def test_phone_rotation_tag_is_applied():
    # A portrait clip stored as landscape pixels with a 90-degree display matrix, as phones record.
    data = clip([REAL], seconds=1, fps=4, size=(240, 320), rotation=90)
    decoded = video.decode_clip(data, LIMITS)
    assert (decoded.info.width, decoded.info.height) == (240, 320)
    upright = frames([REAL], 1, 4, (240, 320), FACE_PX)[0]
    first = decoded.samples[0].image
    assert first.size == (240, 320)
    assert np.abs(np.asarray(first, float) - np.asarray(upright, float)).mean() < 8


def test_long_clip_seeks_to_keyframes_instead_of_decoding_everything(monkeypatch):
    data = clip([REAL], seconds=100, fps=6, size=(160, 120), face_px=80)  # a keyframe every second
    reader = video.open_clip(data, LIMITS)
    seeking = [(s.frame_no, np.asarray(s.image)) for s in reader.samples()]
    assert reader.info.frames == 600 and len(seeking) == 32
    assert reader.decoded < 0.4 * 600, reader.decoded  # the stretches between keyframes were skipped
    monkeypatch.setattr(video, "SEEK_MIN_SKIP", 10**9)  # the same clip decoded frame after frame
    plain = video.open_clip(data, LIMITS)
    sequential = [(s.frame_no, np.asarray(s.image)) for s in plain.samples()]
    assert plain.decoded == 600
    assert [f for f, _ in seeking] == [f for f, _ in sequential]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(seeking, sequential))


def _reason(data: bytes, limits: video.Limits = LIMITS) -> str:
    with pytest.raises(Unreadable) as e:
        video.decode_clip(data, limits)
    return e.value.reason


def test_each_limit_is_refused_with_its_reason():
    data = clip([REAL], seconds=2, fps=8)  # 16 frames of 320 x 240, 2 s
    assert _reason(data, dataclasses.replace(LIMITS, max_bytes=len(data) - 1)) == "too_large_bytes"
    assert _reason(data, dataclasses.replace(LIMITS, max_seconds=1.5)) == "clip_too_long"
    assert _reason(data, dataclasses.replace(LIMITS, max_pixels=320 * 240 - 1)) == "too_many_pixels"
    assert _reason(data, dataclasses.replace(LIMITS, max_frames=15)) == "too_many_frames"
    video.decode_clip(data, dataclasses.replace(LIMITS, max_bytes=len(data), max_seconds=2.0, max_pixels=320 * 240,
                                                max_frames=16))  # exactly at every limit: accepted
    # WebM and animated WebP keep no frame count in their headers: the packets / chunks are counted.
    for fmt in ("webm", "webp", "gif"):
        other = clip([REAL], seconds=2, fps=8, fmt=fmt)
        assert _reason(other, dataclasses.replace(LIMITS, max_frames=15)) == "too_many_frames", fmt
        assert _reason(other, dataclasses.replace(LIMITS, max_seconds=1.5)) == "clip_too_long", fmt
        assert _reason(other, dataclasses.replace(LIMITS, max_pixels=1000)) == "too_many_pixels", fmt


def test_broken_clips_are_unreadable_with_a_reason():
    data = clip([REAL], seconds=2, fps=6)
    assert _reason(truncated(data)) == "truncated"  # the movie header (at the end) never came
    assert _reason(data[:32] + os.urandom(4000)) == "not_an_image"  # an MP4 header, then noise
    assert _reason(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000)) == "not_an_image"
    assert _reason(b"\x1a\x45\xdf\xa3" + os.urandom(3000)) == "not_an_image"  # Matroska magic, then noise
    assert _reason(b"GIF89a\x40\x01\xf0\x00" + os.urandom(500)) in ("not_an_image", "truncated")  # 320 x 240
    webp = clip([REAL], seconds=2, fps=6, fmt="webp")
    assert _reason(truncated(webp)) == "truncated"
    # A clip whose header comes first plays up to the cut: what is there is checked, and the user is told.
    streamed = clip([REAL], seconds=3, fps=6, fragmented=True)
    cut = video.decode_clip(truncated(streamed, 0.5), LIMITS)
    assert 1 <= len(cut.samples) < 6 and cut.notes == ["truncated"]


# ---------------------------------------------------------------- linking people across frames

def _det(frame, box, sig=0.0):
    from inference_worker.clips import Detection
    return Detection(frame, box, min(box[2], box[3]), 0.99, True, np.full((16, 16, 3), sig, np.float32))


def test_link_follows_overlapping_boxes_and_splits_on_a_cut_to_another_face():
    from inference_worker.clips import link

    a = [(100 + 8 * i, 50, 80, 80) for i in range(6)]  # one person drifting right
    b = (10, 10, 60, 60)
    per_frame = [[_det(0, a[0]), _det(0, b, 100)], [_det(1, a[1])], [], [], [_det(4, a[4]), _det(4, b, 100)],
                 [_det(5, a[5], 200)]]
    tracks = link(per_frame)
    # a: frames 0, 1, 4 (unseen for two frames, re-linked); b re-linked after 3 frames; frame 5's face is in
    # a's place but looks entirely different: a new person.
    assert [[d.frame for d in t.detections] for t in tracks] == [[0, 1, 4], [0, 4], [5]]
    far = [[_det(0, a[0])], [], [], [], [], [_det(5, a[0])]]  # unseen for 4 sampled frames: a new track
    assert len(link(far)) == 2


def test_clip_decision_and_mean_logit_aggregate():
    meta = {"calibration": {"temperature": 1.5}, "decision": {"threshold": 0.5, "unsure_band": [0.4, 0.6]},
            "calibration_realigned": {"temperature": 2.0}, "decision_realigned": {"threshold": 0.4,
                                                                                   "unsure_band": [0.3, 0.7]}}
    assert Decision.for_clips(meta) == Decision.from_metadata(meta, realigned=True)  # no clip calibration yet
    meta["calibration_clip"] = {"method": "mean_logit", "temperature": 3.0}
    meta["decision_clip"] = {"threshold": 0.45, "unsure_band": [0.2, 0.8]}
    d = Decision.for_clips(meta)
    assert (d.temperature, d.threshold, d.unsure_lo, d.unsure_hi) == (3.0, 0.45, 0.2, 0.8)
    raw = np.array([0.9, 0.99, 0.2])
    z = np.mean(np.log(raw / (1 - raw)))
    assert mean_logit(raw) == pytest.approx(z)
    assert d.aggregate(raw) == pytest.approx(1 / (1 + np.exp(-z / 3.0)))
    assert d.aggregate(np.array([0.9])) == pytest.approx(float(d.calibrate(np.array([0.9]))[0]))  # one frame


# ---------------------------------------------------------------- the real Pipeline

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clip-models")
    write_tiny_model(d, "always_real", "1", bias=-12.0, promote=False)
    write_tiny_model(d, "always_fake", "1", bias=12.0, promote=True)
    return d


@pytest.fixture(scope="module")
def fake_pipe(models, detector):
    from inference_worker.pipeline import Pipeline
    return Pipeline(Settings(models_dir=models), detector=detector)


@pytest.fixture(scope="module")
def real_pipe(models, detector, tmp_path_factory):
    from inference_worker.pipeline import Pipeline
    d = tmp_path_factory.mktemp("clip-models-real")
    write_tiny_model(d, "always_real", "1", bias=-12.0)
    return Pipeline(Settings(models_dir=d), detector=detector)


def _check(pipe, data, settings=None, marked=False):
    if settings is not None:
        saved, pipe.settings = pipe.settings, settings
    try:
        return pipe.check(data, "clip-test", want_marked=marked)
    finally:
        if settings is not None:
            pipe.settings = saved


def test_fake_clip_one_person_every_frame_and_a_contact_sheet(fake_pipe):
    result = _check(fake_pipe, clip([FAKE], seconds=3, fps=6), marked=True)
    v = result.verdict
    assert v.label == "fake" and v.frames == 6 and v.reasons == []
    assert len(v.faces) == 1 and v.faces[0].frames == 6 and v.faces[0].label == "fake"
    assert v.faces[0].p_fake == v.p_fake > 0.99 and v.faces[0].size_px >= 64 and v.faces[0].realigned
    x, y, w, h = v.faces[0].box
    assert 0 <= x < x + w <= SIZE[0] and 0 <= y < y + h <= SIZE[1]
    assert v.image == {"width": 320, "height": 240, "format": "MP4", "duration_s": 3.0, "fps": 6.0}
    assert {"decode", "detect", "classify", "total"} <= set(v.timings_ms)
    assert result.mean_logits is not None and result.mean_logits[0] > 5
    # The contact sheet: 6 frames in 3 x 2 cells of at most 320 px, boxed in the fake colour.
    from inference_worker.marking import COLOURS, SHEET_GAP, SHEET_MAX_BYTES
    sheet = Image.open(io.BytesIO(result.marked))
    assert sheet.format == "JPEG" and len(result.marked) <= SHEET_MAX_BYTES
    assert sheet.size == (3 * 320 + 2 * SHEET_GAP, 2 * 240 + SHEET_GAP)
    red = np.all(np.abs(np.asarray(sheet.convert("RGB"), int) - COLOURS["fake"]) < 40, axis=-1)
    assert red.sum() > 500  # boxes and label backgrounds


def test_real_clip(real_pipe):
    v = _check(real_pipe, clip([REAL], seconds=2, fps=6, fmt="webm")).verdict
    assert v.label == "real" and v.frames == 4 and [f.frames for f in v.faces] == [4] and v.image["format"] == "WEBM"


def test_cut_from_one_face_to_another_gives_two_people(fake_pipe):
    # The second face appears where the first one was: linked by overlap alone they would be one person.
    result = _check(fake_pipe, clip([REAL, FAKE], seconds=4, fps=6), marked=True)
    v = result.verdict
    assert v.frames == 8 and len(v.faces) == 2 and "several_faces" in v.reasons
    assert [f.frames for f in v.faces] == [4, 4] and v.label == "fake"
    assert len(result.mean_logits) == 2
    assert Image.open(io.BytesIO(result.marked)).size[0] == 3 * 320 + 2 * 4


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_gif_and_webp_are_clips(fake_pipe, fmt):
    v = _check(fake_pipe, clip([FAKE], seconds=2, fps=5, fmt=fmt)).verdict
    assert v.image["format"] == fmt.upper() and v.frames == 4
    assert v.label == "fake" and [f.frames for f in v.faces] == [4] and "animated_first_frame" not in v.reasons


def test_clip_without_a_face(fake_pipe):
    result = _check(fake_pipe, clip([None], seconds=2, fps=6), marked=True)
    assert result.verdict.label == "no_face" and result.verdict.frames == 4 and result.marked is None


def test_sampling_caps_through_the_pipeline(fake_pipe):
    long = clip([None], seconds=20, fps=4, size=(160, 120))  # 80 frames: more than 32 at 2 per second
    assert _check(fake_pipe, long).verdict.frames == 32
    few = dataclasses.replace(fake_pipe.settings, clip_sample_frames=5)
    assert _check(fake_pipe, long, settings=few).verdict.frames == 5
    slow = dataclasses.replace(fake_pipe.settings, clip_sample_fps=0.5)
    assert _check(fake_pipe, long, settings=slow).verdict.frames == 10  # 1 + floor(19.75 s x 0.5)


@pytest.mark.parametrize("limit,reason", [("max_video_bytes", "too_large_bytes"), ("max_video_s", "clip_too_long"),
                                          ("max_video_pixels", "too_many_pixels"),
                                          ("max_video_frames", "too_many_frames")])
def test_limits_through_the_pipeline(fake_pipe, limit, reason):
    data = clip([FAKE], seconds=2, fps=6)
    value = {"max_video_bytes": 1000, "max_video_s": 1.0, "max_video_pixels": 320 * 200, "max_video_frames": 10}[limit]
    v = _check(fake_pipe, data, settings=dataclasses.replace(fake_pipe.settings, **{limit: value})).verdict
    assert v.label == "unreadable" and v.reasons == [reason] and v.frames == 0 and v.faces == []
    assert v.model["name"] == "always_fake" and "total" in v.timings_ms


@pytest.mark.parametrize("case", ["truncated", "random_after_mp4_header"])
def test_broken_clips_through_the_pipeline(fake_pipe, case):
    data = clip([FAKE], seconds=2, fps=6)
    data = truncated(data) if case == "truncated" else data[:40] + os.urandom(20_000)
    v = _check(fake_pipe, data).verdict
    assert v.label == "unreadable" and v.reasons == [{"truncated": "truncated"}.get(case, "not_an_image")]


class _ScriptedDetector:
    """One steady face in every frame plus, in one frame only, a spurious 'face' elsewhere."""

    device = "none"

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _face(x: float, y: float, s: float) -> Face:
        marks = {"left_eye": (x + 0.3 * s, y + 0.4 * s), "right_eye": (x + 0.7 * s, y + 0.4 * s),
                 "nose": (x + 0.5 * s, y + 0.6 * s), "mouth_left": (x + 0.35 * s, y + 0.8 * s),
                 "mouth_right": (x + 0.65 * s, y + 0.8 * s)}
        return Face((round(x), round(y), round(s), round(s)), 0.99, marks)

    def detect(self, image):
        self.calls += 1
        faces = [self._face(120, 60, 100)]
        if self.calls == 3:
            faces.append(self._face(10, 150, 70))
        return faces


def test_a_face_seen_in_one_frame_only_is_dropped_as_noise(models):
    from inference_worker.pipeline import Pipeline
    pipe = Pipeline(Settings(models_dir=models), detector=_ScriptedDetector())
    v = pipe.check(clip([FAKE], seconds=3, fps=4, moving=False), "noise").verdict  # the scripted box stays put
    assert v.frames == 6 and len(v.faces) == 1 and v.faces[0].frames == 6 and "several_faces" not in v.reasons


def test_clip_calibration_from_metadata_is_used(tmp_path, detector):
    from inference_worker.pipeline import Pipeline
    folder = write_tiny_model(tmp_path, "with-clip-cal", bias=1.0)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["calibration_clip"] = {"method": "mean_logit", "temperature": 4.0, "clips": 10}
    meta["decision_clip"] = {"threshold": 0.5, "unsure_band": [0.1, 0.9]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    pipe = Pipeline(Settings(models_dir=tmp_path), detector=detector)
    result = pipe.check(clip([REAL], seconds=2, fps=6), "cal")
    face = result.verdict.faces[0]
    assert face.p_fake == pytest.approx(1 / (1 + np.exp(-result.mean_logits[0] / 4.0)), abs=1e-4)
    assert face.label == "unsure"  # inside the clip band


# ---------------------------------------------------------------- through a real worker, and the CLI

def test_clip_job_through_a_real_worker(redis_url, models, start_worker):
    start_worker(redis_url, models)
    r = redis.Redis.from_url(redis_url)
    data = clip([FAKE], seconds=2, fps=6, fmt="webm")
    payload = JobPayload.new("web", {}, image_sha256="c1" * 32)
    r.set(payload.image_key, data, ex=600)
    Queue(QUEUE_NAME, connection=r, serializer=JSONSerializer).enqueue(JOB_FUNCTION, payload.to_dict(),
                                                                         job_id=payload.request_id)
    got = r.blpop([result_key(payload.request_id)], timeout=90)
    assert got is not None, "no verdict for the clip"
    v = Verdict.from_dict(json.loads(got[1]))
    assert v.label == "fake" and v.frames == 4 and v.faces[0].frames == 4
    sheet = r.get(v.marked_image_key)
    assert sheet is not None and Image.open(io.BytesIO(sheet)).format == "JPEG"
    assert r.get(payload.image_key) is None


def test_check_cli_shows_frames_for_a_clip(models, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip([FAKE], seconds=2, fps=6))
    env = {**os.environ, "MODELS_DIR": str(models), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "inference_worker", "check", str(path), "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout)[0]
    assert row["label"] == "fake" and row["frames"] == 4 and row["faces"][0]["frames"] == 4
    table = subprocess.run([sys.executable, "-m", "inference_worker", "check", str(path)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    header, line = table.stdout.splitlines()[:2]
    assert "frames" in header and line.split()[1:5] == ["fake", "1.000", "1", "4"], table.stdout
    assert time.monotonic() - t0 < 120


# ---------------------------------------------------------------- the clip calibration (trainer)

def test_calibrate_clips_command_fits_on_valid_clips_and_writes_the_metadata(tmp_path, data_dir, capsys):
    from inference_worker.classifier import Classifier
    from tests.fixtures_model import make_tiny_dataset
    from trainer.cli import main

    models = tmp_path / "models"
    folder = write_tiny_model(models, "tiny-cal", bias=0.7)
    before = json.loads((folder / "metadata.json").read_text())
    valid_only = make_tiny_dataset(data_dir, tmp_path / "data", per_class=4, splits=("valid",))  # no test split
    assert main(["calibrate-clips", "--model", "tiny-cal", "--models-dir", str(models), "--data-dir",
                 str(valid_only), "--clips-per-class", "4"]) == 0
    meta = json.loads((folder / "metadata.json").read_text())
    cal, dec = meta["calibration_clip"], meta["decision_clip"]
    assert cal["method"] == "mean_logit" and cal["temperature"] > 0 and cal["frames_per_clip"] == [6, 8]
    assert cal["clips"] + sum(cal["left_out"].values()) == 8 and cal["clips"] >= 6
    assert 0 <= dec["unsure_band"][0] <= dec["threshold"] <= dec["unsure_band"][1] <= 1
    assert meta["metrics"]["valid_clip"]["n"] == cal["clips"]
    assert {k: v for k, v in meta.items() if k not in ("calibration_clip", "decision_clip", "metrics")} == \
        {k: v for k, v in before.items() if k != "metrics"}  # nothing else changed
    clf = Classifier(folder)
    assert clf.decision_clip.temperature == pytest.approx(cal["temperature"]) and clf.decision_clip.threshold == \
        dec["threshold"]
    assert "T=" in capsys.readouterr().out
    assert not list(folder.glob(".metadata.json.*"))  # written atomically: no temp file left behind
