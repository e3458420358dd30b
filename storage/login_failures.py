"""Password-check backoff: wrong passwords per subject (an account, a device), in Redis.

``begin`` counts an attempt before the password is checked, and answers how long the
caller must wait instead when the subject is backing off; ``succeeded`` forgets the
count. Counting first is what makes it hold under concurrency: of many attempts sent
at the moment a backoff ends, the first starts the next backoff and the others wait.

After ``free`` attempts without a success, each further attempt starts a wait of 1,
2, 4 ... seconds, up to ``max_wait``. The count is forgotten a day after the last
attempt (or twice the longest wait, if that is longer).
"""

from __future__ import annotations

import hashlib
import math

from redis.asyncio import Redis

_PREFIX = "login_failures:"
_KEPT_SECONDS = 24 * 3600

# KEYS[1] the subject's record. ARGV[1] free attempts, ARGV[2] longest wait (s),
# ARGV[3] how long the record is kept (s). Returns 0 (go ahead: counted), or the
# milliseconds left to wait. Redis's own clock: every instance judges alike.
_BEGIN_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if until_ms > now then return until_ms - now end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free = tonumber(ARGV[1])
if n >= free then
    local wait = math.min(2 ^ (n - free), tonumber(ARGV[2]))
    redis.call('HSET', KEYS[1], 'until', now + wait * 1000)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"""


def subject(kind: str, identity: str) -> str:
    """A record name that does not hold the email or token it stands for."""
    return f"{kind}:{hashlib.sha256(identity.encode()).hexdigest()}"


class LoginFailures:
    def __init__(self, redis: Redis, free: int, max_wait_seconds: int) -> None:
        self._redis = redis
        self._free = free
        self._max_wait = max_wait_seconds
        self._kept = max(_KEPT_SECONDS, 2 * max_wait_seconds)
        self._begin = redis.register_script(_BEGIN_SCRIPT)

    async def begin(self, subject: str) -> int:
        """0: go ahead (the attempt is counted); else the seconds left to wait."""
        wait_ms = int(await self._begin(keys=[_PREFIX + subject],
                                        args=[self._free, self._max_wait, self._kept]))
        return math.ceil(wait_ms / 1000) if wait_ms > 0 else 0

    async def succeeded(self, subject: str) -> None:
        await self._redis.delete(_PREFIX + subject)

    async def forget(self, *subjects: str) -> None:
        """Drop these subjects' counts (an erased account's)."""
        await self._redis.delete(*(_PREFIX + s for s in subjects))
