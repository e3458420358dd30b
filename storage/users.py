"""Accounts: the ``users`` table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg


class EmailTaken(Exception):
    """Another account already has this email (compared case-insensitively)."""


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str
    role: str
    created_at: datetime
    password_hash: str


_INSERT = """
INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3)
RETURNING id, email, role, created_at, password_hash
"""
_BY_EMAIL = """
SELECT id, email, role, created_at, password_hash FROM users WHERE lower(email) = lower($1)
"""
_BY_ID = "SELECT id, email, role, created_at, password_hash FROM users WHERE id = $1"


def _user(row: asyncpg.Record) -> User:
    return User(**dict(row))


def _user_or_none(row: asyncpg.Record | None) -> User | None:
    return None if row is None else _user(row)


class UserStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, email: str, password_hash: str, role: str = "user") -> User:
        try:
            row = await self._pool.fetchrow(_INSERT, email, password_hash, role)
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken(email) from exc
        return _user(row)

    async def by_email(self, email: str) -> User | None:
        return _user_or_none(await self._pool.fetchrow(_BY_EMAIL, email))

    async def by_id(self, user_id: UUID) -> User | None:
        return _user_or_none(await self._pool.fetchrow(_BY_ID, user_id))

    async def set_password_hash(self, user_id: UUID, password_hash: str) -> None:
        await self._pool.execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
            user_id, password_hash,
        )

    async def delete(self, user_id: UUID) -> bool:
        """Erase the account; its documents and their history go with it (cascade)."""
        status: str = await self._pool.execute("DELETE FROM users WHERE id = $1", user_id)
        return status == "DELETE 1"
