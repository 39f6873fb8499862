"""Worker parts called directly: decoding, FFHQ alignment, the compiled classifier, calibration, publishing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import redis
from PIL import Image
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from inference_worker.classifier import Classifier, Decision, ModelLoadError, ModelWatcher
from core.contract import (FAILURE_CALLBACK, JOB_FUNCTION, QUEUE_NAME, FaceVerdict, JobPayload,
                           Verdict)
from core.keys import cache_key, outbox_stream, result_key
from inference_worker.decode import Unreadable, decode_image, estimate_jpeg_quality, to_rgb
from inference_worker.faces import align_face, ffhq_quad, is_already_aligned
from inference_worker.jobs import publish, report_failure
from inference_worker.pipeline import overall
from core.settings import Settings
from tests.fixtures_worker import promote_model, write_tiny_model

MB = 1 << 20


def _jpeg(im: Image.Image, q: int) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=q)
    return out.getvalue()


@pytest.mark.parametrize("q", [30, 60, 75, 85, 95])
def test_jpeg_quality_is_estimated_from_quantisation_tables(face, q):
    assert abs(estimate_jpeg_quality(Image.open(io.BytesIO(_jpeg(face, q)))) - q) <= 1


def test_decode_refuses_with_reasons(face):
    with pytest.raises(Unreadable) as e:
        decode_image(_jpeg(face, 90), max_bytes=100, max_pixels=MB)
    assert e.value.reason == "too_large_bytes"
    with pytest.raises(Unreadable) as e:
        decode_image(_jpeg(face, 90), max_bytes=MB, max_pixels=256 * 255)  # just over the pixel limit
    assert e.value.reason == "too_many_pixels"
    for data, reason in ((b"", "not_an_image"), (b"GIF89a" + b"\0" * 20, "not_an_image"),
                         (_jpeg(face, 90)[:3000], "truncated")):
        with pytest.raises(Unreadable) as e:
            decode_image(data, max_bytes=MB, max_pixels=MB)
        assert e.value.reason == reason, data[:10]


def test_odd_modes_become_faithful_rgb(face):
    grey = np.asarray(face.convert("L"))
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    assert np.abs(np.asarray(to_rgb(sixteen))[..., 0].astype(int) - grey).max() <= 1  # scaled, not clipped
    la = Image.new("LA", (4, 4), (10, 0))  # fully transparent: shows as white, like chat apps do
    assert np.asarray(to_rgb(la)).min() == 255
    cmyk = to_rgb(face.convert("CMYK"))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk, int) - np.asarray(face, int)).mean() < 3


def test_exif_orientation_is_applied(face):
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    wide = face.crop((0, 0, 256, 200))
    wide.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95, exif=exif)
    decoded = decode_image(out.getvalue(), MB, MB)
    assert decoded.image.size == (256, 200)
    assert np.abs(np.asarray(decoded.image, int) - np.asarray(wide, int)).mean() < 4


def test_dataset_crop_is_its_own_aligned_face(face, detector):
    faces = detector.detect(face)
    assert len(faces) == 1
    assert is_already_aligned(face, ffhq_quad(faces[0].landmarks))
    assert np.array_equal(np.asarray(align_face(face, faces[0].landmarks)), np.asarray(face))


def test_face_in_a_larger_rotated_picture_aligns_back_to_the_dataset_framing(face, detector):
    canvas = Image.new("RGB", (900, 700), (40, 60, 80))
    canvas.paste(face.resize((384, 384), Image.Resampling.LANCZOS), (300, 150))
    rotated = canvas.rotate(12, resample=Image.Resampling.BICUBIC, center=(492, 342))
    found = detector.detect(rotated)
    assert len(found) == 1
    aligned = np.asarray(align_face(rotated, found[0].landmarks), float)
    # Compare the central region (the borders hold the pasted canvas / mirror padding).
    centre = (slice(48, 208), slice(48, 208))
    diff = np.abs(aligned[centre] - np.asarray(face, float)[centre]).mean()
    assert diff < 25, diff
    assert diff < np.abs(np.asarray(face.rotate(12), float)[centre] - np.asarray(face, float)[centre]).mean()


def test_huge_picture_is_detected_at_reduced_size_with_boxes_in_full_coordinates(face, detector):
    canvas = Image.new("RGB", (3000, 2000), (120, 120, 120))
    canvas.paste(face.resize((512, 512)), (2000, 1200))
    found = detector.detect(canvas)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 2000 <= x <= 2512 and 1200 <= y <= 1712 and w > 150


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Classifier:
    d = tmp_path_factory.mktemp("clf")
    write_tiny_model(d, "tiny", "1", bias=0.7)
    return Classifier(d / "tiny")


def test_compiled_call_matches_keras_predict(tiny_classifier, face):
    batch = np.stack([np.asarray(face, np.float32), np.asarray(face.rotate(90), np.float32),
                      np.zeros((256, 256, 3), np.float32)])
    expected = tiny_classifier.net.model.predict(batch, verbose=0).reshape(-1)
    assert np.allclose(tiny_classifier.raw(batch), expected, atol=1e-5)
    assert np.allclose(tiny_classifier.raw(batch[:1]), expected[:1], atol=1e-5)  # any batch size


def test_temperature_calibration_and_decision():
    d = Decision(temperature=2.0, threshold=0.5, unsure_lo=0.4, unsure_hi=0.6)
    p = d.calibrate(np.array([0.5, 0.9, 0.1, 0.999]))
    assert p[0] == pytest.approx(0.5)
    assert p[1] == pytest.approx(1 / (1 + np.exp(-np.log(9) / 2)))  # sigmoid(logit(0.9) / 2) = 0.75
    assert p[2] == pytest.approx(1 - p[1]) and p[3] < 0.999
    assert [d.label(x) for x in (0.1, 0.45, 0.55, 0.61)] == ["real", "unsure", "unsure", "fake"]
    with pytest.raises(ModelLoadError):
        Decision.from_metadata({"calibration": {"temperature": 0}})


def test_no_real_or_fake_answer_under_two_to_one_odds_even_when_the_fitted_band_is_empty():
    # An accurate model's fitted band can shrink to its threshold (v10 as sent: [0.51, 0.51]); served as fitted,
    # a face at 48 % would be told "looks real" and one at 53 % "likely fake".
    meta = {"calibration": {"temperature": 1.2}, "decision": {"threshold": 0.51, "unsure_band": [0.51, 0.51]},
            "decision_realigned": {"threshold": 0.6, "unsure_band": [0.2151, 0.8914]}}
    d = Decision.from_metadata(meta)
    assert [d.label(x) for x in (0.3, 0.34, 0.48, 0.53, 0.66, 0.67, 0.9)] == [
        "real", "unsure", "unsure", "unsure", "unsure", "fake", "fake"]
    wide = Decision.from_metadata(meta, realigned=True)  # a band already wider than the floor stays as fitted
    assert (wide.unsure_lo, wide.unsure_hi) == (0.2151, 0.8914)


def test_overall_label_fake_if_any_face_confidently_fake():
    f = lambda label, p: FaceVerdict(box=[0, 0, 99, 99], label=label, p_fake=p, size_px=99)  # noqa: E731
    assert overall([]) == ("no_face", None)
    assert overall([f("real", 0.1), f("fake", 0.9), f("unsure", 0.5)]) == ("fake", 0.9)
    assert overall([f("real", 0.1), f("unsure", 0.5)]) == ("unsure", 0.5)
    assert overall([f("real", 0.1), f("real", 0.2)]) == ("real", 0.2)


def test_watcher_swaps_only_on_a_loadable_promote(tmp_path):
    write_tiny_model(tmp_path, "a", "1")
    w = ModelWatcher(tmp_path)
    assert not w.refresh() and w.current.ident == "a@1"
    write_tiny_model(tmp_path, "b", "7", promote=False)
    promote_model(tmp_path, "b")
    assert w.refresh() and w.current.ident == "b@7"
    promote_model(tmp_path, "missing")
    assert not w.refresh() and w.current.ident == "b@7"


# ---------------------------------------------------------------- publishing (real Redis)

def _payload(platform: str) -> dict:
    return JobPayload.new(platform, {"chat_id": 1}, image_sha256="cd" * 32).to_dict()


def test_publish_is_once_per_request(redis_url):
    r = redis.Redis.from_url(redis_url)
    s = Settings(redis_url=redis_url)
    p = _payload("line")
    r.set(p["image_key"], b"bytes")
    v = Verdict(p["request_id"], "real", 0.1, model={"name": "m", "version": "1"})
    assert publish(r, p, v, s, marked=b"jpeg") is True
    assert publish(r, p, v, s) is False  # a retried job publishes nothing more
    assert r.xlen(outbox_stream("line")) == 1
    assert r.get(p["image_key"]) is None
    assert json.loads(r.get(cache_key("cd" * 32)))["label"] == "real"
    assert r.get(f"zhenjia:marked:{p['request_id']}") == b"jpeg"


def test_web_result_has_ttl_and_errors_are_not_cached(redis_url):
    r = redis.Redis.from_url(redis_url)
    s = Settings(redis_url=redis_url, result_ttl_s=77)
    p = _payload("web")
    publish(r, p, Verdict.failed(p["request_id"]), s)
    assert r.llen(result_key(p["request_id"])) == 1 and 0 < r.ttl(result_key(p["request_id"])) <= 77
    assert r.get(cache_key("cd" * 32)) is None


def test_failure_callback_answers_only_after_the_last_try(redis_url):
    r = redis.Redis.from_url(redis_url)
    p = _payload("web")
    job = Queue(QUEUE_NAME, connection=r, serializer=JSONSerializer).enqueue(
        JOB_FUNCTION, p, job_id=p["request_id"], retry=Retry(max=1), on_failure=Callback(FAILURE_CALLBACK))
    report_failure(job, r, RuntimeError, RuntimeError("boom"), None)  # a try failed, one retry left
    assert r.llen(result_key(p["request_id"])) == 0
    job.retries_left = 0
    report_failure(job, r, RuntimeError, RuntimeError("boom"), None)
    v = Verdict.from_dict(json.loads(r.lpop(result_key(p["request_id"]))))
    assert v.label == "error" and v.reasons == ["worker_failed"]


def test_marked_copy_boxes_faces_in_their_verdict_colour():
    from inference_worker.marking import COLOURS, marked_jpeg

    picture = Image.new("RGB", (2560, 1440), (128, 128, 128))
    faces = [FaceVerdict(box=[200, 400, 400, 400], label="fake", p_fake=0.93, size_px=400),
             FaceVerdict(box=[2300, 1200, 250, 230], label="real", p_fake=0.05, size_px=230)]
    marked = Image.open(io.BytesIO(marked_jpeg(picture, faces))).convert("RGB")
    assert marked.size == (1280, 720)  # halved: boxes scale with it
    left_edge = np.asarray(marked.crop((99, 300, 102, 360)), int).reshape(-1, 3).mean(axis=0)
    assert np.abs(left_edge - COLOURS["fake"]).max() < 40
    right_face_edge = np.asarray(marked.crop((1150, 650, 1152, 700)), int).reshape(-1, 3).mean(axis=0)
    assert np.abs(right_face_edge - COLOURS["real"]).max() < 40


def test_faces_cut_out_of_photos_get_the_realigned_calibration(tmp_path, face):
    """A model with two calibrations: the sent crop uses one, a face found inside a photo the other."""
    from inference_worker.pipeline import Pipeline
    folder = write_tiny_model(tmp_path, "two-cal", bias=2.0)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["calibration_realigned"] = {"method": "temperature", "temperature": 4.0}
    meta["decision_realigned"] = {"threshold": 0.4, "unsure_band": [0.2, 0.95]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    pipe = Pipeline(Settings(models_dir=tmp_path))
    clf = pipe.models.current
    assert clf.decision_realigned.temperature == 4.0 and clf.decision.temperature == 1.5
    raw = clf.raw(np.asarray(face, np.float32)[None])[0]
    sent = pipe.check(_jpeg(face, 95), "sent").verdict.faces[0]
    canvas = Image.new("RGB", (900, 700), (90, 120, 150))
    canvas.paste(face.resize((220, 220), Image.Resampling.LANCZOS), (300, 200))
    pasted = pipe.check(_jpeg(canvas, 90), "photo").verdict.faces[0]
    assert not sent.realigned and pasted.realigned
    assert sent.p_fake == pytest.approx(float(clf.decision.calibrate(np.array([raw]))[0]), abs=2e-3)
    # Temperature 4 pulls the re-aligned face's probability much closer to 0.5 than temperature 1.5 does.
    assert abs(pasted.p_fake - 0.5) < abs(sent.p_fake - 0.5) * 0.6
    assert pasted.label == clf.decision_realigned.label(pasted.p_fake)
    # A model without a second calibration (older model files) uses its one decision for both.
    assert Decision.from_metadata({"decision": {"threshold": 0.6}}, realigned=True).threshold == 0.6


def test_verdicts_with_unknown_face_fields_still_parse():
    """A bot reading a newer worker's verdict during a rolling update must not fail on a new field."""
    v = Verdict.from_dict({"request_id": "r", "label": "real", "p_fake": 0.1,
                           "faces": [{"box": [1, 2, 3, 4], "label": "real", "p_fake": 0.1, "size_px": 3,
                                      "from_the_future": True}]})
    assert v.faces[0].p_fake == 0.1 and v.faces[0].realigned is False


