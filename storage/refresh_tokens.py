"""Refresh tokens, sessions and token generations, in Redis.

A refresh token is 32 random bytes. Redis keeps only ``refresh:<sha256>`` with the
user id, the token's family (one per login: the session) and the user's token
generation when it was issued, under the token's TTL, so a dump of Redis holds nothing
that can be presented.

- Refreshing marks the presented token used (it stays, as a tombstone, until its TTL
  ends) and answers with the generation recorded in it, under which the next token of
  the same family is issued. Marking is one Lua script, so of two concurrent refreshes
  with one token exactly one wins.
- Presenting a used token revokes its family (``refresh_family_revoked:<family>``) in
  the same script; so does a logout.
- ``revoke_user`` (password change) bumps the user's generation
  (``refresh_generation:<user>``). Tokens of any other generation are refused.
- ``forget_user`` (account erasure) deletes every key that names the user: their
  tokens (listed in ``refresh_user:<user>`` as they are issued), their generation and
  their restriction. What refuses their tokens from then on is a tombstone keyed by a
  hash of the user id, ``refresh_deleted:<sha256>``, which holds neither id nor email
  and expires once the last token it refuses would have. No token is issued to a user
  with a tombstone: issuing checks it in the same script.
- ``restrict`` marks a user whose consent to processing is withdrawn
  (``processing_restricted:<user>``): their tokens still work, for reading, exporting
  and erasing, but not for writing (docs/gdpr.md).

Access tokens carry their family and generation too, and ``session_state`` is what
they are checked against: one MGET per check.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from uuid import UUID

from redis.asyncio import Redis

_TOKEN = "refresh:"  # noqa: S105 - a key prefix, not a secret
_FAMILY_REVOKED = "refresh_family_revoked:"
_GENERATION = "refresh_generation:"
_USER_TOKENS = "refresh_user:"
_TOMBSTONE = "refresh_deleted:"
_RESTRICTED = "processing_restricted:"

# KEYS[1] token key. ARGV[1] family-revoked prefix, ARGV[2] generation prefix,
# ARGV[3] how long a revoked family is remembered.
# Returns nil (unknown or expired), or {status, user_id, family, generation} with
# status one of "ok" (now marked used), "reused" (its family now revoked), "revoked".
_USE_SCRIPT = """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return nil end
local t = {}
for i = 1, #rec, 2 do t[rec[i]] = rec[i + 1] end
local gen = redis.call('GET', ARGV[2] .. t.user_id) or '0'
if redis.call('EXISTS', ARGV[1] .. t.family) == 1 or t.generation ~= gen then
    return {'revoked', t.user_id, t.family, t.generation}
end
if t.used == '1' then
    redis.call('SET', ARGV[1] .. t.family, '1', 'EX', ARGV[3])
    return {'reused', t.user_id, t.family, t.generation}
end
redis.call('HSET', KEYS[1], 'used', '1')
return {'ok', t.user_id, t.family, t.generation}
"""

# KEYS[1] generation key, KEYS[2] tombstone. Returns the new generation, or nil for
# an erased account (it has nothing left to revoke).
_BUMP_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return nil end
return redis.call('INCR', KEYS[1])
"""

# KEYS[1] token key, KEYS[2] the user's token list, KEYS[3] tombstone. ARGV[1] user id,
# ARGV[2] family, ARGV[3] generation, ARGV[4] TTL. Returns 0 for an erased account.
# The list is a sorted set scored by expiry, trimmed of expired tokens as it grows, so
# it holds no more than the tokens the rate limits let one issue in a TTL.
_ISSUE_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'family', ARGV[2],
           'generation', ARGV[3], 'used', '0')
redis.call('EXPIRE', KEYS[1], ARGV[4])
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS[1] the user's token list, KEYS[2] generation, KEYS[3] tombstone, KEYS[4]
# restriction. ARGV[1] how long the tombstone is kept. Returns the tokens deleted.
_FORGET_SCRIPT = """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
local tokens = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #tokens do redis.call('DEL', tokens[i]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
return #tokens
"""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    status: str  # "ok", "reused", "revoked" or "unknown"
    user_id: UUID | None = None
    family: str | None = None
    generation: int | None = None  # recorded in the token; None if not a number


class AccountErased(Exception):
    """No token is issued to an erased account."""


