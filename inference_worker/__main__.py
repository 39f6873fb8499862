"""`python -m inference_worker` runs a worker; `python -m inference_worker check FILE...` checks pictures and clips."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core.logs import configure_logging
from core.settings import Settings


def _check(paths: list[str], as_json: bool, settings: Settings) -> int:
    for p in paths:  # before loading TensorFlow: a typo fails at once
        if not os.access(p, os.R_OK) or not Path(p).is_file():
            print(f"error: cannot read {p}", file=sys.stderr)
            return 2
    from .pipeline import Pipeline

    pipeline = Pipeline(settings)
    rows = [(p, pipeline.check(Path(p).read_bytes(), request_id=Path(p).name).verdict) for p in paths]
    if as_json:
        print(json.dumps([{"file": p, **v.to_dict()} for p, v in rows], ensure_ascii=False, indent=2))
        return 0
    width = max(len(p) for p, _ in rows)
    # frames: how many sampled frames of a clip were checked (0 for a picture); a clip's faces are people,
    # each judged over every frame they were seen in.
    print(f"{'file':<{width}}  {'label':<10} {'p_fake':>6}  faces  frames  {'ms':>6}  reasons")
    for p, v in rows:
        pf = "-" if v.p_fake is None else f"{v.p_fake:.3f}"
        print(f"{p:<{width}}  {v.label:<10} {pf:>6}  {len(v.faces):>5}  {v.frames:>6}  "
              f"{v.timings_ms.get('total', 0):>6.0f}  {','.join(v.reasons)}")
    model = rows[0][1].model if rows else {}
    print(f"model: {model.get('name')}@{model.get('version')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference_worker",
                                     description="Face checks: an RQ worker, or a one-off check of local files.")
    parser.add_argument("--name", help="worker name in RQ (default: RQ's random one)")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="print verdicts for local picture or clip files (MP4/MOV/WebM/MKV, GIF, WebP)")
    check.add_argument("images", nargs="+", metavar="FILE")
    check.add_argument("--json", action="store_true", help="JSON instead of a table")
    args = parser.parse_args(argv)
    configure_logging()
    settings = Settings.from_env()
    from .classifier import ModelLoadError

    try:
        if args.command == "check":
            return _check(args.images, args.json, settings)
        from . import metrics
        from .worker import run_worker

        metrics.start_server(metrics.port_from_env())  # WORKER_METRICS_PORT; 0: none
        run_worker(settings, name=args.name, burst=args.burst)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
