"""Device tokens: proof that a device has signed in to an account before.

OWASP's "device cookies": an attacker who guesses passwords for an account pushes the
account's login into backoff (access.py), but a device that holds a device token of
that account is not held back by it; it gets a failure backoff of its own. So the
owner can still sign in on a device they used before, while the guesser waits.

A device token is not a credential: it never stands in for the password. It is
stateless, ``base64url(user id (16) | expires (8) | nonce (8) | mac (16))``, where the
MAC is HMAC-SHA256 under a key derived from the JWT secret; the previous secrets
still verify, so a rotation does not strip devices of theirs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
from uuid import UUID

LIFETIME_SECONDS = 90 * 24 * 3600  # renewed with every token pair the device receives
_MAC_BYTES = 16
_BODY = struct.Struct(">16sQ8s")  # user id, expires (unix s), nonce


def _derive(secret: str) -> bytes:
    # Its own key, not the JWT key itself: a MAC made for one use never passes for the other.
    return hmac.new(secret.encode(), b"modi-sync device token", hashlib.sha256).digest()


class DeviceTokens:
    def __init__(self, secret: str, previous: tuple[str, ...] = ()) -> None:
        self._key = _derive(secret)
        self._keys = [self._key, *(_derive(s) for s in previous)]

    def issue(self, user_id: UUID) -> str:
        body = _BODY.pack(user_id.bytes, int(time.time()) + LIFETIME_SECONDS,
                          secrets.token_bytes(8))
        return base64.urlsafe_b64encode(body + self._mac(self._key, body)).decode().rstrip("=")

    def holder(self, token: str) -> UUID | None:
        """The account a genuine, unexpired token was issued to; else None."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _BODY.size + _MAC_BYTES:
            return None
        body, mac = raw[:_BODY.size], raw[_BODY.size:]
        if not any(hmac.compare_digest(mac, self._mac(k, body)) for k in self._keys):
            return None
        user, expires, _ = _BODY.unpack(body)
        return UUID(bytes=user) if expires > time.time() else None

    @staticmethod
    def _mac(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]
