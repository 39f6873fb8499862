"""`python -m trainer` = train; subcommands evaluate, sweep, preview, promote, soup, ensemble, second-opinion,
by-framing, calibrate-photos/-clips, export-litert."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.config import TrainConfig, add_config_arguments, config_from_args, default_data_dir

SUBCOMMANDS = ("train", "evaluate", "sweep", "preview", "promote", "soup", "ensemble", "second-opinion",
               "by-framing", "calibrate-photos", "calibrate-clips", "export-litert")

# The seed's L9(3^3) orthogonal array: 9 runs cover every pair of levels of the three factors once.
L9 = ((0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 1), (1, 1, 2), (1, 2, 0), (2, 0, 2), (2, 1, 0), (2, 2, 1))
L9_LEVELS = {"lr": (0.005, 0.001, 0.0001), "optimizer": ("adam", "sgd", "adagrad"),
             "activation": ("relu", "tanh", "sigmoid")}


def _models_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from core.settings import Settings
    return Settings.from_env().models_dir


def _model_folder(model: str, models_dir: str) -> Path:
    from trainer.registry import find_model
    return find_model(model, _models_dir(models_dir))


def _data_dir(arg: str) -> Path:
    return Path(arg) if arg else default_data_dir()


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train a real-vs-GAN face classifier on DIR/{train,valid,test}/{real,fake} and write "
                    "models/<name>/ (model.keras, metadata.json, report/). Other commands: "
                    "`python -m trainer {evaluate,sweep,preview,promote,soup,ensemble,second-opinion,by-framing,"
                    "calibrate-photos,calibrate-clips,export-litert} --help`.")
    add_config_arguments(p)
    return p


def cmd_train(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    c = config_from_args(args)
    if c.data_dir == TrainConfig.data_dir:
        c.data_dir = str(default_data_dir())
    from trainer.training import train
    out = train(c)
    if c.stop_after == "landmarks":
        print(f"framing landmarks for train and valid (seed {c.seed}) are in {out}")
        return 0
    if c.stop_after == "fit":
        print(f"the fit is in {out}; finalize it with the same command without --stop-after")
        return 0
    meta = json.loads((out / "metadata.json").read_text())
    from trainer.report import format_metrics
    print(f"wrote {out} version={meta['version']} temperature={meta['calibration']['temperature']} "
          f"threshold={meta['decision']['threshold']} unsure_band={meta['decision']['unsure_band']}")
    for k, m in meta["metrics"].items():
        print(format_metrics(k, m))
    print(f"promote it with: python -m trainer promote {meta['name']}")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer evaluate",
                                description="Evaluate a model folder on a dataset split with its own calibration.")
    p.add_argument("model", help="model name under --models-dir, or a path to a model folder")
    p.add_argument("--data-dir", default="", help="dataset root (default: data/real-vs-fake in the repository)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--recompress", action="store_true",
                   help="first do what Telegram does: long side <= 1280 px, JPEG quality 85 (Pillow)")
    p.add_argument("--limit-per-class", type=int, default=0)
    p.add_argument("--models-dir", default="")
    p.add_argument("--json", default="", help="also write the metrics to this JSON file")
    a = p.parse_args(argv)
    folder = _model_folder(a.model, a.models_dir)
    from trainer.data import scan_split
    from trainer.evaluation import evaluate_split, load_model_folder
    from trainer.report import format_metrics
    split = scan_split(_data_dir(a.data_dir), a.split, a.limit_per_class)
    model, meta = load_model_folder(folder)
    m, _, _ = evaluate_split(model, meta, split, a.recompress)
    label = f"{meta['name']}@{meta['version']} {a.split}" + (" recompressed(1280px,q85)" if a.recompress else "")
    print(format_metrics(label, m))
    if m["undecodable_skipped"]:
        print(f"skipped {m['undecodable_skipped']} undecodable images")
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2) + "\n")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer sweep",
        description="Short runs over the seed's L9 orthogonal array (lr x optimizer x activation) or a full grid; "
                    "prints a results table and the mean valid accuracy per factor level. Writes no model.")
    p.add_argument("--design", choices=("l9", "grid"), default="l9")
    p.add_argument("--lrs", type=float, nargs=3, default=list(L9_LEVELS["lr"]))
    p.add_argument("--optimizers", nargs=3, default=list(L9_LEVELS["optimizer"]))
    p.add_argument("--activations", nargs=3, default=list(L9_LEVELS["activation"]))
    p.add_argument("--out", default="", help="folder for results.csv and results.md")
    add_config_arguments(p)
    p.set_defaults(arch="cnn", epochs=2, schedule="constant", optimizer="adam", limit_per_class=300, patience=99)
    a = p.parse_args(argv)
    base = config_from_args(a)
    if base.data_dir == TrainConfig.data_dir:
        base.data_dir = str(default_data_dir())
    levels = {"lr": a.lrs, "optimizer": a.optimizers, "activation": a.activations}
    import itertools
    rows_idx = L9 if a.design == "l9" else tuple(itertools.product(range(3), repeat=3))
    from trainer.sweep import run_sweep
    rows = run_sweep(base, levels, rows_idx)
    table = format_sweep(rows, levels)
    print(table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(table + "\n")
        with (out / "results.csv").open("w") as f:
            f.write("run,lr,optimizer,activation,val_accuracy,val_loss,seconds\n")
            for r in rows:
                f.write(f"{r['run']},{r['lr']},{r['optimizer']},{r['activation']},{r['val_accuracy']},"
                        f"{r['val_loss']},{r['seconds']}\n")
    return 0


def format_sweep(rows: list[dict], levels: dict[str, list]) -> str:
    lines = ["| run | lr | optimizer | activation | valid accuracy | valid loss | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['lr']} | {r['optimizer']} | {r['activation']} | {r['val_accuracy']:.4f} "
                     f"| {r['val_loss']:.4f} | {r['seconds']:.0f} |")
    lines += ["", "mean valid accuracy per level (main effects):", "",
              "| factor | level 1 | level 2 | level 3 |", "|---|---|---|---|"]
    for factor, lv in levels.items():
        means = []
        for v in lv:
            accs = [r["val_accuracy"] for r in rows if r[factor] == v]
            means.append(f"{v}: {sum(accs) / len(accs):.4f}" if accs else f"{v}: -")
        lines.append(f"| {factor} | " + " | ".join(means) + " |")
    return "\n".join(lines)


def cmd_preview(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer preview",
                                description="A 3x3 grid PNG of labelled samples (with predictions when --model is given).")
    p.add_argument("--data-dir", default="")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.add_argument("--out", default="preview.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="", help="model name or folder: adds its calibrated P(fake) to each tile")
    p.add_argument("--models-dir", default="")
    a = p.parse_args(argv)
    from trainer.preview import write_preview
    model_folder = None
    if a.model:
        model_folder = _model_folder(a.model, a.models_dir)
    out = write_preview(_data_dir(a.data_dir), a.split, Path(a.out), a.seed, model_folder)
    print(f"wrote {out}")
    return 0


def cmd_promote(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer promote",
                                description="Make models/<name> the model the inference workers serve "
                                            "(rewrites promoted.json atomically; running workers switch between jobs).")
    p.add_argument("name")
    p.add_argument("--models-dir", default="", help="default: MODELS_DIR or the repo's models/")
    a = p.parse_args(argv)
    from trainer.registry import promote
    payload = promote(_models_dir(a.models_dir), a.name)
    print(f"promoted {payload['name']} at {payload['promoted_at']}")
    return 0


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """The new model's name and where it and its data are: what soup, ensemble and second-opinion share."""
    p.add_argument("--name", required=True, help="the new model's folder name")
    p.add_argument("--data-dir", default="", help="dataset root (default: data/real-vs-fake in the repository)")
    p.add_argument("--models-dir", default="")
    p.add_argument("--overwrite", action="store_true")


