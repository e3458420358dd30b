"""Rate limits: per client IP on register/login, per user on authenticated routes."""

from __future__ import annotations

import time
import uuid

from .conftest import register
from .yclient import eventually


def _address() -> str:
    """A documentation address of its own, so no other test shares the counter."""
    n = uuid.uuid4().int
    return f"203.0.{n % 250}.{(n >> 8) % 250 + 1}"


async def _login(client, ip: str):  # noqa: ANN001, ANN202
    return await client.post(
        "/api/v1/auth/login",
        json={"email": "nobody@example.com", "password": "wrong password"},
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

    async def call(token: str):  # noqa: ANN202
        return await client.post(
            "/api/v1/auth/password", headers={"Authorization": f"Bearer {token}"},
            json={"current_password": "wrong password", "new_password": "battery staple"})

    assert [(await call(pair["access_token"])).status for _ in range(3)] == [401, 401, 429]
    assert (await call(other["access_token"])).status == 401
