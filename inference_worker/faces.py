"""Find faces (MTCNN, offline weights) and crop each one the way FFHQ / 140k faces are framed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Larger pictures are downscaled for detection only (crops use full resolution). MTCNN's cost grows with
# pixels and its smallest face is fixed at 20 px (mtcnn 1.0 breaks with other min_face_size values), so
# a fast first pass at 800 px is followed by a finer pass only when it found nothing in a big picture.
DETECT_SIDES = (800, 1600)
# Clip frames are searched at most 640 px wide, once: MTCNN's smallest face (20 px) is then 60 px in a 1080p
# frame, about MIN_FACE_PX, the smallest face the worker judges; half the time of 800 px per frame.
CLIP_DETECT_SIDE = 640
MIN_DETECTOR_CONFIDENCE = 0.9
# A weaker detection is still a face when its landmarks frame the whole picture the FFHQ way: a
# dataset-style tight crop (MTCNN is less sure on such crops: no context around the face).
ALIGNED_CROP_CONFIDENCE = 0.8
MAX_FACES = 12  # the largest faces of a crowd photo; keeps one request's latency bounded
MIN_FACE_PX = 64  # shorter side of a face box below which we say the face is too small to judge
CROP_SIZE = 256


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the input picture
    confidence: float
    landmarks: dict[str, tuple[float, float]]  # left_eye, right_eye, nose, mouth_left, mouth_right

    @property
    def size_px(self) -> int:
        return int(min(self.box[2], self.box[3]))


class FaceDetector(Protocol):
    """What the pipeline needs of a face detector: faces with 5 landmarks, largest first.

    Alignment (`ffhq_quad`, `align_face`) is shared by every detector. A model is trained on the crops of
    one detector (`trainer.framing`), so a new detector means new framing landmarks and a retrain.
    """

    device: str

    def detect(self, image: Image.Image) -> list[Face]: ...

    # Optional: `detect_batch(images) -> list[list[Face]]` for a clip's frames (one size); the clip path
    # calls `detect` per frame when a detector has none.


class Detector:
    """MTCNN loaded once per process; on the GPU when TensorFlow sees one."""

    def __init__(self) -> None:
        import tensorflow as tf
        from mtcnn import MTCNN

        device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
        self._mtcnn = MTCNN(device=device)
        self.device = device
        # mtcnn calls its three Keras networks eagerly, layer by layer; most of a detection was that Python
        # overhead. The same networks as compiled functions (one trace each, fixed signatures) give the same
        # boxes and landmarks at ~0.6 of the time (2-core CPU: 280 -> 172 ms for a 720p frame).
        for stage in self._mtcnn.stages:
            side = {"PNET": None, "RNET": 24, "ONET": 48}.get(stage.name.split()[-1].upper(), False)
            if side is not False and getattr(stage, "_model", None) is not None:
                stage._model = tf.function(stage._model, input_signature=[
                    tf.TensorSpec([None, side, side, 3], tf.float32)])
        self.detect(Image.new("RGB", (64, 48)))  # trace now, not on the first user's request

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an RGB picture, largest first, boxes and landmarks in the picture's coordinates."""
        faces: list[Face] = []
        for side in DETECT_SIDES:
            faces = self._detect_at(image, side)
            if faces or max(image.size) <= side * 1.2:
                break
        return faces

    def detect_batch(self, images: list[Image.Image]) -> list[list[Face]]:
        """`detect` for several pictures of one size at once (a clip's sampled frames), first pass only.

        MTCNN runs each network once over the whole batch, which costs about half of one call per picture on a
        CPU. Frames are searched at CLIP_DETECT_SIDE, with no second, finer pass.
        """
        if not images:
            return []
        side = CLIP_DETECT_SIDE
        smalls = [self._shrink(im, side) for im in images]
        if min(smalls[0][0].size) < 24 or len({s.size for s, _ in smalls}) != 1:
            return [self._detect_at(im, side) for im in images]
        found = self._mtcnn.detect_faces([np.asarray(s, dtype=np.uint8) for s, _ in smalls])  # a list per picture
        found = list(found) + [[]] * (len(images) - len(found))
        return [self._faces(im, f, scale) for im, f, (_, scale) in zip(images, found, smalls)]

    @staticmethod
    def _shrink(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
        if max(image.size) <= max_side:
            return image, 1.0
        scale = max(image.size) / max_side
        return image.resize((max(1, round(image.width / scale)), max(1, round(image.height / scale))),
                            Image.Resampling.BILINEAR, reducing_gap=2.0), scale

    def _detect_at(self, image: Image.Image, max_side: int) -> list[Face]:
        small, scale = self._shrink(image, max_side)
        if min(small.size) < 24:  # below MTCNN's smallest window: nothing to find
            return []
        return self._faces(image, self._mtcnn.detect_faces(np.asarray(small, dtype=np.uint8)), scale)

    @staticmethod
    def _faces(image: Image.Image, found: list[dict] | None, scale: float) -> list[Face]:
        """MTCNN's answers for `image` (found at 1/scale of its size) as Faces, largest first."""
        faces = []
        for f in found or []:
            conf = float(f["confidence"])
            if conf < ALIGNED_CROP_CONFIDENCE:
                continue
            x, y, w, h = (float(v) * scale for v in f["box"])
            marks = {k: (float(p[0]) * scale, float(p[1]) * scale) for k, p in f["keypoints"].items()}
            if conf < MIN_DETECTOR_CONFIDENCE and not is_already_aligned(image, ffhq_quad(marks)):
                continue
            faces.append(Face((round(x), round(y), round(w), round(h)), float(f["confidence"]), marks))
        faces.sort(key=lambda fc: fc.box[2] * fc.box[3], reverse=True)
        return faces[:MAX_FACES]


def ffhq_quad(landmarks: dict[str, tuple[float, float]]) -> np.ndarray:
    """The FFHQ alignment quad (4 corners, clockwise from top-left) from 5 landmarks."""
    eye_left = np.array(landmarks["left_eye"])  # MTCNN's left_eye is on the image's left, like FFHQ's
    eye_right = np.array(landmarks["right_eye"])
    mouth_avg = (np.array(landmarks["mouth_left"]) + np.array(landmarks["mouth_right"])) * 0.5
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= max(np.hypot(*x), 1e-6)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def is_already_aligned(image: Image.Image, quad: np.ndarray, tolerance: float = 0.10) -> bool:
    """True when the picture itself is (nearly) the FFHQ crop: a square whose corners match the quad's."""
    w, h = image.size
    if abs(w - h) > 0.02 * max(w, h):
        return False
    corners = np.array([[0, 0], [0, h], [w, h], [w, 0]], dtype=np.float64)
    return float(np.max(np.hypot(*(quad - corners).T))) <= tolerance * w


def frame_face(image: Image.Image, landmarks: dict[str, tuple[float, float]], size: int = CROP_SIZE
               ) -> tuple[Image.Image, bool]:
    """(the face cropped like FFHQ to a size x size square, whether it had to be re-aligned).

    A picture that already is such a crop (the dataset's own 256-px faces) is only resized: resampling
    it through a slight rotation would blur exactly the fine texture the classifier looks at.
    """
    quad = ffhq_quad(landmarks)
    if is_already_aligned(image, quad):
        return (image if image.size == (size, size) else
                image.resize((size, size), Image.Resampling.LANCZOS)), False
    return crop_quad(image, quad, size), True


def align_face(image: Image.Image, landmarks: dict[str, tuple[float, float]], size: int = CROP_SIZE) -> Image.Image:
    """Crop one face like FFHQ: rotate/scale by the eye and mouth landmarks to a size x size square."""
    return frame_face(image, landmarks, size)[0]


def crop_quad(image: Image.Image, quad: np.ndarray, size: int = CROP_SIZE) -> Image.Image:
    """Sample the rotated square `quad` (TL, BL, BR, TR) of the picture into a size x size crop."""
    qsize = np.hypot(*(quad[3] - quad[0]))
    # Shrink big faces first with a proper filter (FFHQ does too): QUAD sampling does not antialias.
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        image = image.resize((max(1, round(image.width / shrink)), max(1, round(image.height / shrink))),
                             Image.Resampling.LANCZOS)
        quad = quad / shrink
    # Mirror-pad when the quad reaches outside the picture (faces at the border), as FFHQ does.
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad_l, pad_t = max(0, -lo[0]) + 2, max(0, -lo[1]) + 2
    pad_r, pad_b = max(0, hi[0] - image.width) + 2, max(0, hi[1] - image.height) + 2
    if pad_l > 2 or pad_t > 2 or pad_r > 2 or pad_b > 2:
        # Crop to the quad's neighbourhood first so that padding a huge picture stays cheap.
        x0, y0 = max(0, lo[0] - 2), max(0, lo[1] - 2)
        x1, y1 = min(image.width, hi[0] + 2), min(image.height, hi[1] + 2)
        arr = np.asarray(image.crop((x0, y0, x1, y1)))
        arr = np.pad(arr, ((max(0, -lo[1]) + 2, max(0, hi[1] - image.height) + 2),
                           (max(0, -lo[0]) + 2, max(0, hi[0] - image.width) + 2), (0, 0)), mode="reflect")
        image = Image.fromarray(arr)
        quad = quad - [x0, y0] + [max(0, -lo[0]) + 2, max(0, -lo[1]) + 2]
    return image.transform((size, size), Image.Transform.QUAD, (quad + 0.5).flatten().tolist(),
                           Image.Resampling.BILINEAR)
