"""Settings: one frozen dataclass built from command-line flags and the environment.

This is the only module that reads ``os.environ``; everything else gets a ``Settings``.
Every field is listed, with its default and variable, in docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from storage.rate_limits import Limit

# RFC 7518 3.2: an HS256 key at least as long as the hash. Generated: 48 random bytes.
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".modi")
    database_url: str | None = None
    redis_url: str | None = None
    jwt_secret: str | None = None
    jwt_previous_secrets: tuple[str, ...] = ()  # still verified, never signed with
    cors_origins: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "INFO"
    access_log: str = "auto"
    metrics_listen: str = "127.0.0.1:9464"  # host:port of /metrics' own listener; "off"
    metrics_token: str | None = None  # with it, /metrics on the public port too (Bearer)
    worker_metrics_listen: str = "127.0.0.1:9465"  # the OCR worker's own; "off"

    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 7 * 24 * 3600

    rate_limit_auth: str = "30/60"
    rate_limit_refresh: str = "120/60"
    rate_limit_user: str = "300/60"
    rate_limit_export: str = "5/3600"
    login_free_failures: int = 5
    login_backoff_max: int = 900
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024

    max_frame_bytes: int = 4 * 1024 * 1024
    max_document_bytes: int = 64 * 1024 * 1024
    max_connections_per_user: int = 32
    max_send_queue_bytes: int = 16 * 1024 * 1024
    ws_message_limit: str = "1000/10"
    max_awareness_clients: int = 8
    max_awareness_bytes: int = 64 * 1024
    max_pending_bytes: int = 1024 * 1024
    max_documents_per_user: int = 100
    max_user_bytes: int = 256 * 1024 * 1024
    room_idle_seconds: float = 30.0
    keepalive_seconds: float = 15.0
    awareness_timeout_seconds: float = 30.0  # y-protocols' outdatedTimeout
    bus_recheck_seconds: float = 5.0
    auto_compact_updates: int = 500
    auto_compact_bytes: int = 4 * 1024 * 1024
    auto_compact_interval: float = 60.0
    snapshot_interval_seconds: int = 3600
    snapshot_retention_days: int = 30
    commit_batch_max: int = 2048
    db_pool_max: int = 10
    redis_pool_max: int = 32
    gc_full_seconds: float = 600.0

    audit_ip: str = "truncated"  # or "full", "off"
    audit_retention_days: int = 365
    retention_interval_seconds: float = 3600.0  # 0: this instance never runs it

    foods_autoload: str = "auto"  # or "on", "off"; auto: on the embedded PostgreSQL only
    popular_interval_seconds: float = 60.0  # the popular list's pass; 0: never here

    rate_limit_images: str = "30/3600"  # label photos per user
    ocr_queue_max: int = 1000  # jobs queued or being read, all users: past it, 429
    ocr_lease_seconds: float = 60.0  # a job whose worker is silent this long is retaken
    ocr_max_attempts: int = 3
    ocr_poll_seconds: float = 30.0  # how often an idle worker looks without a wake-up
    image_retention_days: int = 30  # an image's row and reading, after its upload

    @property
    def snapshot_every(self) -> timedelta | None:
        """How far apart compaction keeps snapshots; None when retention is off."""
        if self.snapshot_retention_days <= 0:
            return None
        return timedelta(seconds=max(self.snapshot_interval_seconds, 0))

    @property
    def pg_dir(self) -> Path:
        return self.data_dir / "pg"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"


# Environment variable -> field. The contract's names first, then our own tunables.
ENVIRONMENT: dict[str, str] = {
    "MODI_HOST": "host",
    "MODI_PORT": "port",
    "MODI_DATA_DIR": "data_dir",
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "JWT_SECRET": "jwt_secret",
    "MODI_JWT_PREVIOUS_SECRETS": "jwt_previous_secrets",
    "MODI_CORS_ORIGINS": "cors_origins",
    "MODI_LOG_FORMAT": "log_format",
    "MODI_LOG_LEVEL": "log_level",
    "MODI_ACCESS_LOG": "access_log",
    "MODI_METRICS_LISTEN": "metrics_listen",
    "MODI_METRICS_TOKEN": "metrics_token",
    "MODI_WORKER_METRICS_LISTEN": "worker_metrics_listen",
    "MODI_ACCESS_TOKEN_TTL": "access_token_ttl",
    "MODI_REFRESH_TOKEN_TTL": "refresh_token_ttl",
    "MODI_RATE_LIMIT_AUTH": "rate_limit_auth",
    "MODI_RATE_LIMIT_REFRESH": "rate_limit_refresh",
    "MODI_RATE_LIMIT_USER": "rate_limit_user",
    "MODI_RATE_LIMIT_EXPORT": "rate_limit_export",
    "MODI_LOGIN_FREE_FAILURES": "login_free_failures",
    "MODI_LOGIN_BACKOFF_MAX": "login_backoff_max",
    "MODI_TRUSTED_PROXIES": "trusted_proxies",
    "MODI_MAX_BODY_BYTES": "max_body_bytes",
    "MODI_MAX_FRAME_BYTES": "max_frame_bytes",
    "MODI_MAX_DOCUMENT_BYTES": "max_document_bytes",
    "MODI_MAX_CONNECTIONS_PER_USER": "max_connections_per_user",
    "MODI_MAX_SEND_QUEUE_BYTES": "max_send_queue_bytes",
    "MODI_WS_MESSAGE_LIMIT": "ws_message_limit",
    "MODI_MAX_AWARENESS_CLIENTS": "max_awareness_clients",
    "MODI_MAX_AWARENESS_BYTES": "max_awareness_bytes",
    "MODI_MAX_PENDING_BYTES": "max_pending_bytes",
    "MODI_MAX_DOCUMENTS_PER_USER": "max_documents_per_user",
    "MODI_MAX_USER_BYTES": "max_user_bytes",
    "MODI_ROOM_IDLE_SECONDS": "room_idle_seconds",
    "MODI_KEEPALIVE_SECONDS": "keepalive_seconds",
    "MODI_AWARENESS_TIMEOUT": "awareness_timeout_seconds",
    "MODI_BUS_RECHECK_SECONDS": "bus_recheck_seconds",
    "MODI_AUTO_COMPACT_UPDATES": "auto_compact_updates",
    "MODI_AUTO_COMPACT_BYTES": "auto_compact_bytes",
    "MODI_AUTO_COMPACT_INTERVAL": "auto_compact_interval",
    "MODI_SNAPSHOT_INTERVAL": "snapshot_interval_seconds",
    "MODI_SNAPSHOT_RETENTION_DAYS": "snapshot_retention_days",
    "MODI_COMMIT_BATCH_MAX": "commit_batch_max",
    "MODI_DB_POOL_MAX": "db_pool_max",
    "MODI_REDIS_POOL_MAX": "redis_pool_max",
    "MODI_GC_FULL_SECONDS": "gc_full_seconds",
    "MODI_AUDIT_IP": "audit_ip",
    "MODI_AUDIT_RETENTION_DAYS": "audit_retention_days",
    "MODI_RETENTION_INTERVAL": "retention_interval_seconds",
    "MODI_FOODS_AUTOLOAD": "foods_autoload",
    "MODI_POPULAR_INTERVAL": "popular_interval_seconds",
    "MODI_RATE_LIMIT_IMAGES": "rate_limit_images",
    "MODI_OCR_QUEUE_MAX": "ocr_queue_max",
    "MODI_OCR_LEASE_SECONDS": "ocr_lease_seconds",
    "MODI_OCR_MAX_ATTEMPTS": "ocr_max_attempts",
    "MODI_OCR_POLL_SECONDS": "ocr_poll_seconds",
    "MODI_IMAGE_RETENTION_DAYS": "image_retention_days",
}

def _number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return kind(raw)
        except ValueError:
            raise ValueError("must be a number") from None
    return convert


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


# How the text of a variable becomes each type a field may have. A field of a type not
# listed here stops the import (``_CONVERTERS_OF``), so none quietly stays a string.
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "str | None": lambda raw: raw or None,
    "int": _number(int),
    "float": _number(float),
    "bool": _boolean,
    "Path": Path,
    "tuple[str, ...]": lambda raw: tuple(p.strip() for p in raw.split(",") if p.strip()),
}
_CONVERTERS_OF = {f.name: _CONVERTERS[str(f.type)] for f in fields(Settings)}


def _convert(name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw  # a flag's value, already of its type
    try:
        return _CONVERTERS_OF[name](raw)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}, got {raw!r}") from None


def load_settings(
    environ: Mapping[str, str] | None = None, *, server: bool = True, **overrides: Any
) -> Settings:
    """Build settings from the environment, then apply explicit overrides (CLI flags).

    Overrides whose value is ``None`` are ignored, so unset flags fall through. With
    ``server`` false (a command, the worker), what only `serve` uses is not checked:
    a setting the process never reads does not stop it.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, name in ENVIRONMENT.items():
        if var in environ:
            values[name] = _convert(name, environ[var])
    for name, value in overrides.items():
        if value is not None:
            values[name] = _convert(name, value)
    settings = replace(Settings(), **values)
    _validate(settings)
    if server:
        _validate_server(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.log_format not in ("json", "text"):
        raise ConfigError("MODI_LOG_FORMAT must be 'json' or 'text'")
    if settings.redis_pool_max < 4:
        raise ConfigError("MODI_REDIS_POOL_MAX must be at least 4 (two serve subscriptions)")
    if settings.db_pool_max < 4:
        raise ConfigError("MODI_DB_POOL_MAX must be at least 4 (the writer and the loader "
                          "keep one each)")
    # What a command's sync engine (a restore) and every store read, as well as `serve`.
    _positive(settings, "max_document_bytes", "commit_batch_max", "access_token_ttl",
              "refresh_token_ttl", "auto_compact_updates", "auto_compact_bytes",
              "bus_recheck_seconds", "max_pending_bytes", "max_documents_per_user",
              "max_user_bytes", "max_awareness_clients", "max_awareness_bytes",
              "audit_retention_days", "ocr_queue_max", "ocr_lease_seconds",
              "ocr_max_attempts", "ocr_poll_seconds", "image_retention_days",
              "awareness_timeout_seconds")
    if settings.worker_metrics_listen != "off":
        listen_address(settings.worker_metrics_listen, "MODI_WORKER_METRICS_LISTEN")
    if settings.gc_full_seconds < 0:
        raise ConfigError("MODI_GC_FULL_SECONDS must be 0 (off) or more")
    if settings.audit_ip not in ("truncated", "full", "off"):
        raise ConfigError("MODI_AUDIT_IP must be 'truncated', 'full' or 'off'")


def _positive(settings: Settings, *names: str) -> None:
    for name in names:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name} must be positive")


