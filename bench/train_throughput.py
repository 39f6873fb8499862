"""Training throughput (images/s) of this trainer's tf.data pipeline vs the seed's recipe, same model, same run.

The seed streamed JPEGs with ImageDataGenerator.flow_from_directory; Keras 3 dropped ImageDataGenerator, so its
closest equivalent here is keras.utils.image_dataset_from_directory (decode every epoch, no prefetch). Both feed
the same architecture at the same working size; each gets a fresh model. Ours is measured with its chat-app
augmentation ON (more work per image than the seed's), cold (first epoch: decode + cache) and warm.

    .venv/bin/python bench/train_throughput.py [--arch resnet --image-size 128 --per-class 512 --epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _subset(src: Path, dst: Path, per_class: int) -> Path:
    """Symlinks to the first N images per class of train: both pipelines read exactly the same files."""
    for cls in ("real", "fake"):
        (dst / "train" / cls).mkdir(parents=True, exist_ok=True)
        for p in sorted((src / "train" / cls).iterdir())[:per_class]:
            link = dst / "train" / cls / p.name
            if not link.exists():
                link.symlink_to(p)
    return dst


def _epoch_rate(model, ds, n: int) -> float:
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import tempfile

    import keras
    import tensorflow as tf

    from trainer.architectures import build_model
    from trainer.config import TrainConfig, default_data_dir
    from trainer.data import scan_split, train_dataset

    src = Path(a.data_dir) if a.data_dir else default_data_dir()
    root = _subset(src, Path(tempfile.mkdtemp(prefix="bench-")), a.per_class)
    n = 2 * a.per_class
    cfg = TrainConfig(arch=a.arch, width=a.width, image_size=a.image_size).resolved()

    def fresh():
        keras.utils.set_random_seed(0)
        m = build_model(cfg)
        m.compile(optimizer="adam", loss="binary_crossentropy")
        return m

    # Seed recipe: stream from directory, decode every epoch, no cache/prefetch/augmentation.
    seed_ds = keras.utils.image_dataset_from_directory(
        root / "train", labels="inferred", label_mode="binary", class_names=["real", "fake"],
        image_size=(256, 256), batch_size=a.batch_size, shuffle=True, seed=0, verbose=False)
    ours_ds = train_dataset(scan_split(root, "train"), a.batch_size, "chat", (60, 95), cache=True, seed=0)

    # Pipelines alone (no model): is the input ever the bottleneck?
    def drain(ds) -> float:
        t0 = time.perf_counter()
        k = sum(int(x.shape[0]) for x, _ in ds)
        return k / (time.perf_counter() - t0)

    seed_pipe = drain(seed_ds)
    ours_pipe_cold, ours_pipe_warm = drain(ours_ds), drain(ours_ds)
    ours_ds = train_dataset(scan_split(root, "train"), a.batch_size, "chat", (60, 95), cache=True, seed=0)

    # Epochs alternate between the two so that both see the same load on a shared machine.
    # "ours, same work" is our pipeline with the seed's (no) augmentation: the pipelines alone compared.
    plain_ds = train_dataset(scan_split(root, "train"), a.batch_size, "none", (60, 95), cache=True, seed=0)
    seed_model, ours_model, plain_model = fresh(), fresh(), fresh()
    seed_rates: list[float] = []
    ours_rates: list[float] = []
    plain_rates: list[float] = []
    for _ in range(a.epochs):
        seed_rates.append(_epoch_rate(seed_model, seed_ds, n))
        plain_rates.append(_epoch_rate(plain_model, plain_ds, n))
        ours_rates.append(_epoch_rate(ours_model, ours_ds, n))
    seed_warm = statistics.median(seed_rates[1:] or seed_rates)
    ours_warm = statistics.median(ours_rates[1:] or ours_rates)
    plain_warm = statistics.median(plain_rates[1:] or plain_rates)
    print(f"machine: {os.cpu_count()} CPUs, tensorflow {tf.__version__}, model {a.arch} width {a.width} "
          f"at {a.image_size}px, {n} train images, batch {a.batch_size}")
    print(f"input pipeline alone     seed {seed_pipe:8.1f} img/s   ours cold {ours_pipe_cold:8.1f}  "
          f"warm {ours_pipe_warm:8.1f} img/s (with chat augmentation)")
    print("training, per epoch      seed " + " ".join(f"{r:.1f}" for r in seed_rates) + " img/s")
    print("                         ours, same work (no augmentation) " + " ".join(f"{r:.1f}" for r in plain_rates)
          + " img/s")
    print("                         ours, chat augmentation " + " ".join(f"{r:.1f}" for r in ours_rates) + " img/s")
    print(f"ratio ours/seed, same work (median of epochs after the first): {plain_warm / seed_warm:.2f}x")
    print(f"ratio ours with chat augmentation / seed without: {ours_warm / seed_warm:.2f}x   "
          f"(first epochs, ours decoding into its cache: {ours_rates[0] / seed_rates[0]:.2f}x)")


if __name__ == "__main__":
    main()
