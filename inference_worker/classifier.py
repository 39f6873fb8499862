"""The promoted face classifier: load it once, call it fast, calibrate, decide, and hot-swap on promote."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import apply_temperature, logit, served_band
from core.models import (LITERT_FILE, METADATA_FILE, MODEL_FILE, PROMOTED_FILE, RESIZE_LAYER, InvalidModelName,
                         check_model_name, file_sha256)
from core.second_opinion import CROPS_DIR, SECOND_DIR, combine, read_crops_entry, read_entry
from core.settings import env

log = logging.getLogger(__name__)

# auto: LiteRT when the model folder has a checked model.tflite and no GPU is visible (TF is faster on a GPU).
RUNTIMES = ("auto", "litert", "tensorflow")
LITERT_MAX_ABS_DIFF = 1e-3  # of P(fake) against the Keras model at load; a sound file differs by ~1e-6


def threads_from_env() -> int:
    """WORKER_TF_THREADS (TensorFlow's and LiteRT's threads; 0 = all cores): a worker's setting, not the bot's."""
    return int(float(env("WORKER_TF_THREADS", "0")))


def runtime_from_env() -> tuple[str, int]:
    """(WORKER_CLASSIFIER_RUNTIME, WORKER_TF_THREADS): a worker's settings, not the bot's (see .env.example)."""
    return env("WORKER_CLASSIFIER_RUNTIME", "auto").lower(), threads_from_env()


def sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def mean_logit(raw: np.ndarray) -> float:
    """The clip aggregate: the mean of the logits of a person's raw per-frame outputs (what T is fitted on)."""
    return float(np.mean(logit(np.asarray(raw, np.float64))))


class ModelLoadError(Exception):
    """The promoted model is missing or cannot be loaded: the worker must not start."""


@dataclass(frozen=True)
class Decision:
    temperature: float
    threshold: float
    unsure_lo: float
    unsure_hi: float

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], realigned: bool = False) -> "Decision":
        """The decision for faces passed through as sent, or for faces the worker re-aligned.

        Models trained with the detector framing carry a second calibration and decision for faces cut
        out of larger pictures; older models have one for both.
        """
        return cls._from(meta, "_realigned" if realigned and "decision_realigned" in meta else "")

    @classmethod
    def for_clips(cls, meta: dict[str, Any]) -> "Decision":
        """The decision for a person in a clip, applied to their aggregate (see `aggregate`).

        `calibration_clip` / `decision_clip` when the model has them (`python -m trainer calibrate-clips`
        fits them on the aggregates of clips made from valid faces); else the re-aligned pair, since every
        face the worker finds in a video frame is cut out of a larger picture.
        """
        if "decision_clip" in meta:
            return cls._from(meta, "_clip")
        return cls.from_metadata(meta, realigned=True)

    @classmethod
    def _from(cls, meta: dict[str, Any], suffix: str) -> "Decision":
        cal = meta.get("calibration" + suffix) or {}
        dec = meta.get("decision" + suffix) or {}
        method = cal.get("method", "temperature")
        t = float(cal.get("temperature", 1.0)) if method in ("temperature", "mean_logit") else 1.0
        threshold = float(dec.get("threshold", 0.5))
        lo, hi = (dec.get("unsure_band") or [threshold, threshold])[:2]
        if not (t > 0 and 0 <= float(lo) <= float(hi) <= 1):
            raise ModelLoadError(f"bad calibration/decision{suffix} in metadata: T={t} band={lo},{hi}")
        return cls(t, threshold, *served_band(lo, hi))  # models written before the floor get it here

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """p = sigmoid(logit(raw) / T), the temperature scaling fitted on the validation split."""
        return apply_temperature(raw, self.temperature)

    def aggregate(self, raw: np.ndarray) -> float:
        """One calibrated P(fake) for a person seen in several frames: p = sigmoid(mean(logit(raw)) / T).

        The mean of the per-frame logits, not of the probabilities: one odd frame moves the answer by its
        share only, and a person seen once gets exactly the per-frame temperature scaling.
        """
        return sigmoid(mean_logit(raw) / self.temperature)

    def label(self, p_fake: float) -> str:
        if self.unsure_lo <= p_fake <= self.unsure_hi:
            return "unsure"
        return "fake" if p_fake >= self.threshold else "real"


def promoted_name(models_dir: Path) -> str:
    path = models_dir / PROMOTED_FILE
    try:
        name = json.loads(path.read_text())["name"]
    except FileNotFoundError:
        raise ModelLoadError(f"no promoted model: {path} is missing (run `python -m trainer promote NAME`)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON with a 'name': {exc}") from None
    try:
        return check_model_name(name)
    except InvalidModelName:
        raise ModelLoadError(f"{path} names an invalid model {name!r}") from None