def _validate_server(settings: Settings) -> None:
    if settings.access_log not in ("auto", "on", "off"):
        raise ConfigError("MODI_ACCESS_LOG must be 'auto', 'on' or 'off'")
    _validate_secrets(settings)
    for name in ("rate_limit_auth", "rate_limit_refresh", "rate_limit_user", "rate_limit_export",
                 "rate_limit_images", "ws_message_limit"):
        try:
            Limit.parse(getattr(settings, name))
        except ValueError:
            raise ConfigError(f"{name} must look like '10/60' (requests/seconds)") from None
    for network in settings.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"MODI_TRUSTED_PROXIES: {network!r} is not an address") from None
    _positive(settings, "port", "max_body_bytes", "max_frame_bytes",
              "max_connections_per_user", "max_send_queue_bytes", "keepalive_seconds",
              "login_free_failures", "login_backoff_max")
    if settings.metrics_listen != "off":
        listen_address(settings.metrics_listen, "MODI_METRICS_LISTEN")
    if settings.metrics_token is not None and len(settings.metrics_token) < 16:
        raise ConfigError("MODI_METRICS_TOKEN is shorter than 16 characters: use a random one")
    if settings.retention_interval_seconds < 0:
        raise ConfigError("MODI_RETENTION_INTERVAL must be 0 (off) or more")
    if settings.foods_autoload not in ("auto", "on", "off"):
        raise ConfigError("MODI_FOODS_AUTOLOAD must be 'auto', 'on' or 'off'")
    if settings.popular_interval_seconds < 0:
        raise ConfigError("MODI_POPULAR_INTERVAL must be 0 (off) or more")


def listen_address(value: str, variable: str) -> tuple[str, int]:
    """A metrics listener's ``host:port`` as (host, port); an IPv6 host in brackets."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{variable} must be 'off' or host:port, e.g. 127.0.0.1:9464")
    return host, int(port)


def _validate_secrets(settings: Settings) -> None:
    advice = "use a random secret, e.g. `openssl rand -base64 48`"
    if settings.jwt_secret is not None and len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes: {advice}")
    for n, secret in enumerate(settings.jwt_previous_secrets, 1):
        # Every previous secret once signed; one too short to trust is dropped, not kept.
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"MODI_JWT_PREVIOUS_SECRETS: secret {n} is shorter than "
                              f"{MIN_SECRET_BYTES} bytes")
