"""The models folder's layout: file names and what counts as a model name (trainer writes, worker reads)."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE = "model.keras"
LITERT_FILE = "model.tflite"  # optional: the same network for LiteRT (CPU workers prefer it)
# The model's first layer when its working size is not 256: model.tflite holds the network after it (LiteRT
# has no kernel for its antialiased resize), so the worker runs this layer of model.keras first.
RESIZE_LAYER = "resize"
METADATA_FILE = "metadata.json"
PROMOTED_FILE = "promoted.json"  # {"name": ...}: the model every worker serves


class InvalidModelName(ValueError):
    """A model name that is not a plain folder name inside the models folder."""


def check_model_name(name: object) -> str:
    """The name itself when it is a plain folder name; a path, a dot-file or promoted.json is refused."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".") \
            or name == PROMOTED_FILE:
        raise InvalidModelName(f"invalid model name {name!r}: a plain folder name is needed")
    return name


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a model file, read in 1 MiB chunks (versions end with it; model.tflite is checked by it)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
