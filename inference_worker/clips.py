"""Clip bytes -> Verdict: sampled frames, faces per frame, people linked across frames, one verdict per person.

1. `video.open_clip` checks the limits and plans the sampled frames (at most CLIP_SAMPLE_FPS per second and
   CLIP_SAMPLE_FRAMES per clip, first to last); the frames are decoded one at a time.
2. Each sampled frame goes through the photo path's detector and FFHQ alignment (`frame_face`); only the
   aligned crops, boxes and a small thumbnail (for the contact sheet) are kept, never the frame itself.
   Crops are classified in batches of up to CLASSIFY_BATCH (raw, uncalibrated outputs).
3. Detections of one person are linked across frames (`link`): greedily by box overlap with the track's last
   box (IoU >= IOU_LINK), a person unseen for up to MAX_GAP sampled frames may re-link, and a face that looks
   clearly different from the track's last one (a cut to another person at the same spot) starts a new track.
4. Each person gets one verdict: p = sigmoid(mean of their per-frame logits / T) with the model's clip
   calibration and decision (`Decision.for_clips`). With 4 or more sampled frames, people seen in only one
   frame are dropped as detector noise, unless nobody else was seen.
5. The overall label follows the photo rule (`pipeline.overall`); several people -> `several_faces`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.contract import FaceVerdict, Verdict

from .classifier import mean_logit
from .decode import Unreadable
from .faces import MIN_FACE_PX, frame_face
from .marking import SHEET_MAX_CELLS, contact_sheet
from .video import Limits, Sample, open_clip

if TYPE_CHECKING:
    from .pipeline import Pipeline, Result

IOU_LINK = 0.3  # a detection continues a track when its box overlaps the track's last box at least this much
MAX_GAP = 3  # sampled frames a person may go unseen and still be the same track
# Mean absolute difference (0-255) of 16 x 16 colour thumbnails of the aligned faces' centres: the same person
# 0.5 s later measured 2-22 on valid faces in moving clips, two different people 19-126 (1st percentile 25).
APPEARANCE_MAX_DIFF = 25.0
MIN_TRACK_FRAMES = 2  # a person seen in fewer sampled frames is detector noise...
NOISE_CHECK_FROM = 4  # ...when the clip has at least this many sampled frames
CLASSIFY_BATCH = 32
THUMB_SIDE = 480  # sampled frames are kept this small (for the contact sheet), and only when one is wanted


@dataclass
class Detection:
    frame: int  # index of the sampled frame
    box: tuple[int, int, int, int]
    size_px: int
    confidence: float
    realigned: bool
    signature: np.ndarray  # 16 x 16 x 3 thumbnail of the aligned face's centre (appearance)
    raw: float = float("nan")  # the classifier's uncalibrated P(fake) for this crop


@dataclass
class Track:
    detections: list[Detection] = field(default_factory=list)

    @property
    def last(self) -> Detection:
        return self.detections[-1]

    @property
    def frames(self) -> int:
        return len({d.frame for d in self.detections})

    def telling(self) -> Detection:
        """The detection that shows this person best: the largest, most certain face."""
        return max(self.detections, key=lambda d: (d.size_px * d.confidence, -d.frame))


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def signature(crop: Image.Image) -> np.ndarray:
    """A tiny colour thumbnail of the aligned face's centre (the face, not the background around it)."""
    w, h = crop.size
    centre = crop.crop((w // 4, h // 4, w - w // 4, h - h // 4))
    return np.asarray(centre.resize((16, 16), Image.Resampling.BOX), np.float32)


def link(per_frame: list[list[Detection]]) -> list[Track]:
    """Tracks of one person each, from detections per sampled frame (in time order)."""
    tracks: list[Track] = []
    for f, dets in enumerate(per_frame):
        live = [t for t in tracks if f - t.last.frame <= MAX_GAP + 1]
        pairs = []
        for ti, t in enumerate(live):
            for di, d in enumerate(dets):
                overlap = iou(t.last.box, d.box)
                if overlap >= IOU_LINK and float(np.abs(t.last.signature - d.signature).mean()) <= APPEARANCE_MAX_DIFF:
                    pairs.append((overlap, ti, di))
        used_t, used_d = set(), set()
        for _, ti, di in sorted(pairs, reverse=True):  # greedy: the best overlaps first
            if ti in used_t or di in used_d:
                continue
            live[ti].detections.append(dets[di])
            used_t.add(ti)
            used_d.add(di)
        tracks += [Track([d]) for di, d in enumerate(dets) if di not in used_d]
    return tracks


def _thumb(image: Image.Image) -> tuple[Image.Image, float]:
    scale = min(1.0, THUMB_SIDE / max(image.size))
    if scale == 1.0:
        return image.copy(), 1.0
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR), scale


def check_clip(pipe: "Pipeline", data: bytes, request_id: str, want_marked: bool = False) -> "Result":
    """Judge every person in a clip; bad input becomes an `unreadable` verdict, never an exception."""
    from .pipeline import Result, overall

    clf = pipe.models.current  # one model for the whole request
    model = {"name": clf.name, "version": clf.version}
    ms = {"decode": 0.0, "detect": 0.0, "classify": 0.0}
    t_start = time.perf_counter()

    def unreadable(reason: str) -> Result:
        ms["total"] = (time.perf_counter() - t_start) * 1000
        return Result(Verdict(request_id, "unreadable", None, reasons=[reason], model=model,
                              timings_ms={k: round(v, 1) for k, v in ms.items()}))

    per_frame: list[list[Detection]] = []
    thumbs: list[tuple[Image.Image, float]] = []
    times: list[float] = []
    pending: list[tuple[Detection, np.ndarray]] = []

    def classify() -> None:
        t = time.perf_counter()
        raw = clf.raw(np.stack([crop for _, crop in pending]))
        for (det, _), r in zip(pending, raw):
            det.raw = float(r)
        pending.clear()
        ms["classify"] += (time.perf_counter() - t) * 1000

    def detect(sample: Sample) -> None:
        """Faces of one frame; the frame itself goes after this: only crops, boxes and a thumbnail stay."""
        t = time.perf_counter()
        dets = []
        for face in pipe.detector.detect(sample.image):
            crop, realigned = frame_face(sample.image, face.landmarks, clf.input_size)
            det = Detection(len(per_frame), tuple(int(v) for v in face.box), face.size_px,  # type: ignore[arg-type]
                            float(face.confidence), bool(realigned), signature(crop))
            dets.append(det)
            pending.append((det, np.asarray(crop, np.float32)))
        per_frame.append(dets)
        times.append(sample.time_s)
        if want_marked:
            thumbs.append(_thumb(sample.image))
        ms["detect"] += (time.perf_counter() - t) * 1000
        if len(pending) >= CLASSIFY_BATCH:
            classify()

    t = time.perf_counter()
    try:
        reader = open_clip(data, Limits.from_settings(pipe.settings))
        for sample in reader.samples():
            ms["decode"] += (time.perf_counter() - t) * 1000
            detect(sample)
            del sample
            t = time.perf_counter()
        ms["decode"] += (time.perf_counter() - t) * 1000  # reading past the last sampled frame
    except Unreadable as exc:
        return unreadable(exc.reason)
    if pending:
        classify()
    t = time.perf_counter()
    n = len(per_frame)
    tracks = link(per_frame)
    if n >= NOISE_CHECK_FROM and any(tr.frames >= MIN_TRACK_FRAMES for tr in tracks):
        tracks = [tr for tr in tracks if tr.frames >= MIN_TRACK_FRAMES]
    tracks.sort(key=lambda tr: (tr.detections[0].frame, -tr.telling().size_px))
    decision = clf.decision_clip
    faces: list[FaceVerdict] = []
    logits: list[float] = []
    for tr in tracks:
        raw = np.array([d.raw for d in tr.detections])
        p = decision.aggregate(raw)
        size = int(np.median([d.size_px for d in tr.detections]))
        label = decision.label(p) if size >= MIN_FACE_PX else "unsure"  # too few pixels: never real or fake
        best = tr.telling()
        faces.append(FaceVerdict(box=list(best.box), label=label, p_fake=round(p, 4), size_px=size,
                                 detector_confidence=round(float(np.median([d.confidence for d in tr.detections])), 4),
                                 realigned=sum(d.realigned for d in tr.detections) * 2 >= len(tr.detections),
                                 frames=tr.frames))
        logits.append(mean_logit(raw))
    reasons = list(reader.notes)
    if any(f.size_px < MIN_FACE_PX for f in faces):
        reasons.append("face_too_small")
    if len(faces) > 1:
        reasons.append("several_faces")
    label, p_all = overall(faces)
    ms["classify"] += (time.perf_counter() - t) * 1000
    verdict = Verdict(request_id, label, None if p_all is None else round(p_all, 4), faces=faces, reasons=reasons,
                      model=model, image=reader.info.info(), frames=n)
    marked = None
    if want_marked and faces:
        marked = contact_sheet(_sheet_cells(tracks, faces, thumbs, times))
    ms["total"] = (time.perf_counter() - t_start) * 1000
    verdict.timings_ms = {k: round(v, 1) for k, v in ms.items()}
    return Result(verdict, marked, mean_logits=logits)


def _sheet_cells(tracks: list[Track], faces: list[FaceVerdict], thumbs: list[tuple[Image.Image, float]],
                 times: list[float]) -> list[tuple[Image.Image, str, list[FaceVerdict]]]:
    """The most telling frames: each person's best frame first, then evenly spaced others, in time order."""
    n = len(thumbs)
    chosen: list[int] = []
    for tr in tracks:
        f = tr.telling().frame
        if f not in chosen and len(chosen) < SHEET_MAX_CELLS:
            chosen.append(f)
    while len(chosen) < min(n, SHEET_MAX_CELLS):  # then the frame farthest from those chosen, and so on
        chosen.append(max(range(n), key=lambda i: (min((abs(i - c) for c in chosen), default=n), -i)))
    cells = []
    for f in sorted(chosen):
        image, scale = thumbs[f]
        marks = []
        for tr, fv in zip(tracks, faces):
            for d in tr.detections:
                if d.frame == f:
                    marks.append(FaceVerdict(box=[round(v * scale) for v in d.box], label=fv.label, p_fake=fv.p_fake,
                                             size_px=d.size_px))
        cells.append((image, f"frame {f + 1}/{n} · {times[f]:.1f} s", marks))
    return cells