def _print_built(out: Path, made_of: str) -> int:
    """What a combining command wrote: its version, its runs, its metrics, how to promote it."""
    from trainer.report import format_metrics
    meta = json.loads((out / "metadata.json").read_text())
    print(f"wrote {out} version={meta['version']} {made_of}")
    for key, m in meta["metrics"].items():
        print(format_metrics(key, m))
    print(f"promote it with: python -m trainer promote {meta['name']}")
    return 0


def cmd_soup(argv: list[str], kind: str = "soup") -> int:
    about = {"soup": "Average the weights of several runs of one architecture (fine-tuned from the same "
                     "ImageNet weights; any working sizes, the soup works at the first run's) into a new model, "
                     "calibrated and measured like a trained one.",
             "ensemble": "Put several runs of one architecture (any working sizes) into one model file whose "
                         "P(fake) is the mean of theirs (it costs all of them), calibrated and measured like a "
                         "trained one."}
    p = argparse.ArgumentParser(
        prog=f"python -m trainer {kind}",
        description=about[kind] + " Photo calibration uses the first model's canvas seed; clips need "
                                  "calibrate-clips afterwards.")
    p.add_argument("models", nargs="+", help="model names under --models-dir, or paths to model folders")
    _add_output_arguments(p)
    if kind == "soup":
        p.add_argument("--refresh-bn", type=int, default=0, metavar="BATCHES",
                       help="re-measure the averaged network's BatchNorm statistics on this many training batches "
                            "of the first model's recipe (default 0: keep the mean of the runs' statistics)")
    a = p.parse_args(argv)
    if getattr(a, "refresh_bn", 0) < 0:
        p.error("--refresh-bn must be 0 or more")
    folders = [_model_folder(m, a.models_dir) for m in a.models]
    from trainer.soup import combine
    out = combine(folders, a.name, _data_dir(a.data_dir), _models_dir(a.models_dir), kind, a.overwrite,
                  getattr(a, "refresh_bn", 0))
    runs = json.loads((out / "metadata.json").read_text())[f"{kind}_of"]
    return _print_built(out, f"{kind} of {', '.join(runs)}")