class Network:
    """One network of a model folder: model.keras as a compiled TF function with a fixed signature (Keras'
    predict() is slow per call), or the same network on LiteRT (model.tflite), which costs about half as much
    per face on CPUs."""

    def __init__(self, folder: Path, meta: dict[str, Any], runtime: str, threads: int, ident: str) -> None:
        model_path = folder / MODEL_FILE
        if not model_path.is_file():
            raise ModelLoadError(f"model file missing: {model_path}")
        self.folder, self.meta, self.ident = folder, meta, ident
        self.input_size = int(meta.get("input_size", 256))
        import keras
        import tensorflow as tf

        from . import layers  # noqa: F401  (registers the layers a served model may contain)

        try:
            self.model = keras.saving.load_model(model_path, compile=False)
        except Exception as exc:  # Keras raises many types for a corrupt zip/config
            raise ModelLoadError(f"cannot load {model_path}: {type(exc).__name__}: {exc}") from None
        n = self.input_size
        self._fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec([None, n, n, 3], tf.float32)])
        self.runtime = "tensorflow"
        self._lite = self._resize = None
        out = self.raw(np.zeros((1, n, n, 3), np.float32))  # trace now, not on the first user's request
        if out.shape != (1,):
            raise ModelLoadError(f"{model_path}: output shape {out.shape} is not (N, 1)")
        if runtime == "litert" or (runtime == "auto" and not tf.config.list_physical_devices("GPU")):
            self._use_litert(threads, required=runtime == "litert")

    def _use_litert(self, threads: int, required: bool) -> None:
        """Serve with model.tflite when the trainer wrote one for this model.keras and it agrees with it.

        Anything wrong with the file (missing, stale, corrupt, disagreeing) keeps TensorFlow serving: slower,
        never a wrong answer. An operator who asked for litert gets the reason as a warning."""
        import tensorflow as tf

        from .litert_net import LiteNet, probe_inputs

        entry, path = self.meta.get("litert"), self.folder / LITERT_FILE
        if not isinstance(entry, dict) or not path.is_file():
            (log.warning if required else log.info)(
                "litert_unavailable model=%s reason=no %s (python -m trainer export-litert %s)",
                self.ident, LITERT_FILE, self.folder.name)
            return
        try:
            if entry.get("sha256") != file_sha256(path):
                raise ValueError(f"{LITERT_FILE} is not the file the trainer wrote for this model")
            net = LiteNet(path, threads if threads > 0 else (os.cpu_count() or 1))
            resize = None
            if entry.get("resize_to"):
                layer = self.model.get_layer(RESIZE_LAYER)
                resize = tf.function(lambda x: layer(x), reduce_retracing=True,
                                     input_signature=[tf.TensorSpec([None, self.input_size, self.input_size, 3],
                                                                    tf.float32)])
            probe = probe_inputs(self.input_size)
            got = net(np.asarray(resize(probe)) if resize is not None else probe)
            diff = float(np.max(np.abs(got - self.raw(probe))))
            if not diff <= LITERT_MAX_ABS_DIFF:
                raise ValueError(f"it disagrees with {MODEL_FILE} by {diff:.1e}")
        except Exception as exc:  # LiteRT and TF raise many types for a bad file
            log.error("litert_rejected model=%s error=%s serving=tensorflow", self.ident, str(exc)[:300])
            return
        self._lite, self._resize, self.runtime = net, resize, "litert"

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """Uncalibrated P(fake) for a float32 batch (N, n, n, 3) of raw RGB 0-255."""
        x = batch.astype(np.float32, copy=False)
        if self._lite is not None:
            return self._lite(np.asarray(self._resize(x)) if self._resize is not None else x)
        return np.asarray(self._fn(x)).reshape(-1)