@dataclass(frozen=True, slots=True)
class SessionState:
    """What an access token of (user, family) is checked against."""

    generation: int | None  # the user's current; None once the account is erased
    revoked: bool  # the family (session) was logged out or caught reused
    restricted: bool = False  # consent to processing withdrawn: no writes


def _key(token: str) -> str:
    return _TOKEN + hashlib.sha256(token.encode()).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _generation(value: bytes | str | None) -> int | None:
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:  # not ours: refuse rather than guess
        return None


def _tombstone(user_id: UUID) -> str:
    return _TOMBSTONE + hashlib.sha256(str(user_id).encode()).hexdigest()


class RefreshTokens:
    def __init__(self, redis: Redis, ttl_seconds: int, access_ttl_seconds: int) -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds
        # Markers must outlive every token they refuse, refresh and access alike.
        self._marker_ttl = max(ttl_seconds, access_ttl_seconds)
        self._use = redis.register_script(_USE_SCRIPT)
        self._bump = redis.register_script(_BUMP_SCRIPT)
        self._issue = redis.register_script(_ISSUE_SCRIPT)
        self._forget = redis.register_script(_FORGET_SCRIPT)

    async def generation(self, user_id: UUID) -> int | None:
        """The user's current token generation; None once the account is erased."""
        generation, erased = await self._redis.mget(
            [_GENERATION + str(user_id), _tombstone(user_id)])
        return None if erased is not None else _generation(generation)

    async def issue(self, user_id: UUID, generation: int, family: str) -> str:
        """A new token of the session ``family``, issued under ``generation``.

        The generation is the caller's to give, never re-read here: a token issued
        under a generation that has since been bumped is born revoked.
        """
        token = secrets.token_urlsafe(32)
        issued = await self._issue(
            keys=[_key(token), _USER_TOKENS + str(user_id), _tombstone(user_id)],
            args=[str(user_id), family, str(generation), self.ttl_seconds])
        if not issued:
            raise AccountErased(str(user_id))
        return token

    async def use(self, token: str) -> RefreshResult:
        """Retire ``token``; a token already retired revokes its whole family."""
        found = await self._use(keys=[_key(token)],
                                args=[_FAMILY_REVOKED, _GENERATION, self._marker_ttl])
        if found is None:
            return RefreshResult("unknown")
        status, user_id, family = (v.decode() for v in found[:3])
        return RefreshResult(status, UUID(user_id), family, _generation(found[3]))

    async def revoke_family(self, family: str) -> None:
        await self._redis.set(_FAMILY_REVOKED + family, b"1", ex=self._marker_ttl)

    async def family_of(self, token: str) -> tuple[UUID, str] | None:
        """The owner and family of a live token, without using it (for logout)."""
        user_id, family = await self._redis.hmget(_key(token), ["user_id", "family"])
        if user_id is None or family is None:
            return None
        return UUID(_text(user_id)), _text(family)

    async def revoke_user(self, user_id: UUID) -> int | None:
        """Bump the generation: every token of the user, refresh and access, is refused.

        Returns the new generation (None if the account is erased). No TTL: the
        generation must outlive every token.
        """
        value = await self._bump(keys=[_GENERATION + str(user_id), _tombstone(user_id)])
        return None if value is None else int(value)

    async def forget_user(self, user_id: UUID) -> int:
        """Account erasure: every key naming the user goes, and a tombstone refuses
        their tokens. Returns how many refresh tokens were deleted."""
        deleted: int = await self._forget(
            keys=[_USER_TOKENS + str(user_id), _GENERATION + str(user_id),
                  _tombstone(user_id), _RESTRICTED + str(user_id)],
            args=[self._marker_ttl])
        return deleted

    async def restrict(self, user_id: UUID, restricted: bool) -> None:
        """Mark (or unmark) the user as having withdrawn consent to processing."""
        if restricted:
            await self._redis.set(_RESTRICTED + str(user_id), b"1")
        else:
            await self._redis.delete(_RESTRICTED + str(user_id))

    async def session_state(self, user_id: UUID, family: str) -> SessionState:
        generation, revoked, erased, restricted = await self._redis.mget(
            [_GENERATION + str(user_id), _FAMILY_REVOKED + family, _tombstone(user_id),
             _RESTRICTED + str(user_id)])
        return SessionState(None if erased is not None else _generation(generation),
                            revoked is not None, restricted is not None)


def new_family() -> str:
    """A session id: one per login, shared by its refresh and access tokens."""
    return uuid.uuid4().hex
