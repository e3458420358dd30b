"""Typed keys for what the application holds (``app[KEY]``), in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from storage.rate_limits import Verdict

from .config import Settings

if TYPE_CHECKING:

    pass

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
ACCESS_TOKENS = web.AppKey("access_tokens", "AccessTokens")
REFRESH_TOKENS = web.AppKey("refresh_tokens", "RefreshTokens")
SESSION_STATES = web.AppKey("session_states", "SessionStates")
DEVICE_TOKENS = web.AppKey("device_tokens", "DeviceTokens")
LOGIN_FAILURES = web.AppKey("login_failures", "LoginFailures")
USERS = web.AppKey("users", "UserStore")
UPDATE_LOG = web.AppKey("update_log", "UpdateLog")
WRITER = web.AppKey("writer", "GroupCommitWriter")
REGISTRY = web.AppKey("registry", "RoomRegistry")
PUBLISHER = web.AppKey("publisher", "UpdatePublisher")
RATE_LIMITER = web.AppKey("rate_limiter", "RateLimiter")

# Per request.
REQUEST_ID = web.RequestKey("request_id", str)
RATE_VERDICT = web.RequestKey("rate_verdict", Verdict)
