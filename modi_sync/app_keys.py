"""Typed keys for what the application holds (``app[KEY]``), in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from storage.login_failures import LoginFailures
from storage.rate_limits import RateLimiter, Verdict
from storage.refresh_tokens import RefreshTokens
from storage.update_log import UpdateLog
from storage.users import UserStore

from .accounts import Accounts
from .config import Settings
from .device_tokens import DeviceTokens
from .documents import Documents
from .foods import Foods
from .images import Images
from .revocations import SessionStates
from .runtime import Storage
from .sync.bus import UpdatePublisher
from .sync.engine import SyncEngine
from .sync.registry import RoomRegistry
from .sync.writer import GroupCommitWriter
from .tokens import AccessTokens

SETTINGS = web.AppKey("settings", Settings)
STORAGE = web.AppKey("storage", Storage)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
ACCESS_TOKENS = web.AppKey("access_tokens", AccessTokens)
REFRESH_TOKENS = web.AppKey("refresh_tokens", RefreshTokens)
SESSION_STATES = web.AppKey("session_states", SessionStates)
DEVICE_TOKENS = web.AppKey("device_tokens", DeviceTokens)
LOGIN_FAILURES = web.AppKey("login_failures", LoginFailures)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
USERS = web.AppKey("users", UserStore)
UPDATE_LOG = web.AppKey("update_log", UpdateLog)
ENGINE = web.AppKey("engine", SyncEngine)
WRITER = web.AppKey("writer", GroupCommitWriter)
REGISTRY = web.AppKey("registry", RoomRegistry)
PUBLISHER = web.AppKey("publisher", UpdatePublisher)
DOCUMENTS = web.AppKey("documents", Documents)
ACCOUNTS = web.AppKey("accounts", Accounts)
FOODS = web.AppKey("foods", Foods)
IMAGES = web.AppKey("images", Images)

# Per request.
REQUEST_ID = web.RequestKey("request_id", str)
RATE_VERDICT = web.RequestKey("rate_verdict", Verdict)
