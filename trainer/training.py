"""One training run: dataset → fit (early stopping, best checkpoint, resumable) → calibrate → models/<name>/."""

from __future__ import annotations

import csv
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibration import (apply_temperature, choose_threshold, choose_unsure_band,
                                 expected_calibration_error, fit_temperature)
from trainer.config import TrainConfig
from trainer.data import (CLASS_NAMES, INPUT_SIZE, DatasetError, balance_report, class_weights, eval_dataset,
                          Split, fingerprint, predict_split, scan_split, train_dataset)
from trainer.registry import (MODEL_FILE, METADATA_FILE, library_versions, make_version, model_dir, read_metadata,
                              utc_now, write_json_atomic)
from trainer.report import classification_metrics, plot_confusion, plot_history, plot_roc, write_metrics_json

log = logging.getLogger("trainer")
CACHE_AUTO_MAX = 20_000  # --cache auto keeps decoded images in memory below this many (~190 KB each)


FIT_FILE = "fit.json"  # in checkpoints/<name>/: the fit finished (maybe on another machine); what it was
# Settings that do not change what a fit learns: a finished fit is finalized whatever they are now.
NOT_LEARNED = ("name", "models_dir", "checkpoints_dir", "overwrite", "verbose", "evaluate_test", "flip_average",
               "unsure_target_accuracy", "stop_after", "feed", "feed_workers", "feed_processes", "framing_workers",
               "cache", "mixed_precision", "data_dir")


class _OneDevice:
    """What a non-TensorFlow backend needs of a tf.distribute strategy: a scope that changes nothing."""

    def scope(self):
        import contextlib
        return contextlib.nullcontext()


def _strategy_and_precision(c: TrainConfig):
    """MirroredStrategy over several GPUs (TensorFlow), mixed precision on GPUs; the default strategy otherwise."""
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        gpus = len(tf.config.list_physical_devices("GPU"))
    elif backend == "jax":
        import jax
        gpus = sum(d.platform == "gpu" for d in jax.devices())
    else:
        import torch
        gpus = torch.cuda.device_count()
    # float16 needs TensorFlow's loss scaling; bfloat16 (Ampere and later) needs none.
    half = "mixed_float16" if backend == "tensorflow" else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(
        half if c.mixed_precision == "on" or (c.mixed_precision == "auto" and gpus) else "float32")
    if backend != "tensorflow":
        return _OneDevice(), f"{gpus} GPU ({backend})" if gpus else f"CPU ({backend})"
    strategy = tf.distribute.MirroredStrategy() if gpus > 1 else tf.distribute.get_strategy()
    return strategy, f"{gpus} GPU" if gpus else "CPU"


def make_optimizer(c: TrainConfig, steps_per_epoch: int):
    import keras
    lr: Any = c.lr
    if c.schedule == "cosine":
        total = max(1, c.epochs * steps_per_epoch)
        warmup = min(int(c.warmup_epochs * steps_per_epoch), total // 2)
        lr = keras.optimizers.schedules.CosineDecay(c.lr * 0.1 if warmup else c.lr, total - warmup, alpha=0.02,
                                                    warmup_target=c.lr if warmup else None, warmup_steps=warmup)
    if c.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=c.weight_decay)
    if c.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if c.optimizer == "sgd":
        return keras.optimizers.SGD(lr)  # plain SGD, as in the seed's study
    if c.optimizer == "adagrad":
        return keras.optimizers.Adagrad(lr)
    return keras.optimizers.RMSprop(lr)