def cmd_ensemble(argv: list[str]) -> int:
    return cmd_soup(argv, "ensemble")


def _build_from_two(p: argparse.ArgumentParser, argv: list[str], build, zero_allowed: bool) -> Path:
    """Parse a two-model command (positionals `first`, `second` and --defer-below) and build its model folder."""
    _add_output_arguments(p)
    a = p.parse_args(argv)
    if a.defer_below < 0 or (a.defer_below == 0 and not zero_allowed):
        p.error("--defer-below must be " + ("0 or above" if zero_allowed else "above 0"))
    return build(_model_folder(a.first, a.models_dir), _model_folder(a.second, a.models_dir), a.name, a.defer_below,
                 _data_dir(a.data_dir), _models_dir(a.models_dir), a.overwrite)


def cmd_second_opinion(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer second-opinion",
        description="One model out of two runs: FIRST answers every face; where it is not sure (|logit| of its raw "
                    "P(fake) under --defer-below) SECOND also looks and the answer is the mean of the two. Costs the "
                    "first run plus the second on the faces it is asked about; calibrated and measured like a trained "
                    "model (photo calibration on the first run's canvas seed; clips need calibrate-clips afterwards).")
    p.add_argument("first", help="model name under --models-dir, or a path to a model folder")
    p.add_argument("second", help="model name under --models-dir, or a path to a model folder")
    p.add_argument("--defer-below", type=float, required=True, metavar="LOGIT",
                   help="ask SECOND where |logit(P(fake))| of FIRST is under this (2: P(fake) between 0.12 and 0.88)")
    from trainer.second_opinion import build
    out = _build_from_two(p, argv, build, zero_allowed=False)
    runs = json.loads((out / "metadata.json").read_text())["second_opinion"]["of"]
    return _print_built(out, f"second opinion of {' then '.join(runs)}")


def cmd_by_framing(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer by-framing",
        description="One model that answers each framing with its own network: faces the worker passes through as "
                    "sent (dataset-style crops) by CROPS, every face it re-aligns (photos, clips) exactly as MODEL "
                    "does, with MODEL's photo and clip calibrations. Only the as-sent calibration and decision are "
                    "fitted again (on valid); test is measured.")
    p.add_argument("first", metavar="model", help="the model for re-aligned faces: a name under --models-dir, or a "
                                                  "model folder")
    p.add_argument("second", metavar="crops", help="the run for passed-through crops (one network): a name or a "
                                                   "model folder")
    p.add_argument("--defer-below", type=float, default=0.0, metavar="LOGIT",
                   help="ask MODEL's second network about a crop where |logit(P(fake))| of CROPS is under this "
                        "(default 0: never)")
    from trainer.by_framing import build
    out = _build_from_two(p, argv, build, zero_allowed=True)
    runs = json.loads((out / "metadata.json").read_text())["by_framing_of"]
    return _print_built(out, f"crops answered by {runs[1]}, re-aligned faces by {runs[0]}")


