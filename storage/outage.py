"""Whether an error means PostgreSQL or Redis is out of reach (or out of disk) for now.

Such an error is the service's state, neither the request's fault nor a bug: the
server answers 503 UNAVAILABLE, so that clients retry, rather than 500 (docs/security.md,
"While Redis or PostgreSQL is away"). Only this package knows the drivers' exceptions.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions

# A connection refused, reset or timed out (OSError; TimeoutError is one); PostgreSQL
# refusing connections while it starts or stops, shut down or crashed under a query,
# out of disk, memory or connection slots (class 53); redis-py's connection and
# timeout errors, a Redis still loading its data among them.
_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InsufficientResourcesError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_outage(error: BaseException) -> bool:
    """PostgreSQL or Redis cannot be reached, or cannot store, right now."""
    if isinstance(error, _OUTAGES):
        return True
    # asyncpg's InterfaceError is also a caller's misuse (a bug); "closed" is the lost
    # connection, or the pool shutting down under the request.
    return isinstance(error, asyncpg.InterfaceError) and "closed" in str(error)
