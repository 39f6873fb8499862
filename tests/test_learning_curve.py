"""bench/learning_curve.py: the shares it trains on and the trend it reads from them."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("learning_curve", REPO / "bench" / "learning_curve.py")
learning_curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning_curve)


def _dataset(root: Path, per_class: int) -> Path:
    for split in ("train", "valid", "test"):
        for cls in ("real", "fake"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class if split == "train" else 3):
                (d / f"{cls}{i:03d}.jpg").write_bytes(b"\xff\xd8\xff" + bytes([i % 256]) * 16)  # a JPEG's head
    (root / "train" / "real" / "notes.txt").write_text("not a face")
    return root


def _train_files(root: Path) -> dict[str, set[str]]:
    return {cls: {p.name for p in (root / "train" / cls).iterdir()} for cls in ("real", "fake")}


def test_shares_nest_and_leave_valid_and_test_whole(tmp_path):
    data = _dataset(tmp_path / "data", 40)
    learning_curve.make_subsets(data, tmp_path / "out", [0.5, 0.25], seed=0)
    half = _train_files(tmp_path / "out" / "share-0.5" / "real-vs-fake")
    quarter = _train_files(tmp_path / "out" / "share-0.25" / "real-vs-fake")
    for cls in ("real", "fake"):
        assert len(half[cls]) == 20 and len(quarter[cls]) == 10  # shares of the images the trainer reads
        assert "notes.txt" not in half[cls]
        assert quarter[cls] <= half[cls]  # a smaller share is part of the larger: one curve, not unrelated draws
        assert half[cls] != {f"{cls}{i:03d}.jpg" for i in range(20)}  # a random share, not the first files by name
    for split in ("valid", "test"):
        linked = tmp_path / "out" / "share-0.25" / "real-vs-fake" / split
        names = {p.name for p in (linked / "real").iterdir()}
        assert names == {p.name for p in (data / split / "real").iterdir()}
    again = tmp_path / "again"
    learning_curve.make_subsets(data, again, [0.25], seed=0)
    assert _train_files(again / "share-0.25" / "real-vs-fake") == quarter  # reproducible from its seed


def test_power_fit_recovers_a_known_exponent_and_refuses_what_it_cannot_fit():
    ns = [1000, 2000, 4000, 8000]
    b, a = learning_curve.power_fit(ns, [3.0 * n ** -0.4 for n in ns])
    assert abs(b + 0.4) < 1e-9 and abs(math.exp(a) - 3.0) < 1e-9
    assert learning_curve.power_fit([1000], [0.1]) is None
    assert learning_curve.power_fit([1000, 2000], [0.1, 0.0]) is None  # a zero has no logarithm: one point left
