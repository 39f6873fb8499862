"""The models dir: model folders with metadata, and promoted.json (what the workers serve)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from core.models import METADATA_FILE, MODEL_FILE, PROMOTED_FILE, check_model_name, file_sha256


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_version(created_at: str, model_path: Path) -> str:
    """Short and unique per trained model: compact creation time + first 8 hex of the file's sha256."""
    compact = created_at.replace("-", "").replace(":", "").replace("T", "T").rstrip("Z")
    return f"{compact}-{file_sha256(model_path)[:8]}"


def library_versions() -> dict[str, str]:
    import importlib
    import keras
    import numpy
    backend = keras.backend.backend()  # only the backend's own library: another may not be installed
    out = {"python": platform.python_version(), backend: importlib.import_module(backend).__version__,
           "keras": keras.__version__, "keras_backend": backend, "numpy": numpy.__version__}
    try:
        import PIL
        out["pillow"] = PIL.__version__
    except ImportError:
        pass
    return out


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; workers under another user must read it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_dir(models_dir: Path, name: str) -> Path:
    return models_dir / check_model_name(name)


def find_model(model: str, models_dir: Path) -> Path:
    """A model name under models_dir, or a path to a model folder; it must hold a metadata.json and a model."""
    folder = Path(model) if Path(model).is_dir() else model_dir(models_dir, model)
    for f in (METADATA_FILE, MODEL_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"no model at {folder} ({f} missing)")
    return folder


def read_metadata(folder: Path) -> dict[str, Any]:
    return json.loads((folder / METADATA_FILE).read_text())


def promote(models_dir: Path, name: str) -> dict[str, str]:
    """Make models/<name> the served model; refuses a folder without a loadable-looking model."""
    folder = model_dir(models_dir, name)
    for f in (MODEL_FILE, METADATA_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"cannot promote {name!r}: {folder / f} is missing")
    meta = read_metadata(folder)
    if meta.get("name") != name:
        raise ValueError(f"cannot promote {name!r}: its metadata names it {meta.get('name')!r}")
    payload = {"name": name, "promoted_at": utc_now()}
    write_json_atomic(models_dir / PROMOTED_FILE, payload)
    return payload


def promoted(models_dir: Path) -> dict[str, str] | None:
    p = models_dir / PROMOTED_FILE
    return json.loads(p.read_text()) if p.is_file() else None
