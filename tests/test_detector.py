"""The face detector (BlazeFace + FaceMesh through LiteRT) on real pictures: what it finds, what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from inference_worker.detector import (FINEST_WINDOW, MIN_SCORE_WINDOW, landmarks_from_mesh,
                                       search_windows, weighted_nms)
from inference_worker.faces import MIN_FACE_PX, ffhq_quad, is_already_aligned


def _noise_canvas(w: int, h: int, seed: int) -> Image.Image:
    """A busy, face-free background: smooth colour noise."""
    noise = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))


def test_a_weak_blazeface_score_on_a_tight_crop_is_confirmed_by_facemesh(data_dir, detector):
    # BlazeFace is unsure of this dataset crop (0.46 < MediaPipe's 0.5: the face fills the picture, no context);
    # FaceMesh is sure, and its landmarks frame the picture the FFHQ way.
    crop = Image.open(data_dir / "valid" / "real" / "00060.jpg").convert("RGB")
    (row, score), = detector.candidates(crop)
    assert score < 0.5
    (face,) = detector.detect(crop)
    assert is_already_aligned(crop, ffhq_quad(face.landmarks))


@pytest.mark.parametrize("name", ["chelsea", "coffee", "hubble_deep_field", "rocket", "brick"])
def test_pictures_without_a_person_have_no_face(detector, name):
    from skimage import data
    picture = Image.fromarray(getattr(data, name)()).convert("RGB")  # a cat, a cup, galaxies, a rocket, a wall
    assert detector.detect(picture) == []


def test_facemesh_refuses_what_blazeface_half_believes(detector):
    from skimage import data
    cup = Image.fromarray(data.coffee()).convert("RGB")
    candidates = detector.candidates(cup)
    assert candidates, "BlazeFace proposes something on the cup (score ~0.33)"
    assert all(detector.mesh(cup, row)[1] < 0.1 for row, _ in candidates)


def test_landmarks_are_the_picture_left_and_right_like_mtcnn(face, detector):
    (f,) = detector.detect(face)
    lm = f.landmarks
    assert lm["left_eye"][0] < lm["nose"][0] < lm["right_eye"][0]
    assert lm["mouth_left"][0] < lm["mouth_right"][0]
    assert max(lm["left_eye"][1], lm["right_eye"][1]) < lm["nose"][1] < min(lm["mouth_left"][1], lm["mouth_right"][1])


def test_a_small_face_in_a_big_photo_is_found_through_the_windows_once(face, detector):
    canvas = _noise_canvas(4000, 3000, seed=3)
    canvas.paste(face.resize((140, 140), Image.Resampling.LANCZOS), (2710, 1930))  # box ~75 px: worth judging
    found = detector.detect(canvas)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 2710 <= x + w / 2 <= 2850 and 1930 <= y + h / 2 <= 2070 and w >= MIN_FACE_PX
    # The whole picture at 192 px alone (the first window) shows it at ~7 px: too small to find.
    whole = Image.new("RGB", (4000, 4000))
    whole.paste(canvas)
    assert [s for _, s in detector._search(
        np.asarray(whole.resize((192, 192), Image.Resampling.BILINEAR, reducing_gap=2.0), np.float32),
        MIN_SCORE_WINDOW)] == []


def test_a_face_seen_in_several_windows_is_one_face(face, detector):
    canvas = _noise_canvas(1280, 960, seed=4)
    canvas.paste(face.resize((240, 240), Image.Resampling.LANCZOS), (520, 380))  # across the window borders
    assert len(search_windows(1280, 960)) > 1
    assert len(detector.detect(canvas)) == 1


@pytest.mark.parametrize("size", [(1024, 768), (1280, 960), (1920, 1080), (4032, 3024), (6000, 800), (90, 60)])
def test_windows_hold_every_face_worth_judging_whole(size):
    w, h = size
    windows = search_windows(w, h)
    assert windows[0] == (0, 0, max(w, h))  # the whole picture first
    finest = min(s for _, _, s in windows)
    assert finest <= FINEST_WINDOW or len(windows) == 1
    # Any square up to half the finest window (a face's crop) lies wholly inside one finest window.
    q = finest // 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = int(rng.integers(0, max(1, w - q))), int(rng.integers(0, max(1, h - q)))
        assert any(wx <= x and wy <= y and x + min(q, w) <= wx + s and y + min(q, h) <= wy + s
                   for wx, wy, s in windows if s == finest), (x, y)


def test_weighted_nms_averages_overlapping_boxes_by_score_and_keeps_apart_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float64)
    merged = weighted_nms(boxes, np.array([0.9, 0.3, 0.5]))
    assert [s for _, s in merged] == [0.9, 0.5]
    np.testing.assert_allclose(merged[0][0], [0.25, 0.25, 10.25, 10.25])
    np.testing.assert_allclose(merged[1][0], [50, 50, 60, 60])


def test_five_landmarks_from_the_mesh_points():
    xy = np.zeros((468, 2))
    xy[[33, 133]] = [[10, 20], [20, 20]]  # the two corners of the picture-left eye, among its 16 points
    xy[[263, 362]] = [[50, 20], [40, 20]]
    xy[1], xy[61], xy[291] = [30, 40], [18, 60], [42, 60]
    lm = landmarks_from_mesh(xy)
    assert lm["nose"] == (30.0, 40.0) and lm["mouth_left"] == (18.0, 60.0) and lm["mouth_right"] == (42.0, 60.0)
    assert lm["left_eye"] == pytest.approx((30 / 16, 40 / 16)) and lm["right_eye"] == pytest.approx((90 / 16, 40 / 16))
