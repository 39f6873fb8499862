"""The JSON contracts between the bot adapters and the inference workers.

Everything that crosses Redis is defined here: job payloads and verdicts (the key names: core/keys.py).
This module must stay import-light (no TensorFlow, no Pillow): the bot process imports it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.keys import image_key

# Overall labels. `error` is the honest "could not check" after a job's last retry failed.
Label = Literal["fake", "real", "unsure", "no_face", "unreadable", "error"]
LABELS: tuple[str, ...] = ("fake", "real", "unsure", "no_face", "unreadable", "error")
FACE_LABELS: tuple[str, ...] = ("fake", "real", "unsure")
PLATFORMS: tuple[str, ...] = ("telegram", "line", "web")

# The languages every user-facing text exists in; the default is the one a user gets when their app
# says nothing we speak (the bot's audience reads 繁體中文).
LANGS: tuple[str, ...] = ("zh-TW", "en")
DEFAULT_LANG = "zh-TW"

# Reasons a person understands; the bot turns each code into a sentence in the user's language.
REASONS: tuple[str, ...] = (
    "face_too_small",  # a face was found but has too few pixels to judge
    "heavily_compressed",  # strong JPEG artefacts: sending the picture as a file keeps more detail
    "not_an_image",  # bytes are not a picture format we read
    "truncated",  # the file ends early / is corrupt
    "too_large_bytes",  # more bytes than MAX_IMAGE_BYTES
    "too_many_pixels",  # decompression bomb or absurd dimensions
    "animated_first_frame",  # only the first frame of an animation was checked
    "image_expired",  # the stored bytes were gone (TTL) before a worker got to them
    "worker_failed",  # every try failed; the user gets this instead of silence
    "several_faces",  # more than one face: each is judged on its own
    "clip_too_long",  # a clip longer than MAX_VIDEO_S
    "too_many_frames",  # a clip with more frames than MAX_VIDEO_FRAMES (or a frame rate no camera has)
)

QUEUE_NAME = "checks"
JOB_FUNCTION = "inference_worker.jobs.check_image"
FAILURE_CALLBACK = "inference_worker.jobs.report_failure"

@dataclass
class JobPayload:
    """What the bot enqueues. JSON only; image bytes travel separately under `image_key`."""

    request_id: str
    platform: str
    reply_to: dict[str, Any]  # platform-specific: chat_id, message_id, reply_token, ...
    image_key: str
    image_sha256: str
    lang: str = DEFAULT_LANG
    received_at: float = field(default_factory=time.time)
    want_marked: bool = True

    @classmethod
    def new(cls, platform: str, reply_to: dict[str, Any], image_sha256: str, lang: str = DEFAULT_LANG,
            want_marked: bool = True) -> "JobPayload":
        rid = uuid.uuid4().hex
        return cls(request_id=rid, platform=platform, reply_to=reply_to, image_key=image_key(rid),
                   image_sha256=image_sha256, lang=lang, want_marked=want_marked)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobPayload":
        if d.get("platform") not in PLATFORMS:
            raise ValueError(f"unknown platform {d.get('platform')!r}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class FaceVerdict:
    box: list[int]  # x, y, width, height in the (EXIF-rotated) input image
    label: str  # fake | real | unsure
    p_fake: float  # calibrated probability that this face is GAN-generated
    size_px: int  # the shorter side of the face box, before alignment
    detector_confidence: float = 1.0
    realigned: bool = False  # cut out of a larger picture (judged with the model's re-aligned calibration)
    frames: int = 1  # clips: in how many of the sampled frames this person was seen (one verdict for them all)


@dataclass
class Verdict:
    request_id: str
    label: str
    p_fake: float | None  # overall calibrated probability of fake (the most suspicious face)
    faces: list[FaceVerdict] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    model: dict[str, str] = field(default_factory=dict)  # {"name": ..., "version": ...}
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)  # width, height, format
    marked_image_key: str | None = None  # clips: a contact sheet of the most telling frames
    cached: bool = False  # true when the bot answered from the verdict cache
    frames: int = 0  # clips: how many frames were sampled and checked; 0 for a still picture

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        if d.get("label") not in LABELS:
            raise ValueError(f"unknown verdict label {d.get('label')!r}")
        # Unknown face fields are ignored: a bot still reads verdicts of a newer worker during a rollout.
        known = FaceVerdict.__dataclass_fields__
        faces = [FaceVerdict(**{k: v for k, v in f.items() if k in known}) for f in d.get("faces", [])]
        rest = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "faces"}
        return cls(faces=faces, **rest)

    @classmethod
    def failed(cls, request_id: str, reason: str = "worker_failed") -> "Verdict":
        return cls(request_id=request_id, label="error", p_fake=None, reasons=[reason])
