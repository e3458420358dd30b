"""Builds the web client (web/) into modi_sync/webapp_dist before the package is built.

Every `pip install` of this tree, editable or not, runs it: `npm ci` in web/ when its
node_modules are missing or older than the lockfile, then `node web/build.mjs`. The built
files are not in git; the server serves them with no Node at run time (docs/webapp.md).
Everything else about the package is in setup.cfg.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
DIST = ROOT / "modi_sync" / "webapp_dist"


def build_web_client() -> None:
    if not (WEB / "package.json").is_file():
        # A copy without web/ (deploy/Dockerfile's build context): no client to build.
        print("modi-sync: no web/ here, so the web client at /app/ is not built")
        return
    if os.environ.get("MODI_SKIP_WEB_BUILD") == "1":
        print("modi-sync: MODI_SKIP_WEB_BUILD=1, so the web client at /app/ is not built")
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit(
            "modi-sync: building the web client (web/, served at /app/) needs Node 20+ and "
            "npm on PATH, and " + ("node" if node is None else "npm") + " is not there. "
            "Install Node.js 20 or later with npm (Debian: apt-get install nodejs npm), or "
            "set MODI_SKIP_WEB_BUILD=1 to install the server without its web client.")
    installed = WEB / "node_modules" / ".package-lock.json"
    lock = WEB / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        # fixed arguments; npm and node are whichever PATH names
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(WEB)],  # noqa: S603
                       check=True, cwd=WEB)
    subprocess.run([node, str(WEB / "build.mjs"), str(DIST)], check=True, cwd=WEB)  # noqa: S603


class BuildPyWithWebClient(build_py):
    """build_py, after building the web client its package data includes."""

    def run(self) -> None:
        build_web_client()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithWebClient})
