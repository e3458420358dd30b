"""Answers of the food routes cached in Redis under versioned keys.

A cached answer's key holds the versions of what it was computed from: the foods table
(bumped by every import, contribution, verification and erasure that changed a food)
and the popular list's counts (bumped by an aggregator pass that changed them). A
change makes a new key; the old answers are never read again and expire by their TTL.
No scan of keys, and no window where a stale answer is served after the bump.
"""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

FOODS_VERSION = "foods:version"
COUNTS_VERSION = "foods:popular:version"

# The seed's TTLs.
SEARCH_TTL = 15 * 60
POPULAR_TTL = 60 * 60

# KEYS: the two versions. ARGV: the answer's kind, its hash. Returns {key, answer or
# false}: one round trip where reading the versions first would take two.
_GET_SCRIPT = """
local v = redis.call('MGET', KEYS[1], KEYS[2])
local key = ARGV[1] .. ':' .. (v[1] or '0') .. ':' .. (v[2] or '0') .. ':' .. ARGV[2]
return {key, redis.call('GET', key)}
"""


async def bump_version(redis: Redis) -> None:
    """The foods table changed."""
    await redis.incr(FOODS_VERSION)


async def bump_popular_version(redis: Redis) -> None:
    """The popular list's counts changed."""
    await redis.incr(COUNTS_VERSION)


class FoodCache:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._get = redis.register_script(_GET_SCRIPT)

    async def get(self, kind: str, request: str) -> tuple[str, bytes | None]:
        """The key for ``request`` under the current versions, and its cached answer."""
        digest = hashlib.sha256(request.encode()).hexdigest()
        key, answer = await self._get(keys=[FOODS_VERSION, COUNTS_VERSION],
                                      args=[kind, digest])
        return (key.decode() if isinstance(key, bytes) else key), (answer or None)

    async def put(self, key: str, answer: bytes, ttl: int) -> None:
        await self._redis.set(key, answer, ex=ttl)

    async def foods_changed(self) -> None:
        await bump_version(self._redis)