def _read_csv_history(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    hist: dict[str, list[float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k != "epoch":
                    hist.setdefault(k, []).append(float(v))
    return hist


def _network(c: TrainConfig, strategy, steps: int | None = None):
    """The network to fit (wrapped for distillation with --teacher); compiled when `steps` is given."""
    import keras
    from trainer.architectures import build_model
    with strategy.scope():
        model = build_model(c)
        if c.teacher:
            from trainer.distill import Distilled, load_teacher
            model = Distilled(model, load_teacher(c.teacher, Path(c.models_dir)), c.distill_weight)
        if steps is not None:
            model.compile(optimizer=make_optimizer(c, steps),
                          loss=keras.losses.BinaryCrossentropy(label_smoothing=c.label_smoothing),
                          metrics=["accuracy"])
    return model


def detector_landmarks(c: TrainConfig, splits: dict[str, Split], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The worker's detector landmarks of the named splits' faces on the run's seed canvases (cached)."""
    from trainer.framing import split_landmarks
    return {s: split_landmarks(splits[s], Path(c.checkpoints_dir) / "framing", c.seed, workers=c.framing_workers)
            for s in names}


def _inputs(c: TrainConfig, train: Split, valid: Split, framing: dict[str, np.ndarray]):
    """(training batches, validation batches): tf.data under TensorFlow, else Pillow + numpy (trainer/feed.py)."""
    import keras
    from trainer.framing import align_params
    train_align = align_params(framing["train"]) if "train" in framing else None
    valid_align = align_params(framing["valid"]) if "valid" in framing else None
    backend = keras.backend.backend()
    pillow = c.feed == "pillow" or (c.feed == "auto" and backend != "tensorflow")
    if not pillow and backend != "tensorflow":
        raise ValueError(f"--feed tf needs the TensorFlow backend (KERAS_BACKEND is {backend})")
    if pillow:
        import os
        from trainer.feed import eval_feed, train_feed
        workers = c.feed_workers or os.cpu_count() or 1
        return (train_feed(train, c.batch_size, c.augment, c.jpeg_quality, c.seed, c.framing_jitter, train_align,
                           c.realign_share, c.foreign_share, c.rescale_min, c.small_jpeg, workers,
                           c.feed_processes, c.photo_faces),
                eval_feed(valid, max(c.batch_size, 64), valid_align, workers, c.feed_processes))

    def use_cache(split) -> bool:
        return c.cache == "memory" or (c.cache == "auto" and len(split) < CACHE_AUTO_MAX)
    return (train_dataset(train, c.batch_size, c.augment, c.jpeg_quality, use_cache(train), c.seed,
                          c.framing_jitter, train_align, c.realign_share, c.foreign_share, c.rescale_min,
                          c.small_jpeg, c.photo_faces),
            eval_dataset(valid, max(c.batch_size, 64), use_cache(valid), valid_align))


def _learned(c: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in c.to_dict().items() if k not in NOT_LEARNED}


def _fitted_on(train: Split, valid: Split) -> str:
    return str(fingerprint({"train": train, "valid": valid})["sha256"])  # file names and sizes, any folder


def finished_fit(c: TrainConfig, ckpt: Path, train: Split, valid: Split) -> dict[str, Any] | None:
    """checkpoints/<name>/fit.json when a fit of these settings and faces finished there; refuses another's."""
    path = ckpt / FIT_FILE
    if not path.is_file() or not (ckpt / "best.weights.h5").is_file():
        return None
    import json
    done = json.loads(path.read_text())
    other = {k: (v, done["config"].get(k)) for k, v in _learned(c).items() if done["config"].get(k) != v}
    if done.get("faces") != _fitted_on(train, valid):
        other["faces (train and valid files)"] = ("these", "others")
    if other:
        raise ValueError(f"{ckpt} holds a finished fit with other settings ("
                         + ", ".join(f"{k}: {was!r} there, {now!r} now" for k, (now, was) in sorted(other.items()))
                         + "): run with the same settings, or delete that folder to train again")
    return done


def fit(c: TrainConfig, train, valid, ckpt: Path, strategy, verbose: int | None = None,
        framing: dict[str, np.ndarray] | None = None, device: str = ""):
    """Build, compile and fit; returns (model with the best weights, history, wall seconds).

    `framing`: detector landmarks per split name (`trainer.framing`); training shows a share of the faces
    re-aligned from them, and validation scores every face both as-is and re-aligned. A finished fit leaves
    fit.json beside its best weights, so that finalizing can happen later or on another machine.
    """
    import keras
    import warnings
    # Our datasets are shuffled by tf.data and have unknown length (undecodable files are dropped):
    # Keras's two warnings about that are noise on every epoch.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    keras.utils.set_random_seed(c.seed)
    model = _network(c, strategy, math.ceil(len(train) / c.batch_size))
    train_ds, valid_ds = _inputs(c, train, valid, framing or {})
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / FIT_FILE).unlink(missing_ok=True)
    best = ckpt / "best.weights.h5"
    # A resumed run must not overwrite the best checkpoint with a worse epoch: start from the best so far.
    so_far = _read_csv_history(ckpt / "history.csv").get("val_loss")
    callbacks = [
        # Resumable: an interrupted run restarts from the last finished epoch (same command line).
        keras.callbacks.BackupAndRestore(str(ckpt / "backup")),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=min(so_far) if so_far and best.is_file() else None),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=c.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(ckpt / "history.csv"), append=True),
    ]
    t0 = time.perf_counter()
    # shuffle=False: both pipelines shuffle, seeded; Keras would reorder a PyDataset's batches unseeded.
    model.fit(train_ds, validation_data=valid_ds, epochs=c.epochs, callbacks=callbacks, shuffle=False,
              class_weight=class_weights(train), verbose=c.verbose if verbose is None else verbose)
    wall = time.perf_counter() - t0
    if best.is_file():
        model.load_weights(str(best))
    else:  # no epoch improved on the initial threshold: the weights as they are are the result
        model.save_weights(str(best))
    write_json_atomic(ckpt / FIT_FILE, {"config": _learned(c), "faces": _fitted_on(train, valid),
                                        "wall_time_s": round(wall, 1), "device": device,
                                        "library_versions": library_versions(), "finished_at": utc_now()})
    return model, _read_csv_history(ckpt / "history.csv"), wall


def serving_model(c: TrainConfig, trained):
    """What the workers load: the network without optimizer state (a third of the file size), flip-averaged."""
    import dataclasses
    import keras
    from trainer.architectures import build_model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # CPU workers: float16 compute is slow there
    try:
        clean = build_model(dataclasses.replace(c, weights="none"))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    clean.set_weights(trained.get_weights())
    if c.flip_average:
        from inference_worker.layers import with_flip_average
        return with_flip_average(clean)
    return clean


def train(c: TrainConfig) -> Path:
    """The whole run; returns the written models/<name>/ folder (or, with --stop-after, where it stopped).

    A fit that finished earlier under checkpoints/<name>/ (fit.json), here or on a GPU machine with
    another Keras backend, is finalized instead of trained again.
    """
    c = c.resolved()
    root = Path(c.data_dir)
    models_dir = Path(c.models_dir)
    out = model_dir(models_dir, c.name)
    if out.exists() and not c.overwrite and c.stop_after != "landmarks":
        raise FileExistsError(f"{out} exists: pick another --name or pass --overwrite")
    splits = {s: scan_split(root, s, c.limit_per_class) for s in ("train", "valid")}
    if c.evaluate_test and not c.stop_after:
        try:
            splits["test"] = scan_split(root, "test", c.limit_per_class)
        except DatasetError as e:
            log.warning("no test metrics: %s", e)
    for name, s in splits.items():
        log.info("split=%s %s", name, balance_report(s))
    if c.teacher:  # a missing teacher is reported before the landmarks' minutes, not after
        from trainer.distill import teacher_folders
        teacher_folders(c.teacher, models_dir)
    ckpt = Path(c.checkpoints_dir) / c.name
    done = None if c.stop_after else finished_fit(c, ckpt, splits["train"], splits["valid"])
    # The backend (TensorFlow: 5 s) is imported only now: a bad dataset or name is reported at once (a --teacher
    # check above imports Keras, after the dataset checks).
    strategy, device = _strategy_and_precision(c)
    framing: dict[str, np.ndarray] = {}
    if c.framing == "detector" and done is None:
        t0 = time.perf_counter()
        framing = detector_landmarks(c, splits, ("train", "valid"))
        log.info("framing landmarks ready wall_s=%.1f", time.perf_counter() - t0)
    if c.stop_after == "landmarks":
        return Path(c.checkpoints_dir) / "framing"
    if done is None:
        model, history, wall = fit(c, splits["train"], splits["valid"], ckpt, strategy, framing=framing,
                                   device=device)
    else:
        import dataclasses
        model = _network(dataclasses.replace(c, weights="none"), strategy)  # the fit's weights replace them all
        model.load_weights(str(ckpt / "best.weights.h5"))
        history, wall, device = _read_csv_history(ckpt / "history.csv"), done["wall_time_s"], done["device"]
        log.info("finalizing the fit finished at %s on %s", done.get("finished_at"), device)
    log.info("trained epochs=%d wall_s=%.1f device=%s", len(history.get("loss", [])), wall, device)
    if c.stop_after == "fit":
        return ckpt
    out = finalize(c, splits, serving_model(c, model), history, wall, device, photos=c.framing == "detector")
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: the backup and best checkpoint are in the model now
    return out


def fit_calibration(p_raw: np.ndarray, y: np.ndarray, target_accuracy: float
                    ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """(calibration, decision, calibrated p) fitted on held-out predictions: temperature, threshold, band."""
    temperature = fit_temperature(p_raw, y)
    p_val = apply_temperature(p_raw, temperature)
    threshold = choose_threshold(p_val, y)
    band, band_stats = choose_unsure_band(p_val, y, threshold, target_accuracy)
    cal = {"method": "temperature", "temperature": round(temperature, 5),
           "ece_valid_before": round(expected_calibration_error(p_raw, y), 4),
           "ece_valid_after": round(expected_calibration_error(p_val, y), 4)}
    return cal, {"threshold": threshold, "unsure_band": band, **band_stats}, p_val


def _set_realigned(meta: dict[str, Any], p_raw: np.ndarray, y: np.ndarray, left_out: dict[str, int],
                   target_accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """Fit and set the re-aligned calibration, decision and valid metrics; (calibrated p, y) for the plots."""
    from inference_worker.detector import DETECTOR_ID
    cal, dec, p = fit_calibration(p_raw, y, target_accuracy)
    meta["calibration_realigned"] = {**cal, "fitted_on": "valid faces pasted into photos (96-208 px, JPEG q75-95), "
                                     "cut out by the worker's detector and alignment",
                                     "detector": DETECTOR_ID, "left_out": left_out}
    meta["decision_realigned"] = dec
    meta.setdefault("metrics", {})["valid_realigned"] = classification_metrics(p, y, dec["threshold"],
                                                                               dec["unsure_band"], p_raw)
    return p, y


def calibrate_photos(folder: Path, data_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Refit a model's re-aligned calibration and decision on valid faces cut out by today's detector.

    What a detector change needs when the model keeps its accuracy on the new crops (measure that first):
    the calibration belongs to the crops, not only to the weights. Writes folder/metadata.json.
    """
    from trainer.evaluation import load_model_folder
    from trainer.framing import predict_photos
    model, meta = load_model_folder(folder, realigned=True)
    trained = meta.get("train_config") or {}
    split = scan_split(data_dir, "valid", int(trained.get("limit_per_class", 0)))  # the faces training used
    target = float(trained.get("unsure_target_accuracy", 0.98))
    seed = int(trained.get("seed", 0)) if seed is None else seed  # default: training's own canvases
    p_raw, y, left_out = predict_photos(model, split, seed)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"too few usable photo faces to calibrate on ({len(y)}; left out {left_out})")
    meta = read_metadata(folder)  # again: the least time between reading and replacing the file
    _set_realigned(meta, p_raw, y, left_out, target)
    meta["calibration_realigned"]["calibrated_at"] = utc_now()
    write_json_atomic(folder / METADATA_FILE, meta)
    return meta


def measure_test(model, meta: dict[str, Any], test: Split, curves: dict[str, tuple[np.ndarray, np.ndarray]]
                 ) -> None:
    """Test metrics with the model's own calibration and decision, as sent and recompressed: measured, never used
    to choose anything."""
    from trainer.evaluation import evaluate_split
    for key, recompress in (("test", False), ("test_recompressed", True)):
        m, p, y = evaluate_split(model, meta, test, recompress)
        meta["metrics"][key] = m
        curves[key] = (p, y)


def write_report(rep: Path, meta: dict[str, Any], curves: dict[str, tuple[np.ndarray, np.ndarray]],
                 history: dict[str, list[float]]) -> None:
    """report/: training curves (when there was training), ROC, confusion matrices and metrics.json."""
    rep.mkdir(parents=True, exist_ok=True)
    if history:
        plot_history(history, rep / "training_curves.png")
    plot_roc(curves, rep / "roc.png")
    for key in ("valid", "valid_realigned", "test", "test_recompressed"):
        if key in meta["metrics"]:
            plot_confusion(meta["metrics"][key]["confusion_matrix"], key, rep / f"confusion_{key}.png")
    write_metrics_json(rep / "metrics.json", {"name": meta["name"], "version": meta["version"], **meta["metrics"],
                                              "calibration": meta["calibration"], "decision": meta["decision"],
                                              "training": meta["training"], "history": history})


def finalize(c: TrainConfig, splits: dict[str, Split], model, history: dict[str, list[float]], wall: float,
             device: str, photos: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Calibrate, decide, measure and write models/<name>/ for the SERVED model (what workers load).

    `calibration`/`decision` are fitted on the valid faces as sent (the worker passes a dataset-style
    crop through unchanged). With `photos`, `calibration_realigned`/`decision_realigned` are fitted on
    the same faces pasted into photos and cut out by the worker's detector and alignment; the worker
    applies them to every face it re-aligned.
    """
    from trainer.evaluation import inference_ms_per_image
    models_dir = Path(c.models_dir)
    out = model_dir(models_dir, c.name)
    epochs_run = len(history.get("loss", []))
    # Calibration and the decision are chosen on valid only; test is measured, never used to choose.
    p_raw, y = predict_split(model, splits["valid"])
    cal, dec, p_val = fit_calibration(p_raw, y, c.unsure_target_accuracy)
    created_at = utc_now()
    meta: dict[str, Any] = {
        "name": c.name, "version": "", "arch": c.arch, "input_size": INPUT_SIZE, "image_size": c.image_size,
        "class_names": list(CLASS_NAMES), "positive_class": "fake",
        "calibration": {**cal, "fitted_on": "valid as sent (dataset-style crops, passed through)"},
        "decision": dec,
        "metrics": {}, "data_fingerprint": fingerprint(splits), "train_config": c.to_dict(),
        "library_versions": library_versions(), "created_at": created_at,
    }
    meta["metrics"]["valid"] = classification_metrics(p_val, y, dec["threshold"], dec["unsure_band"], p_raw)
    curves = {"valid": (p_val, y)}
    if photos:
        # Faces the worker re-aligns out of larger pictures get their own calibration and decision: they
        # are softer (shrunk, recompressed, re-sampled) and the model is less sure of them.
        from trainer.framing import predict_photos
        p_raw_r, y_r, left_out = predict_photos(model, splits["valid"], c.seed)
        if len(set(y_r.tolist())) < 2:  # nothing to fit on: the worker uses the one decision for all faces
            log.warning("no realigned calibration: %d photo faces usable (left out %s)", len(y_r), left_out)
            photos = False
    if photos:
        curves["valid_realigned"] = _set_realigned(meta, p_raw_r, y_r, left_out, c.unsure_target_accuracy)
    tmp = models_dir / f".{c.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "report").mkdir(parents=True)
    from trainer.litert_export import split_faces, try_write_litert
    from trainer.second_opinion import SecondOpinionModel
    faces = split_faces(splits["valid"])
    if isinstance(model, SecondOpinionModel):
        litert = model.write(tmp, faces)  # two networks: the first's files, and the second's in second/
    else:
        model.save(tmp / MODEL_FILE)
        litert = try_write_litert(tmp, model, faces)  # what CPU workers run
    meta["version"] = make_version(created_at, tmp / MODEL_FILE)
    if litert:
        meta["litert"] = litert
    if "test" in splits:
        measure_test(model, meta, splits["test"], curves)
    meta["training"] = {"device": device, "wall_time_s": round(wall, 1), "epochs_run": epochs_run,
                        "best_epoch": int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None,
                        "train_images": len(splits["train"]),
                        "images_per_s": round(epochs_run * len(splits["train"]) / wall, 1) if wall else None}
    meta["params"] = int(model.count_params())
    meta["inference_ms_per_image"] = inference_ms_per_image(model)
    meta.update(extra or {})  # what the caller knows about the model (a soup: its runs), in the same one write
    write_report(tmp / "report", meta, curves, history)
    write_json_atomic(tmp / METADATA_FILE, meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the folder appears complete or not at all
    return out
