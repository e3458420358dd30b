"""The accounts service: creating a user, ending a user's sessions, deleting an account.

The REST routes and the commands both call these, so each is written once. Ending a
user's sessions reaches every instance: the instance that ends them refuses the
sessions' tokens and closes the user's sockets at once (``on_sessions_ended``), and
every other instance does on the ``modi:sessions-ended`` channel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from uuid import UUID

from redis.asyncio import Redis

from storage.refresh_tokens import RefreshTokens
from storage.session_events import publish_session_ended
from storage.users import EmailTaken, User, UserStore

from .errors import Conflict, Invalid
from .passwords import hash_password

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PASSWORD_LENGTHS = (8, 256)


def checked_email(email: str) -> str:
    """The email as it is stored; Invalid if it is not one."""
    if _CONTROL.search(email):  # ESC and friends would be stored and shown as they are
        raise Invalid("email", "must not contain control characters")
    email = email.strip()
    if not _EMAIL.fullmatch(email):
        raise Invalid("email", "not an email address")
    return email


def check_password(password: str, field: str = "password") -> None:
    low, high = PASSWORD_LENGTHS
    if not low <= len(password) <= high:
        raise Invalid(field, f"length must be {low}..{high}")


class Accounts:
    def __init__(
        self,
        users: UserStore,
        refresh_tokens: RefreshTokens,
        redis: Redis,
        on_sessions_ended: Callable[[UUID], None] | None = None,
    ) -> None:
        self._users = users
        self._refresh_tokens = refresh_tokens
        self._redis = redis
        self._on_sessions_ended = on_sessions_ended

    async def create(self, email: str, password: str, role: str = "user") -> User:
        """A new account; Invalid for a bad email or password, Conflict for a taken email."""
        email = checked_email(email)
        check_password(password)
        try:
            return await self._users.create(email, await hash_password(password), role)
        except EmailTaken:
            raise Conflict("an account with this email exists") from None

    async def end_sessions(self, user_id: UUID) -> None:
        """Refuse the ended sessions' tokens and close the user's sync sockets, here at
        once and on every other instance. What ended them (a revoked family, a new
        generation) is the caller's: this makes every instance look again."""
        if self._on_sessions_ended is not None:
            self._on_sessions_ended(user_id)
        await publish_session_ended(self._redis, user_id)

    async def delete(self, user_id: UUID) -> bool:
        """Erase the account: its tokens refused everywhere, its sockets closed, its row,
        documents and their history gone. False if there was no such account."""
        await self._refresh_tokens.forget_user(user_id)
        await self.end_sessions(user_id)
        return await self._users.delete(user_id)
