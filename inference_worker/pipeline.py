"""Image bytes -> Verdict: decode, detect, align, classify all faces in one batch, calibrate, decide.

Clips (videos, animated GIF / WebP, told by `core.media.is_clip`) take the clip path in clips.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classifier import ModelWatcher, runtime_from_env
from core.contract import FaceVerdict, Verdict
from core.media import is_clip
from .decode import Unreadable, decode_image
from .detector import Detector
from .faces import MIN_FACE_PX, FaceDetector, frame_face
from .marking import marked_jpeg
from core.settings import Settings

# Below this estimated JPEG quality, GAN texture is mostly gone (the sample trains on q75 and q95).
HEAVY_COMPRESSION_QUALITY = 70


@dataclass
class Result:
    verdict: Verdict
    marked: bytes | None = None  # JPEG of the picture with boxes (clips: a contact sheet), when asked for
    # Clips: each person's uncalibrated aggregate (mean logit of their frames), in the order of verdict.faces;
    # what `python -m trainer calibrate-clips` fits the clip calibration on.
    mean_logits: list[float] | None = None


def overall(faces: list[FaceVerdict]) -> tuple[str, float | None]:
    """`fake` if any face is confidently fake, else `unsure` if any is unsure, else `real`."""
    if not faces:
        return "no_face", None
    p = max(f.p_fake for f in faces)
    labels = {f.label for f in faces}
    if "fake" in labels:
        return "fake", p
    if "unsure" in labels:
        return "unsure", p
    return "real", p


class Pipeline:
    """Everything a worker process loads once: the face detector and the promoted model."""

    def __init__(self, settings: Settings, detector: FaceDetector | None = None) -> None:
        self.settings = settings
        self.models = ModelWatcher(Path(settings.models_dir), *runtime_from_env())  # first: a bad model fails fast
        self.detector: FaceDetector = detector or Detector()

    def check(self, data: bytes, request_id: str, want_marked: bool = False) -> Result:
        """Judge every face in the picture; bad input becomes an `unreadable` verdict, never an exception."""
        if is_clip(data):
            from .clips import check_clip

            return check_clip(self, data, request_id, want_marked)
        clf = self.models.current  # one model for the whole request, even if a swap happens meanwhile
        model = {"name": clf.name, "version": clf.version}
        t0 = time.perf_counter()
        try:
            decoded = decode_image(data, self.settings.max_image_bytes, self.settings.max_image_pixels)
        except Unreadable as exc:
            ms = {"decode": (time.perf_counter() - t0) * 1000}
            ms["total"] = ms["decode"]
            return Result(Verdict(request_id, "unreadable", None, reasons=[exc.reason], model=model,
                                  timings_ms=ms))
        t1 = time.perf_counter()
        found = self.detector.detect(decoded.image)
        t2 = time.perf_counter()
        faces: list[FaceVerdict] = []
        reasons = list(decoded.reasons)
        if found:
            # A picture that already is a dataset-style crop is passed through; every other face is
            # re-aligned and judged with the calibration fitted on such faces.
            framed = [frame_face(decoded.image, f.landmarks, clf.input_size) for f in found]
            crops = np.stack([np.asarray(crop, np.float32) for crop, _ in framed])
            realigned = np.array([r for _, r in framed])
            probs = clf.p_fake(crops, realigned)
            for f, p, r in zip(found, probs, realigned):
                label = clf.decision_for(bool(r)).label(float(p))
                if f.size_px < MIN_FACE_PX:
                    label = "unsure"  # too few pixels for an honest answer either way
                faces.append(FaceVerdict(box=[int(v) for v in f.box], label=label, p_fake=round(float(p), 4),
                                         size_px=f.size_px, detector_confidence=round(f.confidence, 4),
                                         realigned=bool(r)))
            if any(f.size_px < MIN_FACE_PX for f in found):
                reasons.append("face_too_small")
            if len(found) > 1:
                reasons.append("several_faces")
        t3 = time.perf_counter()
        if decoded.jpeg_quality is not None and decoded.jpeg_quality < HEAVY_COMPRESSION_QUALITY:
            reasons.append("heavily_compressed")
        label, p = overall(faces)
        verdict = Verdict(request_id, label, None if p is None else round(p, 4), faces=faces, reasons=reasons,
                          model=model, image=decoded.info())
        marked = marked_jpeg(decoded.image, faces) if want_marked and faces else None
        verdict.timings_ms = {"decode": round((t1 - t0) * 1000, 1), "detect": round((t2 - t1) * 1000, 1),
                              "classify": round((t3 - t2) * 1000, 1),
                              "total": round((time.perf_counter() - t0) * 1000, 1)}
        return Result(verdict, marked)
