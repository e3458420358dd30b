"""The accounts service: creating a user, their profile and consents, ending their
sessions, erasing the account.

The REST routes and the commands both call these, so each is written once, and each
writes its own audit entry. Ending a user's sessions reaches every instance: the
instance that ends them refuses the sessions' tokens and closes the user's sockets at
once (``on_session_event``), and every other instance does on the
``modi:sessions-ended`` channel. A withdrawn consent travels the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from uuid import UUID

from storage import connection_leases
from storage.consents import Consent
from storage.erasure import Erased, erase_account
from storage.food_cache import bump_version
from storage.login_failures import subject
from storage.session_events import (
    RESTORED,
    RESTRICTED,
    SessionEvent,
    publish_session_event,
)
from storage.users import EmailTaken, User

from .audit import Actor
from .errors import Conflict, Invalid, NotFound
from .passwords import hash_password
from .runtime import Storage

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


@dataclass(frozen=True, slots=True)
class Consents:
    current: dict[str, Consent]  # by document; a withdrawal has version None
    history: list[Consent]  # newest first
    total: int  # rows in the whole history

    @property
    def restricted(self) -> bool:
        """Consent to the privacy policy withdrawn: processing is restricted."""
        policy = self.current.get("privacy_policy")
        return policy is not None and policy.version is None


class Accounts:
    def __init__(self, storage: Storage,
                 on_session_event: Callable[[SessionEvent], None] | None = None) -> None:
        self._storage = storage
        self._on_session_event = on_session_event

    async def create(self, email: str, password: str, role: str = "user", *,
                     accepted: Sequence[tuple[str, str]] = (),
                     actor: Actor | None = None) -> User:
        """A new account, with the consents given at sign-up; Invalid for a bad email or
        password, Conflict for a taken email."""
        email = checked_email(email)
        check_password(password)
        try:
            user = await self._storage.users.create(
                email, await hash_password(password), role, accepted)
        except EmailTaken:
            raise Conflict("an account with this email exists") from None
        actor = actor or Actor.command("user-create")
        await self._storage.audit.append(actor.entry(
            "account.created", "user", user_id=user.id, resource_id=str(user.id),
            details={"role": role, "accepted": dict(accepted)}))
        return user

    async def find(self, email_or_id: str) -> User:
        """An account by its id or its email (the commands' argument)."""
        users = self._storage.users
        try:
            user = await users.by_id(UUID(email_or_id))
        except ValueError:
            user = await users.by_email(email_or_id)
        if user is None:
            raise NotFound(f"no account {email_or_id}")
        return user

    async def change_email(self, user: User, email: str, actor: Actor) -> User:
        """The caller has checked the password."""
        email = checked_email(email)
        try:
            changed = await self._storage.users.set_email(user.id, email)
        except EmailTaken:
            raise Conflict("an account with this email exists") from None
        if changed is None:
            raise NotFound("no such account")
        await self._storage.audit.append(actor.entry(
            "account.email_changed", "user", user_id=user.id, resource_id=str(user.id)))
        return changed

    # -- consents -------------------------------------------------------------------------

    async def consents(self, user_id: UUID, limit: int = 20, offset: int = 0) -> Consents:
        store = self._storage.consents
        history, total = await store.history(user_id, limit, offset)
        return Consents(await store.current(user_id), history, total)

    async def change_consents(self, user_id: UUID, changes: Sequence[tuple[str, str | None]],
                              actor: Actor) -> Consents:
        """Accept (a version) or withdraw (None) each document. A withdrawn privacy
        policy restricts processing at once, on every instance (docs/gdpr.md)."""
        made = await self._storage.consents.change(user_id, changes)
        for document, version in made:
            await self._storage.audit.append(actor.entry(
                "consent.accepted" if version is not None else "consent.withdrawn",
                "consent", user_id=user_id, resource_id=document,
                details={"version": version}))
        consents = await self.consents(user_id)
        # Set every time, not only on a change: a request that failed after the row
        # was stored is made good by its retry.
        await self._storage.refresh_tokens.restrict(user_id, consents.restricted)
        if made:
            await self._announce(SessionEvent(user_id,
                                              RESTRICTED if consents.restricted else RESTORED))
        return consents

    # -- sessions and erasure -------------------------------------------------------------

    async def end_sessions(self, user_id: UUID) -> None:
        """Refuse the ended sessions' tokens and close the user's sync sockets, here at
        once and on every other instance. What ended them (a revoked family, a new
        generation) is the caller's: this makes every instance look again."""
        await self._announce(SessionEvent(user_id))

    async def delete(self, user_id: UUID, actor: Actor) -> Erased | None:
        """Erase the account (storage/erasure.py), then every Redis key that names it;
        its tokens are refused and its sockets closed everywhere. None if there was no
        such account (its Redis keys are scrubbed all the same: a retry finishes the
        job of an erasure that stopped midway)."""
        storage = self._storage
        # Logged like the entries it strips: without an address.
        logged = replace(actor, ip=None).entry("account.deleted", "user", user_id=user_id,
                                               resource_id=str(user_id))
        erased = await erase_account(storage.pool, user_id, logged)
        await storage.refresh_tokens.forget_user(user_id)
        await storage.rate_limiter.forget(str(user_id))
        await connection_leases.forget_user(storage.redis, user_id)
        subjects = [subject("login", str(user_id)), subject("password", str(user_id))]
        if erased is not None:
            subjects.append(subject("login", erased.email.lower()))
        await storage.login_failures.forget(*subjects)
        if erased is not None and erased.foods_deleted:
            await bump_version(storage.redis)  # cached search answers may hold them
        await self.end_sessions(user_id)
        return erased

    async def _announce(self, event: SessionEvent) -> None:
        if self._on_session_event is not None:
            self._on_session_event(event)
        await publish_session_event(self._storage.redis, event)
