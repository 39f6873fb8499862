"""Forwarded-photo fixtures (tests/fixtures/photos): dataset faces pasted into larger pictures.

Through the worker's real Pipeline (its face detector, a tiny untrained model): every pasted face is found where it was
pasted, re-aligned (not passed through as a dataset crop), and framed back to its source face.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings
from tests.fixtures_worker import write_tiny_model

PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"
FACES = Path(__file__).resolve().parent / "fixtures" / "faces" / "real-vs-fake"  # sources, not FACES_DATA_DIR


def _manifest() -> dict[str, list[dict[str, str]]]:
    by_file: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(PHOTOS / "MANIFEST.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            by_file[row["file"]].append(row)
    return dict(by_file)


MANIFEST = _manifest()


def test_manifest_describes_every_photo():
    assert sorted(MANIFEST) == sorted(p.name for p in PHOTOS.glob("*.jpg"))
    assert 2 <= len(MANIFEST) and any(len(rows) > 1 for rows in MANIFEST.values())
    for name, rows in MANIFEST.items():
        data = (PHOTOS / name).read_bytes()
        assert len(data) < 150_000, name
        assert {r["sha256"] for r in rows} == {hashlib.sha256(data).hexdigest()}, f"{name} differs from MANIFEST"
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.size == (int(rows[0]["width"]), int(rows[0]["height"]))
        for r in rows:
            assert (FACES / r["face_source"]).is_file() and r["face_source"].split("/")[1] == r["label"]
            assert "NC" in r["licence"] and ("SA" in r["licence"]) == (r["label"] == "real")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from inference_worker.pipeline import Pipeline

    d = tmp_path_factory.mktemp("photo-model")
    write_tiny_model(d, "photos")
    return Pipeline(Settings(models_dir=d))


def _centre_diff(a: Image.Image, b: Image.Image) -> float:
    centre = (slice(64, 192), slice(64, 192))  # the face itself; the borders hold the pasted background
    return float(np.abs(np.asarray(a, float)[centre] - np.asarray(b, float)[centre]).mean())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_each_pasted_face_is_found_where_it_was_pasted_and_realigned(pipeline, name):
    from inference_worker.faces import MIN_FACE_PX, frame_face

    rows = MANIFEST[name]
    data = (PHOTOS / name).read_bytes()
    result = pipeline.check(data, f"photo-{name}", want_marked=True)
    v = result.verdict
    assert (v.image["width"], v.image["height"]) == (int(rows[0]["width"]), int(rows[0]["height"]))
    assert len(v.faces) == len(rows), [f.box for f in v.faces]
    assert ("several_faces" in v.reasons) == (len(rows) > 1)
    assert "heavily_compressed" not in v.reasons and result.marked is not None
    assert all(f.realigned for f in v.faces)  # a face inside a photo is never taken for a dataset crop
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    detections = pipeline.detector.detect(picture)
    unmatched = list(rows)
    for face, det in zip(v.faces, detections):
        assert list(face.box) == [int(x) for x in det.box]
        x, y, w, h = face.box
        cx, cy = x + w / 2, y + h / 2
        # The pasted crop whose centre this face is near: each pasted face matches exactly one box.
        near = [r for r in unmatched if abs(cx - (int(r["paste_x"]) + int(r["paste_size"]) / 2)) < int(
            r["paste_size"]) * 0.2 and abs(cy - (int(r["paste_y"]) + int(r["paste_size"]) / 2)) < int(
            r["paste_size"]) * 0.25]
        assert len(near) == 1, (face.box, unmatched)
        row = near[0]
        unmatched.remove(row)
        size = int(row["paste_size"])
        assert 0.35 * size <= min(w, h) <= max(w, h) <= 0.9 * size and face.size_px >= MIN_FACE_PX
        assert face.detector_confidence >= 0.5  # BlazeFace: sure faces score 0.6-0.95 (MTCNN gave >= 0.9)
        # Re-aligned, the face is its source again (tilt undone), closer than the source is to another face.
        crop, realigned = frame_face(picture, det.landmarks)
        source = Image.open(FACES / row["face_source"]).convert("RGB")
        other = Image.open(FACES / ("test/real/00001.jpg" if row["label"] == "fake" else "test/fake/00AUP94LQS.jpg"))
        assert realigned
        diff = _centre_diff(crop, source)
        assert diff < 30 and diff < 0.6 * _centre_diff(crop, other.convert("RGB")), (row["face_source"], diff)
    assert not unmatched
