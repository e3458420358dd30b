"""The import-linter contracts in setup.cfg name every module they must (.ci/run runs
`lint-imports`): a new module cannot slip past the layering by being left off a list."""

from __future__ import annotations

import configparser
import pkgutil
from pathlib import Path

import modi_sync

ROOT = Path(__file__).resolve().parents[1]


def _sources(contract: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return set(config[f"importlinter:contract:{contract}"]["source_modules"].split())


def _modules() -> set[str]:
    return {f"modi_sync.{m.name}" for m in pkgutil.iter_modules(modi_sync.__path__)}


def test_everything_below_the_web_app_is_kept_from_the_http_layer():
    below = _modules() - {"modi_sync.api", "modi_sync.app", "modi_sync.cli"}
    assert below | {"ocr_worker"} == _sources("http")


def test_nothing_but_the_command_line_itself_may_import_it():
    assert (_modules() - {"modi_sync.cli"}) | {"ocr_worker"} == _sources("cli")
