"""Accounts: the ``users`` table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from . import consents


class EmailTaken(Exception):
    """Another account already has this email (compared case-insensitively)."""


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str
    role: str
    created_at: datetime
    password_hash: str
    updated_at: datetime


_INSERT = """
INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3)
RETURNING id, email, role, created_at, password_hash, updated_at
"""
_BY_EMAIL = """
SELECT id, email, role, created_at, password_hash, updated_at FROM users
WHERE lower(email) = lower($1)
"""
_BY_ID = """
SELECT id, email, role, created_at, password_hash, updated_at FROM users WHERE id = $1
"""
_SET_EMAIL = """
UPDATE users SET email = $2, updated_at = now() WHERE id = $1
RETURNING id, email, role, created_at, password_hash, updated_at
"""


def _user(row: asyncpg.Record) -> User:
    return User(**dict(row))


def _user_or_none(row: asyncpg.Record | None) -> User | None:
    return None if row is None else _user(row)


class UserStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, email: str, password_hash: str, role: str = "user",
                     accepted: Sequence[tuple[str, str]] = ()) -> User:
        """A new account, with the (document, version) consents given at sign-up."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(_INSERT, email, password_hash, role)
                await consents.record(conn, row["id"], accepted)
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken(email) from exc
        return _user(row)

    async def set_email(self, user_id: UUID, email: str) -> User | None:
        try:
            return _user_or_none(await self._pool.fetchrow(_SET_EMAIL, user_id, email))
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken(email) from exc

    async def by_email(self, email: str) -> User | None:
        return _user_or_none(await self._pool.fetchrow(_BY_EMAIL, email))

    async def by_id(self, user_id: UUID) -> User | None:
        return _user_or_none(await self._pool.fetchrow(_BY_ID, user_id))

    async def set_password_hash(self, user_id: UUID, password_hash: str) -> None:
        await self._pool.execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
            user_id, password_hash,
        )