class _CentreDetector:
    """A second detector behind the same seam: one FFHQ-framed face filling a square picture."""

    device = "none"

    def detect(self, image):
        from inference_worker.faces import Face
        n = image.width / 256  # where FFHQ's 256-px crops put the eyes and mouth corners
        marks = {"left_eye": (95.4 * n, 119.6 * n), "right_eye": (159.3 * n, 119.6 * n), "nose": (128 * n, 157 * n),
                 "mouth_left": (97 * n, 185 * n), "mouth_right": (157 * n, 185 * n)}
        return [Face((round(60 * n), round(70 * n), round(136 * n), round(150 * n)), 0.99, marks)]


def test_pipeline_takes_another_detector_and_keeps_the_shared_alignment(tmp_path, face):
    from inference_worker.pipeline import Pipeline
    write_tiny_model(tmp_path, "det-seam")
    pipe = Pipeline(Settings(models_dir=tmp_path), detector=_CentreDetector())
    v = pipe.check(_jpeg(face.resize((512, 512)), 95), "seam").verdict
    assert pipe.detector.device == "none" and len(v.faces) == 1
    assert v.faces[0].box == [120, 140, 272, 300] and v.faces[0].detector_confidence == 0.99
    assert not v.faces[0].realigned  # its landmarks frame the whole picture: passed through, as with ours
