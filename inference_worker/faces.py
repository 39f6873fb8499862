"""Faces as the pipeline sees them, and cropping each one the way FFHQ / 140k faces are framed.

The detector that finds them is `inference_worker.detector.Detector` (BlazeFace + FaceMesh)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

MAX_FACES = 12  # the largest faces of a crowd photo; keeps one request's latency bounded
MIN_FACE_PX = 64  # shorter side of a face box below which we say the face is too small to judge
CROP_SIZE = 256


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the input picture
    confidence: float
    # left_eye, right_eye, nose, mouth_left, mouth_right; "left" = the picture's left for an upright face
    landmarks: dict[str, tuple[float, float]]

    @property
    def size_px(self) -> int:
        return int(min(self.box[2], self.box[3]))


class FaceDetector(Protocol):
    """What the pipeline needs of a face detector: faces with 5 landmarks, largest first.

    Alignment (`ffhq_quad`, `align_face`) is shared by every detector. A model is trained on the crops of
    one detector's crops (`trainer.framing`): after a detector change, refit the re-aligned calibration on valid
    (`python -m trainer calibrate-photos`) and retrain if the model loses accuracy on the new crops.
    """

    device: str

    def detect(self, image: Image.Image) -> list[Face]: ...


def ffhq_quad(landmarks: dict[str, tuple[float, float]]) -> np.ndarray:
    """The FFHQ alignment quad (4 corners, clockwise from top-left) from 5 landmarks."""
    eye_left = np.array(landmarks["left_eye"])  # on the image's left, like FFHQ's
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
