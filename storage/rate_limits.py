"""Fixed-window rate limits in Redis: one atomic script per request."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

_PREFIX = "ratelimit:"

# The limits counted per user (keyed by the user id): erasure deletes their counters.
USER_SCOPE = "user"
EXPORT_SCOPE = "export"
IMAGES_SCOPE = "images"
PER_USER_SCOPES = (USER_SCOPE, EXPORT_SCOPE, IMAGES_SCOPE)

# KEYS[1] counter. ARGV[1] window seconds. Returns {count, seconds left in the window}.
# INCR and EXPIRE in one script: a crash between them can never leave a counter
# without a TTL (which would lock the caller out for good).
_HIT_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    requests: int
    window_seconds: int

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``"10/60"``: 10 requests per 60 seconds."""
        count, _, window = text.partition("/")
        limit = cls(int(count), int(window or 60))
        if limit.requests <= 0 or limit.window_seconds <= 0:
            raise ValueError("a rate limit needs a positive count and window")
        return limit


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds
    retry_after: int  # seconds; 0 when allowed


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._hit = redis.register_script(_HIT_SCRIPT)

    async def forget(self, identity: str, scopes: tuple[str, ...] = PER_USER_SCOPES) -> None:
        """Drop ``identity``'s counters (an erased user's)."""
        await self._redis.delete(*(f"{_PREFIX}{scope}:{identity}" for scope in scopes))

    async def hit(self, scope: str, identity: str, limit: Limit) -> Verdict:
        count, ttl = await self._hit(
            keys=[f"{_PREFIX}{scope}:{identity}"], args=[limit.window_seconds]
        )
        count, ttl = int(count), max(int(ttl), 1)
        allowed = count <= limit.requests
        return Verdict(
            allowed=allowed,
            limit=limit.requests,
            remaining=max(limit.requests - count, 0),
            reset_at=int(time.time()) + ttl,
            retry_after=0 if allowed else ttl,
        )
