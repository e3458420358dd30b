"""Refresh tokens in Redis, stored only as SHA-256 hashes with their TTL.

A token is 32 random bytes; Redis holds ``refresh:<sha256>`` -> user id and family, so a
dump of Redis holds nothing that can be presented. The family (one per login) is what
rotation and reuse detection will revoke as a whole.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from uuid import UUID

import orjson
from redis.asyncio import Redis

_PREFIX = "refresh:"


def _key(token: str) -> str:
    return _PREFIX + hashlib.sha256(token.encode()).hexdigest()


class RefreshTokens:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds

    async def issue(self, user_id: UUID, family: str | None = None) -> str:
        token = secrets.token_urlsafe(32)
        record = {"user_id": str(user_id), "family": family or uuid.uuid4().hex}
        await self._redis.set(_key(token), orjson.dumps(record), ex=self.ttl_seconds)
        return token
