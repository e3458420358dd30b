"""Access tokens (JWT, HS256 only) and the signing secrets."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import jwt

from .config import MIN_SECRET_BYTES

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "email", "role", "iat", "exp", "jti", "sid", "gen"]


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, of another algorithm, or expired."""


class SecretError(Exception):
    """The signing secret cannot be used; the message says why and where."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: UUID
    email: str
    role: str
    jti: str
    issued_at: int
    expires_at: int
    session: str  # "sid": the refresh family of the login that issued it
    generation: int  # "gen": the user's token generation when it was issued


def key_id(secret: str) -> str:
    """The ``kid`` naming a secret: derived from it, so no one names keys by hand."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


_VERIFIED_KEPT = 1024  # tokens whose verified claims are remembered


class AccessTokens:
    """Signs with ``secret`` only; verifies with it and with ``previous`` (rotation)."""

    def __init__(self, secret: str, ttl_seconds: int, previous: tuple[str, ...] = ()) -> None:
        self._secret = secret
        self._kid = key_id(secret)
        self._keys = {key_id(s): s for s in (*previous, secret)}
        self.ttl_seconds = ttl_seconds
        # A device presents the same token for every socket and request until it
        # refreshes; checking its signature once is enough (PyJWT re-examines the key
        # on every decode, a large part of a websocket open). Only tokens that passed
        # are kept, by their whole text, and expiry is still checked on every use.
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: UUID, email: str, role: str, *, session: str,
              generation: int) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "email": email,
            "role": role,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "sid": session,
            "gen": generation,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM,
                          headers={"kid": self._kid})

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
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken("unknown key id")
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], options={"require": _REQUIRED_CLAIMS},
            )
            generation = claims["gen"]
            if not isinstance(generation, int) or isinstance(generation, bool):
                raise InvalidToken("gen is not an integer")
            return AccessClaims(
                user_id=UUID(claims["sub"]),
                email=str(claims["email"]),
                role=str(claims["role"]),
                jti=str(claims["jti"]),
                issued_at=int(claims["iat"]),
                expires_at=int(claims["exp"]),
                session=str(claims["sid"]),
                generation=generation,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from exc


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """The configured secret, else one generated once and kept in the data dir (0600).

    A kept secret that others may read or change, or that is empty or short, is
    refused (SecretError) rather than trusted. The configured one is checked with the
    other settings (config.py).
    """
    if configured:
        return configured
    path = data_dir / "jwt_secret"
    if path.exists():
        return _read_secret_file(path)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret)
    log.warning("JWT_SECRET is not set: generated one and kept it in %s", path)
    return secret


def _read_secret_file(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        secret = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{path} cannot be read as a secret: {exc}") from None
    if mode & 0o077:
        raise SecretError(f"{path} has mode {mode:04o}: group and others must have no access "
                          f"(chmod 600 {path})")
    if not secret:
        raise SecretError(f"{path} is empty: put the secret back, or delete the file to "
                          "have a new one generated")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SecretError(f"{path} holds a secret shorter than {MIN_SECRET_BYTES} bytes")
    return secret