def cmd_calibrate_clips(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer calibrate-clips",
        description="Fit the calibration and decision a model applies to people in clips (the mean of their "
                    "per-frame logits) on short clips made from the VALID split's faces, run through the worker's "
                    "clip path; writes calibration_clip / decision_clip into the model's metadata.json. "
                    "Restart the workers to apply it.")
    p.add_argument("--model", required=True, help="model name under --models-dir, or a path to a model folder")
    p.add_argument("--data-dir", default="", help="dataset root (default: data/real-vs-fake in the repository)")
    p.add_argument("--clips-per-class", type=int, default=300,
                   help="clips per class (one per valid face; about 0.6 s each on 2 CPU cores); 0: every face")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-dir", default="")
    a = p.parse_args(argv)
    folder = _model_folder(a.model, a.models_dir)
    from trainer.clip_calibration import calibrate_clips
    meta = calibrate_clips(folder, _data_dir(a.data_dir), a.clips_per_class, a.seed)
    cal, dec, m = meta["calibration_clip"], meta["decision_clip"], meta["metrics"]["valid_clip"]
    print(f"{meta['name']}@{meta['version']}: clips={cal['clips']} (left out {cal['left_out']}) "
          f"T={cal['temperature']} threshold={dec['threshold']} unsure_band={dec['unsure_band']}")
    from trainer.report import format_metrics
    print(format_metrics("valid clips", m))
    print(f"wrote {folder / 'metadata.json'}; restart the workers to apply it")
    return 0


def cmd_calibrate_photos(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer calibrate-photos",
        description="Refit a model's calibration and decision for faces the worker re-aligns out of larger "
                    "pictures, on VALID faces pasted into photos and cut out by the worker's current detector "
                    "(after a detector change). Writes the model's metadata.json; restart the workers to apply it.")
    p.add_argument("--model", required=True, help="model name under --models-dir, or a path to a model folder")
    p.add_argument("--data-dir", default="", help="dataset root (default: data/real-vs-fake in the repository)")
    p.add_argument("--seed", type=int, default=None,
                   help="canvas seed (default: the model's training seed, i.e. the canvases training fitted on)")
    p.add_argument("--models-dir", default="")
    a = p.parse_args(argv)
    folder = _model_folder(a.model, a.models_dir)
    from trainer.training import calibrate_photos
    meta = calibrate_photos(folder, _data_dir(a.data_dir), a.seed)
    cal, dec = meta["calibration_realigned"], meta["decision_realigned"]
    print(f"{meta['name']}@{meta['version']}: detector={cal['detector']} left out {cal['left_out']} "
          f"T={cal['temperature']} threshold={dec['threshold']} unsure_band={dec['unsure_band']}")
    from trainer.report import format_metrics
    print(format_metrics("valid re-aligned", meta["metrics"]["valid_realigned"]))
    print(f"wrote {folder / 'metadata.json'}; restart the workers to apply it")
    return 0


def cmd_export_litert(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer export-litert",
        description="Add model.tflite (the same network for LiteRT, what CPU workers run) to a model folder that "
                    "was trained before the trainer wrote one; it is checked against the Keras model first. "
                    "Restart the workers to use it.")
    p.add_argument("model", help="model name under --models-dir, or a path to a model folder")
    p.add_argument("--data-dir", default="",
                   help="dataset root: its first valid faces join the check (default: noise and a gradient only)")
    p.add_argument("--models-dir", default="")
    a = p.parse_args(argv)
    folder = _model_folder(a.model, a.models_dir)
    from trainer.litert_export import export_model_folder
    meta = export_model_folder(folder, Path(a.data_dir) if a.data_dir else None)
    lite = meta["litert"]
    print(f"wrote {folder / lite['file']} ({(folder / lite['file']).stat().st_size / 1e6:.1f} MB) for "
          f"{meta['name']}@{meta['version']}: largest difference from Keras {lite['max_abs_diff_vs_keras']:.1e}; "
          "restart the workers to use it")
    return 0


def main(argv: list[str] | None = None) -> int:
    from core.logs import configure_logging
    configure_logging()
    argv = sys.argv[1:] if argv is None else argv
    cmd, rest = ("train", argv)
    if argv and argv[0] in SUBCOMMANDS:
        cmd, rest = argv[0], argv[1:]
    handler = {"train": cmd_train, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "preview": cmd_preview,
               "promote": cmd_promote, "soup": cmd_soup, "ensemble": cmd_ensemble, "second-opinion": cmd_second_opinion,
               "by-framing": cmd_by_framing, "calibrate-photos": cmd_calibrate_photos, "calibrate-clips": cmd_calibrate_clips,
               "export-litert": cmd_export_litert}[cmd]
    try:
        return handler(rest)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # DatasetError is a ValueError: a bad dataset or name gets one clear line, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from trainer.architectures import WeightsUnavailable
        if isinstance(e, WeightsUnavailable):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
