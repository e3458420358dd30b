"""What deploy/Dockerfile installs: the files it copies, built by a plain `pip install .`,
hold every module, not only those an editable install finds in the source tree; and
.dockerignore lets exactly those files into the build context."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modi_sync", "storage", "ocr_worker")


def _copied_by_the_dockerfile() -> list[str]:
    """The sources of deploy/Dockerfile's COPY lines from the build context (not those
    from an earlier stage: ``--from``)."""
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    return [src for line in lines if line.startswith("COPY ") and "--from=" not in line
            for src in line.split()[1:-1]]


def test_the_wheel_holds_every_module_and_migration(tmp_path: Path):
    # A copy as the image gets it: no build/ or egg-info of an earlier build to borrow from.
    app = tmp_path / "app"
    app.mkdir()
    for name in _copied_by_the_dockerfile():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns(
                "__pycache__", "webapp_dist"))  # the image gets the client from its stage
        else:
            shutil.copy(ROOT / name, app / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(app)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("modi_sync-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    source = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for pattern in ("*.py", "*.sql")
        for path in (ROOT / package).rglob(pattern)
    }
    assert "storage/migrations/001_initial.sql" in source
    assert sorted(source - shipped) == []


def test_the_build_context_lets_in_what_the_dockerfile_copies_and_nothing_else():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"  # everything out, then each needed path back in
    let_in = {line[1:] for line in lines if line.startswith("!")}
    assert let_in == set(_copied_by_the_dockerfile())
