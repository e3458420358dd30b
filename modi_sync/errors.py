"""What cannot be done, said in the server's own terms, below the HTTP layer.

The services, the access checks and the commands raise these; ``modi_sync/api/errors.py``
maps each to the contract's error envelope (one table), and the CLI prints its message.
Nothing below ``modi_sync/api`` knows an HTTP status.
"""

from __future__ import annotations


class ModiError(Exception):
    """A request or command that cannot be done; its message may be shown to the caller."""


class Unauthenticated(ModiError):
    """No valid credentials: a missing, invalid or ended token, or a wrong password."""


class RateLimited(ModiError):
    """Too many requests, or a password check during its backoff."""

    def __init__(self, retry_after: int, message: str = "too many requests, slow down") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Invalid(ModiError):
    """One input is not acceptable; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Forbidden(ModiError):
    """Authenticated, but not allowed: an admin's action, or a write after the user
    withdrew consent to processing."""


class NotFound(ModiError):
    """No such thing, or not the caller's."""


class Conflict(ModiError):
    """It exists already (an email, say)."""


class TooLarge(ModiError):
    """Past a size limit or a quota."""


class Unsupported(ModiError):
    """A kind of content that is not taken (an image neither JPEG nor PNG)."""


class Unavailable(ModiError):
    """Storage cannot do it now; trying again later may work."""
