"""Settings from the environment: conversions and the limits that are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from modi_sync.config import ConfigError, load_settings


def test_environment_values_are_converted_and_flags_win():
    settings = load_settings({"MODI_PORT": "9000", "MODI_DATA_DIR": "/tmp/x",
                              "MODI_CORS_ORIGINS": "https://a.example, https://b.example"},
                             port=9100)
    assert settings.port == 9100
    assert settings.data_dir == Path("/tmp/x")
    assert settings.cors_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(("variable", "value"), [
    ("MODI_DB_POOL_MAX", "3"),  # the writer and the loader keep two
    ("MODI_REDIS_POOL_MAX", "3"),  # two subscriptions keep two
    ("MODI_PORT", "0"),
    ("MODI_PORT", "eighty"),
    ("MODI_LOG_FORMAT", "xml"),
    ("MODI_RATE_LIMIT_USER", "fast"),
    ("MODI_GC_FULL_SECONDS", "-1"),
    ("JWT_SECRET", "x" * 31),
    ("JWT_SECRET", "é" * 15),  # 30 bytes: the length is counted in bytes
    ("MODI_JWT_PREVIOUS_SECRETS", "y" * 40 + ",short"),
    ("MODI_METRICS_LISTEN", "9464"),  # no host
    ("MODI_METRICS_LISTEN", "127.0.0.1:99999"),
    ("MODI_METRICS_TOKEN", "short"),
    ("MODI_WORKER_METRICS_LISTEN", "localhost"),
])
def test_unusable_values_are_refused(variable, value):
    with pytest.raises(ConfigError):
        load_settings({variable: value})


def test_the_smallest_pools_are_accepted():
    settings = load_settings({"MODI_DB_POOL_MAX": "4", "MODI_REDIS_POOL_MAX": "4"})
    assert (settings.db_pool_max, settings.redis_pool_max) == (4, 4)


def test_the_cycle_collector_policy_can_be_turned_off():
    assert load_settings({}).gc_full_seconds == 600
    assert load_settings({"MODI_GC_FULL_SECONDS": "0"}).gc_full_seconds == 0


def test_secrets_of_32_bytes_and_more_are_accepted():
    settings = load_settings({"JWT_SECRET": "x" * 32,
                              "MODI_JWT_PREVIOUS_SECRETS": "y" * 40 + ", " + "z" * 32})
    assert settings.jwt_secret == "x" * 32
    assert settings.jwt_previous_secrets == ("y" * 40, "z" * 32)
    assert load_settings({"JWT_SECRET": ""}).jwt_secret is None  # unset: generated


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("On", True),
                                            ("0", False), ("no", False), ("off", False)])
def test_a_boolean_setting_is_a_boolean(raw, value):
    from modi_sync.config import _CONVERTERS

    assert _CONVERTERS["bool"](raw) is value
    with pytest.raises(ValueError, match="true or false"):
        _CONVERTERS["bool"]("maybe")


def test_every_setting_reads_back_from_the_text_of_its_default():
    """Each field's type has its own converter: the environment's text becomes that type."""
    from dataclasses import fields

    from modi_sync.config import ENVIRONMENT, Settings

    defaults = Settings()
    for var, name in ENVIRONMENT.items():
        default = getattr(defaults, name)
        if default is None or default == ():
            continue
        text = ",".join(default) if isinstance(default, tuple) else str(default)
        value = getattr(load_settings({var: text}, server=False), name)
        assert value == default and type(value) is type(default), name
    assert {f.name for f in fields(Settings)} == set(ENVIRONMENT.values())


def test_a_metrics_listener_may_be_off_or_on_ipv6():
    assert load_settings({"MODI_METRICS_LISTEN": "off"}).metrics_listen == "off"
    assert load_settings({"MODI_METRICS_LISTEN": "[::1]:9464"}).metrics_listen == "[::1]:9464"
