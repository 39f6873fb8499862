"""docker-compose.yml and its GPU variant, validated by `docker-compose config` (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose (v1) is not installed: "
                                "scripts/test.sh installs the Debian package")


def _config(tmp_path: Path, *files: str, profile: str | None = None) -> dict:
    """The merged configuration `docker-compose config` prints, parsed."""
    for name in ("docker-compose.yml", "docker-compose.gpu.yml", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / ".env.example", tmp_path / ".env")  # what an operator starts from
    cmd = [COMPOSE]
    for f in files:
        cmd += ["-f", f]
    if profile:
        cmd += ["--profile", profile]
    res = subprocess.run([*cmd, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    # Parse with docker-compose's own interpreter, which has PyYAML: no YAML library needed in our venv.
    python = Path(COMPOSE).read_text(errors="replace").splitlines()[0].removeprefix("#!").split()
    parsed = subprocess.run([*python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                            input=res.stdout, capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    return json.loads(parsed.stdout)


def _dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M | re.I))


def test_compose_services(tmp_path):
    cfg = _config(tmp_path, "docker-compose.yml", profile="train")
    services = cfg["services"]
    assert set(services) == {"redis", "state-redis", "bot", "inference-worker", "trainer"}
    assert "ports" not in services["redis"]  # Redis is never published
    assert services["bot"]["ports"] == ["127.0.0.1:8080:8080/tcp"]  # loopback unless WEB_PUBLISH says otherwise
    worker = services["inference-worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale friendly
    assert worker["command"] == ["python", "-m", "inference_worker"]
    for name in ("redis", "bot", "inference-worker"):
        assert services[name]["restart"] == "unless-stopped"
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    for name in ("bot", "inference-worker"):
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Two images from the Dockerfile's targets: the slim bot's, and the workers' (which the trainer shares).
    assert services["bot"]["build"] == {"context": str(tmp_path), "target": "bot"}
    assert services["bot"]["image"] == "zhenjia-bot:latest"
    for name in ("inference-worker", "trainer"):
        assert services[name]["build"] == {"context": str(tmp_path), "target": "worker"}
        assert services[name]["image"] == "zhenjia-worker:latest"
    assert {"bot", "worker"} <= _dockerfile_targets()
    assert "--save" in services["redis"]["command"]  # memory only: images never reach a disk
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "no"
    # Durable state (modes, languages, checks in flight): its own Redis, AOF on a named volume, never published.
    state = services["state-redis"]
    assert state["command"][state["command"].index("--appendonly") + 1] == "yes" and "ports" not in state
    assert [str(v).rsplit(":", 1)[0] for v in state["volumes"]] == ["state:/data"]  # v1 prints "state:/data:rw"
    assert "state" in cfg["volumes"]
    assert services["bot"]["environment"]["STATE_REDIS_URL"] == "redis://state-redis:6379/0"
    assert services["bot"]["depends_on"]["state-redis"]["condition"] == "service_healthy"
    assert "STATE_REDIS_URL" not in services["inference-worker"]["environment"]  # workers never need it
    assert services["trainer"]["profiles"] == ["train"]
    assert services["trainer"]["entrypoint"] == ["python", "-m", "trainer"]


def test_gpu_variant_reserves_nvidia_gpus(tmp_path):
    cfg = _config(tmp_path, "docker-compose.yml", "docker-compose.gpu.yml", profile="train")
    worker = cfg["services"]["inference-worker"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    for name in ("inference-worker", "trainer"):
        service = cfg["services"][name]
        assert service["build"]["target"] == "worker" and service["build"]["args"]["EXTRAS"] == "gpu"
        assert service["image"] == "zhenjia-worker:gpu"  # never the CPU image's tag
    bot = cfg["services"]["bot"]
    assert "deploy" not in bot  # the bot never needs a GPU
    assert bot["build"] == {"context": str(tmp_path), "target": "bot"} and bot["image"] == "zhenjia-bot:latest"
