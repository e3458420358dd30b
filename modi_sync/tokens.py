"""Access tokens (JWT, HS256 only) and the signing secret."""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import jwt

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "email", "role", "iat", "exp", "jti"]


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, of another algorithm, or expired."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: UUID
    email: str
    role: str
    jti: str
    issued_at: int
    expires_at: int


_VERIFIED_KEPT = 1024  # tokens whose verified claims are remembered


class AccessTokens:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        # A device presents the same token for every socket and request until it
        # refreshes; checking its signature once is enough (PyJWT re-examines the key
        # on every decode, a large part of a websocket open). Only tokens that passed
        # are kept, by their whole text, and expiry is still checked on every use.
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: UUID, email: str, role: str) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "email": email,
            "role": role,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= _VERIFIED_KEPT:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = claims
        if claims.expires_at <= time.time():  # as PyJWT judges "exp"
            raise InvalidToken("Signature has expired")
        return claims

    def _decode(self, token: str) -> AccessClaims:
        # The algorithm list is pinned: a token naming any other alg, "none" included,
        # is refused before its signature is looked at.
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM],
                options={"require": _REQUIRED_CLAIMS},
            )
            return AccessClaims(
                user_id=UUID(claims["sub"]),
                email=str(claims["email"]),
                role=str(claims["role"]),
                jti=str(claims["jti"]),
                issued_at=int(claims["iat"]),
                expires_at=int(claims["exp"]),
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from exc


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else one generated once and kept in the data dir (0600)."""
    if configured:
        return configured
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret)
    log.warning("JWT_SECRET is not set: generated one and kept it in %s", path)
    return secret