class Classifier:
    """One loaded model: its network, and where the model has them, a second network that looks again at the
    faces the first is not sure of (`second_opinion`) and a network of its own for the faces passed through as
    sent (`crops`); then calibration and the decision."""

    def __init__(self, model_dir: Path, runtime: str = "auto", threads: int = 0) -> None:
        meta_path = model_dir / METADATA_FILE
        if runtime not in RUNTIMES:
            raise ModelLoadError(f"WORKER_CLASSIFIER_RUNTIME={runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if not (model_dir / MODEL_FILE).is_file():  # before the metadata: the clearer of the two errors
            raise ModelLoadError(f"model file missing: {model_dir / MODEL_FILE}")
        try:
            self.metadata: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"metadata missing or invalid: {meta_path}: {exc}") from None
        self.name = str(self.metadata.get("name") or model_dir.name)
        self.version = str(self.metadata.get("version") or "0")
        self.decision = Decision.from_metadata(self.metadata)  # faces passed through as sent
        self.decision_realigned = Decision.from_metadata(self.metadata, realigned=True)
        self.decision_clip = Decision.for_clips(self.metadata)  # a person in a clip: mean logit of their frames
        self.net = Network(model_dir, self.metadata, runtime, threads, self.ident)
        self.input_size = self.net.input_size
        # A second network for the faces the first is not sure of (core/second_opinion.py), when the model has one.
        self.second: Network | None = None
        self.defer_below = 0.0
        if "second_opinion" in self.metadata:
            self.defer_below = self._entry(read_entry, self.metadata["second_opinion"])
            self.second = self._inner(model_dir / SECOND_DIR, runtime, threads)
        # A network of its own for passed-through crops (trainer by-framing), when the model has one.
        self.crops: Network | None = None
        self.crops_defer_below = 0.0
        if "crops" in self.metadata:
            self.crops_defer_below = self._entry(read_crops_entry, self.metadata["crops"], self.second is not None)
            self.crops = self._inner(model_dir / CROPS_DIR, runtime, threads)
        # litert only when every network runs on it
        nets = [n for n in (self.net, self.second, self.crops) if n is not None]
        self.runtime = "litert" if all(n.runtime == "litert" for n in nets) else "tensorflow"

    def _entry(self, read, entry: Any, *args: Any) -> float:
        try:
            return read(entry, *args)
        except ValueError as exc:
            raise ModelLoadError(f"{self.ident}: its metadata cannot be served: {exc}") from None

    def _inner(self, folder: Path, runtime: str, threads: int) -> Network:
        """A network in a folder of the model's own (second/, crops/): one network taking the model's face size."""
        try:
            meta = json.loads((folder / METADATA_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.ident}: {folder.name}/ cannot be served: {exc}") from None
        if int(meta.get("input_size", 256)) != self.input_size or "second_opinion" in meta or "crops" in meta:
            raise ModelLoadError(f"{self.ident}: {folder} must take {self.input_size}-px faces and be one network")
        return Network(folder, meta, runtime, threads, f"{self.ident}/{folder.name}")

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"

    def first(self, realigned: bool) -> tuple[Network, float]:
        """(the network that answers a face of this framing first, the bar under which the second one is asked)."""
        if realigned or self.crops is None:
            return self.net, self.defer_below
        return self.crops, self.crops_defer_below

    def _raw(self, batch: np.ndarray, realigned: bool) -> np.ndarray:
        net, bar = self.first(realigned)
        first = net.raw(batch)
        return first if self.second is None or bar <= 0 else combine(first, batch, self.second.raw, bar)

    def raw(self, batch: np.ndarray, realigned: np.ndarray | None = None) -> np.ndarray:
        """Uncalibrated P(fake) for a float32 batch (N, n, n, 3) of raw RGB 0-255.

        `realigned[i]` False: face i was passed through as sent, and a model with a crop network answers it
        with that one. None: every face is answered as a re-aligned one (clips, whose calibration was fitted
        on exactly that)."""
        if realigned is None or self.crops is None:
            return self._raw(batch, True)
        realigned = np.asarray(realigned, bool).reshape(-1)
        out = np.empty(len(batch), np.float32)
        for framing in (True, False):
            if (pick := realigned == framing).any():
                out[pick] = self._raw(batch[pick], framing)
        return out

    def decision_for(self, realigned: bool) -> Decision:
        return self.decision_realigned if realigned else self.decision

    def p_fake(self, batch: np.ndarray, realigned: np.ndarray | None = None) -> np.ndarray:
        """Calibrated P(fake); `realigned[i]` says face i was re-aligned out of a larger picture (None: every face
        was passed through as sent)."""
        if realigned is None:
            return self.decision.calibrate(self.raw(batch, np.zeros(len(batch), bool)))
        raw = self.raw(batch, realigned)
        return np.where(realigned, self.decision_realigned.calibrate(raw), self.decision.calibrate(raw))


class ModelWatcher:
    """Serves the promoted model; a cheap stat of promoted.json between jobs notices a promote."""

    def __init__(self, models_dir: Path, runtime: str = "auto", threads: int = 0) -> None:
        self.models_dir = Path(models_dir)
        self.runtime, self.threads = runtime, threads
        self._stamp: tuple[int, int] | None = None
        self.current: Classifier = self._load()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.models_dir / PROMOTED_FILE)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> Classifier:
        stamp = self._stat()
        name = promoted_name(self.models_dir)
        clf = Classifier(self.models_dir / name, self.runtime, self.threads)
        self._stamp = stamp
        log.info("model_loaded model=%s runtime=%s", clf.ident, clf.runtime)
        return clf

    def refresh(self) -> bool:
        """Load and swap in a newly promoted model; keep serving the old one if the new one is broken."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            name = promoted_name(self.models_dir)
            if name == self.current.name and (self.models_dir / name / METADATA_FILE).is_file():
                meta = json.loads((self.models_dir / name / METADATA_FILE).read_text())
                if str(meta.get("version")) == self.current.version:
                    self._stamp = stamp
                    return False
            new = self._load()
        except (ModelLoadError, OSError, ValueError) as exc:
            self._stamp = stamp  # do not retry a broken promote on every job
            log.error("model_reload_failed error=%s serving=%s", str(exc)[:300], self.current.ident)
            return False
        old, self.current = self.current, new
        log.info("model_swapped old=%s new=%s", old.ident, new.ident)
        return True

