"""Who is calling, and may they: bearer tokens, client addresses, rate limits, backoff."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from aiohttp import web

from storage.rate_limits import USER_SCOPE, Limit, Verdict

from .app_keys import (
    ACCESS_TOKENS,
    LOGIN_FAILURES,
    RATE_LIMITER,
    RATE_VERDICT,
    REQUEST_ID,
    SESSION_STATES,
    SETTINGS,
)
from .audit import Actor, stored_ip
from .errors import Forbidden, RateLimited, Unauthenticated
from .tokens import AccessClaims, InvalidToken


async def authenticate(request: web.Request, *, allow_query_token: bool = False,
                       writes: bool = False) -> AccessClaims:
    """The verified claims of the caller's access token, or a 401.

    Browsers cannot set headers on a websocket upgrade, so the sync endpoint also
    takes the token as ``?token=``. A token of an ended session (logged out, caught
    reused), of an earlier generation (the password changed since), or of a deleted
    user is refused as well. With ``writes``, a user who withdrew consent to
    processing is refused too (403): what they store is processing.
    """
    token = None
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    elif allow_query_token:
        token = request.query.get("token")
    if not token:
        raise Unauthenticated("missing access token")
    try:
        claims = request.app[ACCESS_TOKENS].verify(token)
    except InvalidToken:
        raise Unauthenticated("invalid or expired access token") from None
    state = await request.app[SESSION_STATES].state(claims.user_id, claims.session)
    if state.revoked or state.generation != claims.generation:
        raise Unauthenticated("invalid or expired access token")
    if writes and state.restricted:
        raise Forbidden("consent to the privacy policy is withdrawn: accept it again "
                        "(PUT /api/v1/users/me/consents) to store data")
    return claims


async def authenticated_user(request: web.Request, *, writes: bool = False) -> AccessClaims:
    """For REST routes: authenticate, then count the call against the user's limit."""
    claims = await authenticate(request, writes=writes)
    await enforce_rate_limit(request, USER_SCOPE, str(claims.user_id),
                             request.app[SETTINGS].rate_limit_user)
    return claims


def actor(request: web.Request) -> Actor:
    """The request as the audit log records it."""
    return Actor(request[REQUEST_ID],
                 stored_ip(client_ip(request), request.app[SETTINGS].audit_ip))


async def enforce_rate_limit(request: web.Request, scope: str, identity: str, spec: str) -> None:
    verdict = await request.app[RATE_LIMITER].hit(scope, identity, _limit(spec))
    request[RATE_VERDICT] = verdict  # the headers are added to whatever response follows
    if not verdict.allowed:
        raise RateLimited(verdict.retry_after)


async def begin_password_check(request: web.Request, subject: str) -> None:
    """Count a password check against ``subject``; a 429 while it backs off.

    The password is then not even looked at, so a guess made during the wait
    tells nothing. Call ``LoginFailures.succeeded`` when the password was right.
    """
    wait = await request.app[LOGIN_FAILURES].begin(subject)
    if wait:
        raise RateLimited(wait)


def rate_limit_headers(verdict: Verdict) -> dict[str, str]:
    return {
        "X-Rate-Limit-Limit": str(verdict.limit),
        "X-Rate-Limit-Remaining": str(verdict.remaining),
        "X-Rate-Limit-Reset": str(verdict.reset_at),
    }


def client_ip(request: web.Request) -> str:
    """The peer address; behind a trusted proxy, the nearest untrusted X-Forwarded-For hop."""
    peer = request.remote or "unknown"
    trusted = _networks(request.app[SETTINGS].trusted_proxies)
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):  # the right end was added by the proxies we trust
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def address_bucket(address: str) -> str:
    """What a per-address limit counts: an IPv4 address, or an IPv6 client's /64.

    One IPv6 subscriber is routinely given a whole /64 and picks addresses from it at
    will; counted per /128, each of them would start a fresh count.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown" (a unix socket), or a proxy's odd hop: as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@lru_cache(maxsize=16)
def _limit(spec: str) -> Limit:
    return Limit.parse(spec)


_Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@lru_cache(maxsize=16)
def _networks(specs: tuple[str, ...]) -> _Networks:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def _is_trusted(address: str, networks: _Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
