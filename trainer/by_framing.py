"""`python -m trainer by-framing MODEL CROPS [--defer-below L]`: one served model that answers each framing with
the network that is best at it.

The worker passes a picture that already is a dataset-style crop through as sent, and re-aligns every other face
(photos, clips); each framing has its own calibration. Networks differ by framing: fine-tuning every layer
(`--freeze-blocks 0`) gave the best network yet on the dataset's own crops and a worse one on re-aligned faces.
The new folder is MODEL's (its networks, its photo and clip calibrations, unchanged: re-aligned faces are answered
exactly as before) plus CROPS' network in `crops/`, which answers passed-through crops; where its |logit| is under
L, MODEL's second network (if it has one) also looks. Only the as-sent calibration and decision are fitted again,
on valid; test is measured. Files are copied byte for byte, so git stores each network once.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from core.models import LITERT_FILE, METADATA_FILE, MODEL_FILE
from core.second_opinion import CROPS_DIR, SECOND_DIR, read_crops_entry
from trainer.config import TrainConfig
from trainer.data import fingerprint, predict_split, scan_split
from trainer.registry import library_versions, make_version, model_dir, read_metadata, utc_now, write_json_atomic
from trainer.report import classification_metrics

log = logging.getLogger("trainer.by_framing")


def load_crop_path(folder: Path, meta: dict[str, Any]):
    """What a by-framing model answers for a passed-through crop, called like a Keras model (P(fake), (N, 1))."""
    import keras

    import inference_worker.layers  # noqa: F401  (build calls this directly: a crop run saved with --flip-average)
    from trainer.second_opinion import SecondOpinionModel
    bar = read_crops_entry(meta["crops"], "second_opinion" in meta)
    crops = keras.models.load_model(folder / CROPS_DIR / MODEL_FILE, compile=False)
    if bar <= 0:
        return crops
    second = keras.models.load_model(folder / SECOND_DIR / MODEL_FILE, compile=False)
    return SecondOpinionModel(crops, second, bar, read_metadata(folder / SECOND_DIR))


def _run(meta: dict[str, Any]) -> str:
    return f"{meta.get('name')}@{meta.get('version')}"


def build(model: Path, crops: Path, name: str, defer_below: float, data_dir: Path, models_dir: Path,
          overwrite: bool = False) -> Path:
    """Write models/<name>/: MODEL's folder with CROPS' network in crops/, its as-sent calibration fitted again."""
    from trainer.evaluation import check_one_network
    from trainer.second_opinion import inner_metadata
    from trainer.training import fit_calibration, measure_test, write_report
    out = model_dir(models_dir, name)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pick another --name or pass --overwrite")
    base, crop_meta = read_metadata(model), read_metadata(crops)
    if "crops" in base:
        raise ValueError(f"{model.name} already has a crop network: build from the model it was made of")
    check_one_network(crops, "the crop network of a by-framing model")
    entry = {"folder": CROPS_DIR, "defer_below": float(defer_below), "of": _run(crop_meta)}
    read_crops_entry(entry, "second_opinion" in base)  # the worker's own check, before anything is written
    t0 = time.perf_counter()
    c = TrainConfig.from_dict(base.get("train_config") or {})  # the faces MODEL was fitted on
    splits = {s: scan_split(data_dir, s, c.limit_per_class) for s in ("train", "valid", "test")}
    tmp = models_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp, ignore=shutil.ignore_patterns("report"))  # MODEL's report is not this model's
    (tmp / CROPS_DIR).mkdir()
    inner = inner_metadata(crop_meta)
    shutil.copyfile(crops / MODEL_FILE, tmp / CROPS_DIR / MODEL_FILE)
    if isinstance(crop_meta.get("litert"), dict) and (crops / LITERT_FILE).is_file():
        shutil.copyfile(crops / LITERT_FILE, tmp / CROPS_DIR / LITERT_FILE)
        inner["litert"] = crop_meta["litert"]  # the same bytes, so the same checked hash
    write_json_atomic(tmp / CROPS_DIR / METADATA_FILE, inner)
    meta = {**base, "name": name, "crops": entry}
    if "decision_realigned" not in base:  # MODEL's one calibration served every face: it stays re-aligned faces'
        meta.update(calibration_realigned=base["calibration"], decision_realigned=base["decision"])
    net = load_crop_path(tmp, meta)
    log.info("by framing: crops answered by %s, re-aligned faces by %s; calibrating crops on valid", entry["of"],
             _run(base))
    # Calibration and the decision are chosen on valid only; test is measured, never used to choose.
    p_raw, y = predict_split(net, splits["valid"])
    cal, dec, p_val = fit_calibration(p_raw, y, c.unsure_target_accuracy)
    meta["calibration"] = {**cal, "fitted_on": "valid as sent (dataset-style crops, passed through), answered by "
                                               f"the crop network {entry['of']}"}
    meta["decision"] = dec
    meta["metrics"] = {**base.get("metrics", {}),
                       "valid": classification_metrics(p_val, y, dec["threshold"], dec["unsure_band"], p_raw)}
    curves = {"valid": (p_val, y)}
    measure_test(net, meta, splits["test"], curves)
    created_at = utc_now()
    runs = [_run(base), entry["of"]]
    meta.update(version=make_version(created_at, tmp / MODEL_FILE), created_at=created_at,
                by_framing_of=runs, data_fingerprint=fingerprint(splits), library_versions=library_versions(),
                params=int(base.get("params", 0)) + int(crop_meta.get("params", 0)),
                training={"device": "CPU", "by_framing_of": runs, "wall_time_s": round(time.perf_counter() - t0, 1),
                          "train_images": len(splits["train"])})
    write_report(tmp / "report", meta, curves, {})
    write_json_atomic(tmp / METADATA_FILE, meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the folder appears complete or not at all
    return out
