"""Password guessing: a backoff per account (whatever the address), device tokens that keep
the owner in, and a tight count on the routes that check a password with a bearer token."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson

from modi_sync.app_keys import REDIS
from storage.login_failures import LoginFailures, subject

from .conftest import Client, MakeClient, register
from .yclient import eventually

LOGIN = "/api/v1/auth/login"
RIGHT, WRONG = "correct horse", "wrong password"


def _address() -> str:
    n = uuid.uuid4().int
    return f"198.51.{n % 250}.{(n >> 8) % 250 + 1}"


async def _login(client: Client, email: str, password: str,
                 device_token: str | None = None) -> aiohttp.ClientResponse:
    """Each attempt from a fresh address: the per-address limit never sees two."""
    body = {"email": email, "password": password}
    if device_token is not None:
        body["device_token"] = device_token
    return await client.post(LOGIN, json=body, headers={"X-Forwarded-For": _address()})


async def _backoff_client(make_client: MakeClient, free: int, longest: int = 900) -> Client:
    return await make_client(login_free_failures=free, login_backoff_max=longest,
                             trusted_proxies=("127.0.0.1",))


async def _assert_backing_off(resp: aiohttp.ClientResponse, at_most: int) -> bytes:
    assert resp.status == 429
    body = await resp.read()
    error = orjson.loads(body)["error"]
    assert error["code"] == "RATE_LIMITED"
    assert 1 <= int(resp.headers["Retry-After"]) <= at_most
    assert error["details"] == {"retry_after": int(resp.headers["Retry-After"])}
    return body


async def test_wrong_passwords_back_the_account_off_from_every_address(make_client):
    client = await _backoff_client(make_client, free=2)
    email = (await register(client))["user"]["email"]
    assert [(await _login(client, email, WRONG)).status for _ in range(2)] == [401, 401]
    # Two free failures spent: the account waits 1 s, and meanwhile even the right
    # password is not looked at.
    await _assert_backing_off(await _login(client, email, WRONG), at_most=1)
    await _assert_backing_off(await _login(client, email, RIGHT), at_most=1)

    async def answered() -> bool:
        resp = await _login(client, email, WRONG)
        return resp.status == 401

    await eventually(answered, timeout=3)
    await _assert_backing_off(await _login(client, email, WRONG), at_most=2)  # doubled

    async def signed_in() -> bool:
        return (await _login(client, email, RIGHT)).status == 200

    await eventually(signed_in, timeout=4)
    # A success forgets the count: two free failures again.
    assert [(await _login(client, email, WRONG)).status for _ in range(2)] == [401, 401]
    await _assert_backing_off(await _login(client, email, WRONG), at_most=1)


async def test_every_spelling_of_the_email_counts_for_the_one_account(make_client):
    client = await _backoff_client(make_client, free=2)
    email = (await register(client))["user"]["email"]
    for spelling in (email, email.upper()):
        assert (await _login(client, spelling, WRONG)).status == 401
    await _assert_backing_off(await _login(client, email.title(), WRONG), at_most=1)


async def test_the_wait_is_capped_at_the_longest_backoff(make_client):
    client = await _backoff_client(make_client, free=1, longest=1)
    email = (await register(client))["user"]["email"]
    for _ in range(3):
        async def answered() -> bool:
            return (await _login(client, email, WRONG)).status == 401

        await eventually(answered, timeout=3)
        await _assert_backing_off(await _login(client, email, WRONG), at_most=1)


async def test_an_unknown_email_backs_off_exactly_like_an_account(make_client):
    """A 429 must not tell whether the email has an account."""
    client = await _backoff_client(make_client, free=2, longest=900)
    known = (await register(client))["user"]["email"]
    unknown = f"nobody-{uuid.uuid4().hex[:10]}@example.com"
    answers = {}
    for email in (known, unknown):
        statuses = [(await _login(client, email, WRONG)).status for _ in range(2)]
        limited = await _login(client, email, WRONG)
        answers[email] = (statuses, limited.status, await limited.read())
    assert answers[known] == answers[unknown]
    assert answers[known][:2] == ([401, 401], 429)


async def test_concurrent_guesses_get_no_more_than_the_free_attempts(make_client):
    """Attempts are counted before the password is checked, so a burst does not slip
    past the count while the first guesses are being hashed."""
    client = await _backoff_client(make_client, free=2)
    email = (await register(client))["user"]["email"]
    responses = await asyncio.gather(*(_login(client, email, WRONG) for _ in range(12)))
    assert sorted(r.status for r in responses) == [401, 401] + [429] * 10


async def test_a_device_that_signed_in_before_is_not_locked_out(make_client):
    client = await _backoff_client(make_client, free=1)
    owner = await register(client)
    email = owner["user"]["email"]
    stranger = await register(client)
    # Someone guesses: the account backs off for everyone without a device token...
    assert (await _login(client, email, WRONG)).status == 401
    await _assert_backing_off(await _login(client, email, RIGHT), at_most=1)
    # ... and for tokens that are not this account's, or not genuine.
    device_token = owner["device_token"]
    forged = device_token[:-4] + ("BBBB" if device_token.endswith("AAAA") else "AAAA")
    for device in (stranger["device_token"], forged, "x" * 64):
        await _assert_backing_off(await _login(client, email, RIGHT, device), at_most=1)
    # The owner's device signs in at once.
    resp = await _login(client, email, RIGHT, owner["device_token"])
    assert resp.status == 200
    renewed = (await resp.json())["data"]["device_token"]
    # A device backs off on its own wrong passwords, not the owner's other devices.
    assert (await _login(client, email, WRONG, owner["device_token"])).status == 401
    await _assert_backing_off(await _login(client, email, RIGHT, owner["device_token"]),
                              at_most=1)
    assert (await _login(client, email, RIGHT, renewed)).status == 200


async def test_a_refresh_hands_the_device_a_token_that_keeps_it_in(make_client):
    client = await _backoff_client(make_client, free=1)
    owner = await register(client)
    resp = await client.post("/api/v1/auth/refresh",
                             json={"refresh_token": owner["refresh_token"]})
    device = (await resp.json())["data"]["device_token"]
    assert (await _login(client, owner["user"]["email"], WRONG)).status == 401
    assert (await _login(client, owner["user"]["email"], RIGHT, device)).status == 200


async def test_routes_that_check_a_password_with_a_bearer_token_back_off_too(make_client):
    """A stolen access token buys a couple of guesses, not one per rate-limit slot."""
    client = await _backoff_client(make_client, free=2)
    pair = await register(client)
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}

    async def change(current: str) -> aiohttp.ClientResponse:
        return await client.post("/api/v1/auth/password", headers=bearer, json={
            "current_password": current, "new_password": "battery staple"})

    assert [(await change(WRONG)).status for _ in range(2)] == [401, 401]
    await _assert_backing_off(await change(WRONG), at_most=1)
    await _assert_backing_off(await change(RIGHT), at_most=1)  # not even checked
    deletion = await client.delete("/api/v1/auth/account", headers=bearer,
                                   json={"password": RIGHT})
    await _assert_backing_off(deletion, at_most=1)  # one count for both routes
    # The guesser's count is not the login's: the owner still signs in.
    assert (await _login(client, pair["user"]["email"], RIGHT)).status == 200


async def test_each_wait_doubles_up_to_the_longest(client):
    """The schedule itself, on the real Redis: 1, 2, 4 s ... capped. "The wait is over"
    is made true by dropping the record's deadline rather than by sleeping."""
    redis = client.server.app[REDIS]
    failures = LoginFailures(redis, free=2, max_wait_seconds=5)
    who = subject("test", uuid.uuid4().hex)
    assert [await failures.begin(who) for _ in range(2)] == [0, 0]
    waits = []
    for _ in range(5):
        waits.append(await failures.begin(who))  # refused: how long is left
        await redis.hdel("login_failures:" + who, "until")  # the wait is over
        assert await failures.begin(who) == 0  # counted, and the next wait starts
    assert waits == [1, 2, 4, 5, 5]
    assert 0 < await redis.ttl("login_failures:" + who) <= 24 * 3600
    await failures.succeeded(who)
    assert [await failures.begin(who) for _ in range(2)] == [0, 0]
