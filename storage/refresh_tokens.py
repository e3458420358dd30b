"""Refresh tokens and access revocation, in Redis.

A refresh token is 32 random bytes. Redis keeps only ``refresh:<sha256>`` with the
user id, the token's family (one per login) and the user's token generation, under the
token's TTL, so a dump of Redis holds nothing that can be presented.

- Refreshing marks the presented token used (it stays, as a tombstone, until its TTL
  ends) and issues the next token of the same family. Marking is one Lua script, so of
  two concurrent refreshes with one token exactly one wins.
- Presenting a used token revokes its family: ``refresh_family_revoked:<family>``.
- ``revoke_user`` (password change, account deletion) bumps the user's generation;
  tokens of an older generation are refused.

Access tokens are JWTs and cannot be recalled, so ``revoke_user`` also records a
time before which the user's access tokens are refused (``access_revoked:<user>``, kept
for one access-token lifetime, after which no older token is valid anyway).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from uuid import UUID

from redis.asyncio import Redis

_TOKEN = "refresh:"  # noqa: S105 - a key prefix, not a secret
_FAMILY_REVOKED = "refresh_family_revoked:"
_GENERATION = "refresh_generation:"
_ACCESS_REVOKED = "access_revoked:"

# KEYS[1] token key. ARGV[1] family-revoked prefix, ARGV[2] generation prefix.
# Returns nil (unknown or expired), or {status, user_id, family} with status one of
# "ok" (now marked used), "reused", "revoked".
_USE_SCRIPT = """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return nil end
local t = {}
for i = 1, #rec, 2 do t[rec[i]] = rec[i + 1] end
local gen = redis.call('GET', ARGV[2] .. t.user_id) or '0'
if redis.call('EXISTS', ARGV[1] .. t.family) == 1 or t.generation ~= gen then
    return {'revoked', t.user_id, t.family}
end
if t.used == '1' then return {'reused', t.user_id, t.family} end
redis.call('HSET', KEYS[1], 'used', '1')
return {'ok', t.user_id, t.family}
"""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    status: str  # "ok", "reused", "revoked" or "unknown"
    user_id: UUID | None = None
    family: str | None = None


def _key(token: str) -> str:
    return _TOKEN + hashlib.sha256(token.encode()).hexdigest()


class RefreshTokens:
    def __init__(self, redis: Redis, ttl_seconds: int, access_ttl_seconds: int) -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds
        self._access_ttl = access_ttl_seconds
        self._use = redis.register_script(_USE_SCRIPT)

    async def issue(self, user_id: UUID, family: str | None = None) -> str:
        """A new token; a new family (a new login) unless ``family`` is given."""
        token = secrets.token_urlsafe(32)
        generation = await self._redis.get(_GENERATION + str(user_id)) or b"0"
        record = {
            "user_id": str(user_id),
            "family": family or uuid.uuid4().hex,
            "generation": generation,
            "used": "0",
        }
        key = _key(token)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, self.ttl_seconds)
            await pipe.execute()
        return token

    async def use(self, token: str) -> RefreshResult:
        """Retire ``token``; a token already retired revokes its whole family."""
        found = await self._use(keys=[_key(token)], args=[_FAMILY_REVOKED, _GENERATION])
        if found is None:
            return RefreshResult("unknown")
        status, user_id, family = (v.decode() for v in found)
        if status == "reused":
            await self.revoke_family(family)
        return RefreshResult(status, UUID(user_id), family)

    async def revoke_family(self, family: str) -> None:
        await self._redis.set(_FAMILY_REVOKED + family, b"1", ex=self.ttl_seconds)

    async def family_of(self, token: str) -> tuple[UUID, str] | None:
        """The owner and family of a live token, without using it (for logout)."""
        values = await self._redis.hmget(_key(token), ["user_id", "family"])
        if values[0] is None:
            return None
        return UUID(values[0].decode()), values[1].decode()

    async def revoke_user(self, user_id: UUID) -> None:
        """Every refresh token of the user, and every access token issued before now."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(_GENERATION + str(user_id))  # no TTL: it must outlive every token
            pipe.set(_ACCESS_REVOKED + str(user_id), int(time.time()), ex=self._access_ttl)
            await pipe.execute()

    async def forget_user(self, user_id: UUID) -> None:
        """Account deletion: revoke everything, then drop the per-user generation key."""
        await self.revoke_user(user_id)
        await self._redis.set(_GENERATION + str(user_id), b"deleted", ex=self.ttl_seconds)

    async def access_revoked_before(self, user_id: UUID) -> int:
        """Unix seconds: the user's access tokens issued earlier are refused."""
        value = await self._redis.get(_ACCESS_REVOKED + str(user_id))
        return int(value) if value is not None else 0
