"""docker-compose.yml as Compose itself reads it (`docker-compose config`, which needs no
container engine: none runs here), with the values of .env.example."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")


def _config(*args: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run([COMPOSE, "--project-directory", str(ROOT), "-f",
                           str(ROOT / "docker-compose.yml"), *args, "config"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(COMPOSE is None, reason="no docker-compose (.ci/run installs Debian's)")
def test_the_compose_file_is_valid_and_every_service_has_a_healthcheck():
    done = _config("--env-file", str(ROOT / ".env.example"))
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"postgres", "redis", "api", "worker", "nginx"}
    for name, service in services.items():
        assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"
    assert services["worker"]["build"]["args"]["EXTRAS"] == "ocr"
    assert services["worker"]["command"] == ["modi-sync", "worker"]
    assert "ports" not in services["api"]  # only nginx is published, on loopback
    assert [str(p).split(":")[0] for p in services["nginx"]["ports"]] == ["127.0.0.1"]


@pytest.mark.skipif(COMPOSE is None, reason="no docker-compose (.ci/run installs Debian's)")
def test_the_compose_file_refuses_to_run_without_its_secrets(tmp_path: Path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = _config("--env-file", str(empty))
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr or "JWT_SECRET" in done.stderr
