"""Rate limits: per client address on register/login and on refresh/logout, per user on
authenticated routes."""

from __future__ import annotations

import time
import uuid

import aiohttp

from modi_sync.access import address_bucket

from .conftest import Client, register
from .yclient import eventually


def _address() -> str:
    """A documentation address of its own, so no other test shares the counter."""
    n = uuid.uuid4().int
    return f"203.0.{n % 250}.{(n >> 8) % 250 + 1}"


async def _login(client: Client, ip: str) -> aiohttp.ClientResponse:
    """A failed login; each with an email of its own, so no account backoff joins in."""
    return await client.post(
        "/api/v1/auth/login",
        json={"email": f"nobody-{uuid.uuid4().hex[:10]}@example.com",
              "password": "wrong password"},
        headers={"X-Forwarded-For": ip},
    )


async def test_login_limit_trips_at_the_configured_count_and_resets(make_client):
    client = await make_client(rate_limit_auth="3/1", trusted_proxies=("127.0.0.1",))
    ip = _address()
    statuses = []
    for expected_remaining in (2, 1, 0):
        resp = await _login(client, ip)
        statuses.append(resp.status)
        assert resp.headers["X-Rate-Limit-Limit"] == "3"
        assert resp.headers["X-Rate-Limit-Remaining"] == str(expected_remaining)
        assert int(resp.headers["X-Rate-Limit-Reset"]) >= int(time.time())
    assert statuses == [401, 401, 401]
    limited = await _login(client, ip)
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(limited.headers["Retry-After"]) <= 1
    assert (await _login(client, _address())).status == 401  # another address is not limited

    async def reset() -> bool:
        return (await _login(client, ip)).status == 401

    await eventually(reset, timeout=5)


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(make_client):
    client = await make_client(rate_limit_auth="2/60")  # 127.0.0.1 is not a trusted proxy
    first = await _login(client, _address())
    second = await _login(client, _address())
    # Were X-Forwarded-For believed, each fresh address would start a count of its own
    # (remaining 1 both times); the peer's one counter goes down instead.
    remaining = int(first.headers["X-Rate-Limit-Remaining"])
    assert int(second.headers["X-Rate-Limit-Remaining"]) == max(remaining - 1, 0)


async def test_authenticated_routes_are_limited_per_user(make_client):
    client = await make_client(rate_limit_user="2/60")
    pair = await register(client)
    other = await register(client)

    async def call(token: str) -> aiohttp.ClientResponse:
        return await client.post(
            "/api/v1/auth/password", headers={"Authorization": f"Bearer {token}"},
            json={"current_password": "wrong password", "new_password": "battery staple"})

    assert [(await call(pair["access_token"])).status for _ in range(3)] == [401, 401, 429]
    assert (await call(other["access_token"])).status == 401


def _ipv6_prefix() -> str:
    """A documentation /64 of its own (2001:db8::/32)."""
    n = uuid.uuid4().int
    return f"2001:db8:{n % 0xffff:x}:{(n >> 16) % 0xffff:x}"


async def test_an_ipv6_client_counts_per_64_not_per_address(make_client):
    client = await make_client(rate_limit_auth="2/60", trusted_proxies=("127.0.0.1",))
    prefix = _ipv6_prefix()
    # Three addresses of one /64, as one subscriber may pick at will: one count.
    statuses = [(await _login(client, f"{prefix}::{host}")).status for host in ("1", "2", "beef")]
    assert statuses == [401, 401, 429]
    # Another /64 has a count of its own.
    assert (await _login(client, f"{_ipv6_prefix()}::1")).status == 401


def test_address_buckets():
    assert address_bucket("203.0.113.7") == "203.0.113.7"
    assert address_bucket("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:2::1") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:203.0.113.7") == "203.0.113.7"  # IPv4, as IPv6 spells it
    assert address_bucket("fe80::1%eth0") == "fe80::/64"
    assert address_bucket("unknown") == "unknown"


async def test_refresh_and_logout_have_a_limit_of_their_own(make_client):
    client = await make_client(rate_limit_auth="1/60", rate_limit_refresh="2/60",
                               trusted_proxies=("127.0.0.1",))
    ip = _address()

    async def post(route: str, body: dict[str, str]) -> aiohttp.ClientResponse:
        return await client.post(f"/api/v1/auth/{route}", json=body,
                                 headers={"X-Forwarded-For": ip})

    assert (await _login(client, ip)).status == 401
    assert (await _login(client, ip)).status == 429  # login's count is spent ...
    token = {"refresh_token": "not-a-token"}
    first = await post("refresh", token)  # ... refresh's is not
    assert first.status == 401
    assert first.headers["X-Rate-Limit-Limit"] == "2"
    assert (await post("logout", token)).status == 401
    limited = await post("refresh", token)  # refresh and logout share theirs
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
