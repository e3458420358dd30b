"""Who may call what: every route of the server, as five callers (issue 19).

``TABLE`` holds, for every route the app registers (the websocket included), the
status and error code each caller gets: the owner of the data, another user, the
owner with an expired token, a user whose account was deleted, and nobody.
``test_every_route_is_in_the_table`` reads the routes from the app's router, so a
route added without a row fails the suite.

Besides the status, every call checks that nothing of the owner's leaks or changes:
no answer to another caller holds the owner's document name or content, and after
every call but the owner's own, the owner's account and stored rows are as they were.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
from pycrdt import Doc, Map, create_sync_message

from modi_sync.app import create_app
from modi_sync.app_keys import POOL
from modi_sync.config import Settings

from .conftest import JWT_SECRET, Client, register, ws_url
from .yclient import YClient

DOC = "owners-diary"  # the owner's document: neither its name nor its content may leak
SECRET = "secret plan 7f3a"
CALLERS = ("nobody", "expired", "deleted", "other", "owner")  # the owner last: it may end its data


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    pair: dict

    @property
    def user_id(self) -> uuid.UUID:
        return uuid.UUID(self.pair["user"]["id"])


@dataclass(frozen=True)
class Caller:
    name: str
    token: str | None
    account: Account  # whose password a body carries, where a route asks for one


@dataclass(frozen=True)
class World:
    client: Client
    owner: Account
    callers: dict[str, Caller]

    async def fresh_refresh_token(self) -> str:
        """A refresh token of a new session of the owner's: each is good once."""
        resp = await self.client.post("/api/v1/auth/login", json={
            "email": self.owner.email, "password": self.owner.password})
        assert resp.status == 200, await resp.text()
        return (await resp.json())["data"]["refresh_token"]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""


@dataclass(frozen=True)
class Expect:
    status: int
    code: str | None = None  # the error envelope's code
    reveals: bool = False  # the answer holds the owner's document content

    def mismatch(self, answer: Answer, method: str) -> str | None:
        if answer.status != self.status:
            return f"status {answer.status} ({_code(answer)}), expected {self.status}"
        if self.code is not None and method != "HEAD" and _code(answer) != self.code:
            return f"code {_code(answer)}, expected {self.code}"
        if self.reveals and method != "HEAD" and SECRET.encode() not in answer.body:
            return "the owner's content is not in the answer"
        return None


def _code(answer: Answer) -> str | None:
    try:
        return orjson.loads(answer.body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


OK, CREATED, NO_CONTENT, UPGRADED = Expect(200), Expect(201), Expect(204), Expect(101)
READ = Expect(200, reveals=True)
DENIED = Expect(401, "UNAUTHORIZED")
NOT_FOUND = Expect(404, "NOT_FOUND")
FORBIDDEN = Expect(403, "FORBIDDEN")
UNKNOWN_BARCODE = "4006381333931"  # valid; no test gives a food this barcode
NOT_A_WEBSOCKET = Expect(400, "VALIDATION_ERROR")  # no upgrade asked for


# -- the calls -------------------------------------------------------------------------

Call = Callable[[World, Caller, str], Awaitable[Answer]]


def _auth(caller: Caller) -> dict[str, str]:
    return {"Authorization": f"Bearer {caller.token}"} if caller.token else {}


async def _http(world: World, caller: Caller, method: str, path: str,
                headers: dict[str, str] | None = None, **kwargs: Any) -> Answer:
    resp = await world.client.request(method, path.format(name=DOC),
                                      headers={**_auth(caller), **(headers or {})}, **kwargs)
    return Answer(resp.status, await resp.read())


def plain(path: str) -> Call:
    async def call(world: World, caller: Caller, method: str) -> Answer:
        return await _http(world, caller, method, path)
    return call


async def register_new(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/auth/register", json={
        "email": f"new-{uuid.uuid4().hex[:10]}@example.com", "password": "a long password"})


async def login_owner(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/auth/login", json={
        "email": world.owner.email, "password": world.owner.password})


def with_refresh_token(path: str) -> Call:
    async def call(world: World, caller: Caller, method: str) -> Answer:
        token = await world.fresh_refresh_token()
        return await _http(world, caller, method, path, json={"refresh_token": token})
    return call


async def change_password(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/auth/password", json={
        "current_password": caller.account.password, "new_password": "a new long password"})


async def delete_account(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/auth/account",
                       json={"password": caller.account.password})


async def change_email(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/users/me", json={
        "email": f"changed-{uuid.uuid4().hex[:10]}@example.com",
        "current_password": caller.account.password})


async def accept_terms(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/users/me/consents",
                       json={"terms_version": "2"})


async def contribute_food(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/foods", json={
        "name": f"Food of {caller.name}", "calories": 165, "protein": 20, "carbs": 10,
        "fat": 5})


async def verify_food(world: World, caller: Caller, method: str) -> Answer:
    """Verify a food: for admins only, and no caller here is one."""
    food_id = await world.client.app[POOL].fetchval(
        "INSERT INTO foods (name, calories, protein, carbs, fat)"
        " VALUES ('unverified', 0, 0, 0, 0) RETURNING id")
    return await _http(world, caller, method, f"/api/v1/foods/{food_id}/verify")


async def upload_image(world: World, caller: Caller, method: str) -> Answer:
    body = aiohttp.FormData(default_to_multipart=True)
    body.add_field("image", io.BytesIO(_PNG), filename="label.png", content_type="image/png")
    answer = await _http(world, caller, method, "/api/v1/images", data=body)
    # Not left queued: the worker tests' workers would read it.
    await world.client.app[POOL].execute("DELETE FROM images WHERE user_id = $1",
                                         caller.account.user_id)
    return answer


async def owners_image(world: World, caller: Caller, method: str) -> Answer:
    """The owner's image, asked for by ``caller``: its id is the owner's alone."""
    image_id = await world.client.app[POOL].fetchval(
        "INSERT INTO images (user_id, doc_name, content_type, width, height, size)"
        " VALUES ($1, $2, 'image/png', 1, 1, 1) RETURNING id", world.owner.user_id, DOC)
    return await _http(world, caller, method, f"/api/v1/images/{image_id}")


_PNG = bytes.fromhex(  # a 1x1 white PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8ffff3f0005fe02fe0def46b80000000049454e44ae426082")


async def post_update(world: World, caller: Caller, method: str) -> Answer:
    return await _http(world, caller, method, "/api/v1/docs/{name}/update",
                       data=_workout_update(f"by {caller.name}"),
                       headers={"Content-Type": "application/octet-stream"})


async def sync(world: World, caller: Caller, method: str) -> Answer:
    """Open the websocket; once in, sync, write, and answer with what the doc shows."""
    client = world.client
    if caller.token is None:
        url = str(client.make_url(f"/sync/{DOC}"))
    else:
        url = ws_url(client, DOC, caller.token)
    peer = YClient(client.session, url)
    try:
        await peer.connect()
    except aiohttp.WSServerHandshakeError as refused:
        # The envelope of the refusal: the same request without the upgrade.
        envelope = await client.session.get(url)
        assert envelope.status == refused.status
        return Answer(refused.status, await envelope.read())
    try:
        await peer.wait_synced(timeout=5)
        peer.workouts()[f"by {caller.name}"] = Map({"name": "intruder"})
        # The server answers a step 1 only once everything before it is stored.
        peer.synced.clear()
        await peer.send_raw(create_sync_message(peer.doc))
        await peer.wait_synced(timeout=5)
        return Answer(101, orjson.dumps(peer.workouts().to_py()))
    except TimeoutError:
        return Answer(101, b"upgraded, but no step 2 within 5 s")
    finally:
        await peer.disconnect()


def _workout_update(name: str) -> bytes:
    doc = Doc()
    captured: list[bytes] = []
    sub = doc.observe(lambda e: captured.append(e.update))
    doc.get("workouts", type=Map)[uuid.uuid4().hex] = Map({"name": name, "sets": 3})
    doc.unobserve(sub)
    return captured[0]


# -- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    call: Call
    owner: Expect
    other: Expect
    expired: Expect
    deleted: Expect
    nobody: Expect

    def expect(self, caller: str) -> Expect:
        return getattr(self, caller)


def public(call: Call, expect: Expect) -> Row:
    """A route that does not look at the token: everyone gets the same answer."""
    return Row(call, expect, expect, expect, expect, expect)


def private(call: Call, owner: Expect, other: Expect) -> Row:
    """A route that needs a live token of an existing user."""
    return Row(call, owner, other, DENIED, DENIED, DENIED)


# (method, route as the router names it) -> who gets what. The document named is the
# owner's; another user asking for that name gets their own document of that name.
GETS: dict[str, Row] = {
    "/health": public(plain("/health"), OK),
    "/ready": public(plain("/ready"), OK),
    "/api/v1/openapi.json": public(plain("/api/v1/openapi.json"), OK),
    # No MODI_METRICS_TOKEN here: off the public port for everyone (tests/test_metrics.py).
    "/metrics": public(plain("/metrics"), NOT_FOUND),
    "/api/v1/docs": private(plain("/api/v1/docs"), OK, OK),
    "/api/v1/docs/{name}": private(plain("/api/v1/docs/{name}"), READ, NOT_FOUND),
    "/api/v1/docs/{name}/update": private(plain("/api/v1/docs/{name}/update"), READ, NOT_FOUND),
    "/api/v1/users/me": private(plain("/api/v1/users/me"), OK, OK),
    "/api/v1/users/me/consents": private(plain("/api/v1/users/me/consents"), OK, OK),
    "/api/v1/users/me/audit": private(plain("/api/v1/users/me/audit"), OK, OK),
    "/api/v1/foods/search": private(plain("/api/v1/foods/search?q=chicken"), OK, OK),
    "/api/v1/foods/popular": private(plain("/api/v1/foods/popular"), OK, OK),
    "/api/v1/foods/recent": private(plain("/api/v1/foods/recent"), OK, OK),
    "/api/v1/foods/barcode/{code}": private(plain(f"/api/v1/foods/barcode/{UNKNOWN_BARCODE}"),
                                            NOT_FOUND, NOT_FOUND),
    "/api/v1/foods/{id}": private(plain(f"/api/v1/foods/{uuid.uuid4()}"), NOT_FOUND, NOT_FOUND),
    "/api/v1/images/{id}": private(owners_image, OK, NOT_FOUND),
    # The owner's document has no food log: an empty summary, of the owner's alone.
    "/api/v1/food-logs/daily-summary": private(
        plain("/api/v1/food-logs/daily-summary?date=2026-01-01&doc={name}"), OK, NOT_FOUND),
    # The web client's static files (docs/webapp.md): the same for everyone.
    "/app": public(plain("/app"), OK),  # a redirect to /app/, followed
    "/app/": public(plain("/app/"), OK),
    "/app/{file}": public(plain("/app/sw.js"), OK),
}
TABLE: dict[tuple[str, str], Row] = {
    **{("GET", path): row for path, row in GETS.items()},
    **{("HEAD", path): row for path, row in GETS.items()},  # aiohttp adds HEAD to each GET
    ("POST", "/api/v1/auth/register"): public(register_new, CREATED),
    ("POST", "/api/v1/auth/login"): public(login_owner, OK),
    ("POST", "/api/v1/auth/refresh"): public(with_refresh_token("/api/v1/auth/refresh"), OK),
    ("POST", "/api/v1/auth/logout"): public(with_refresh_token("/api/v1/auth/logout"),
                                           NO_CONTENT),
    ("POST", "/api/v1/auth/password"): private(change_password, OK, OK),
    ("DELETE", "/api/v1/auth/account"): private(delete_account, NO_CONTENT, NO_CONTENT),
    ("POST", "/api/v1/docs/{name}/update"): private(post_update, OK, OK),
    ("GET", "/api/v1/users/me/export"): private(plain("/api/v1/users/me/export"), READ, OK),
    ("PATCH", "/api/v1/users/me"): private(change_email, OK, OK),
    ("PUT", "/api/v1/users/me/consents"): private(accept_terms, OK, OK),
    ("DELETE", "/api/v1/docs/{name}"): private(plain("/api/v1/docs/{name}"), NO_CONTENT,
                                              NOT_FOUND),
    ("POST", "/api/v1/foods"): private(contribute_food, CREATED, CREATED),
    ("POST", "/api/v1/foods/{id}/verify"): private(verify_food, FORBIDDEN, FORBIDDEN),
    ("POST", "/api/v1/images"): private(upload_image, Expect(202), Expect(202)),
    ("GET", "/sync/{name}"): private(sync, Expect(101, reveals=True), UPGRADED),
    ("HEAD", "/sync/{name}"): private(plain("/sync/{name}"), NOT_A_WEBSOCKET, NOT_A_WEBSOCKET),
}


def test_every_route_is_in_the_table():
    app = create_app(Settings())
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()}
    assert routes - TABLE.keys() == set(), "routes without a row in TABLE"
    assert TABLE.keys() - routes == set(), "rows of routes the app no longer has"


# -- the test --------------------------------------------------------------------------


async def _account(client: Client, password: str) -> Account:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    return Account(email, password, await register(client, email, password))


def _expired(token: str) -> str:
    """``token`` with its times moved an hour back, signed again as the server signs."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 3600, exp=now - 1800)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers=header)


async def _world(client: Client) -> World:
    owner = await _account(client, "the owner's password")
    other = await _account(client, "another user's password")
    deleted = await _account(client, "a deleted user's password")
    gone = await client.delete("/api/v1/auth/account", json={"password": deleted.password},
                               headers={"Authorization": f"Bearer {deleted.pair['access_token']}"})
    assert gone.status == 204, await gone.text()
    written = await client.post(
        f"/api/v1/docs/{DOC}/update", data=_workout_update(SECRET),
        headers={"Authorization": f"Bearer {owner.pair['access_token']}",
                 "Content-Type": "application/octet-stream"})
    assert written.status == 200, await written.text()
    callers = {
        "owner": Caller("owner", owner.pair["access_token"], owner),
        "other": Caller("other", other.pair["access_token"], other),
        "expired": Caller("expired", _expired(owner.pair["access_token"]), owner),
        "deleted": Caller("deleted", deleted.pair["access_token"], deleted),
        "nobody": Caller("nobody", None, owner),  # knows the password, has no token
    }
    return World(client, owner, callers)


async def _owner_state(db: asyncpg.Connection, owner: Account) -> tuple:
    """The owner's account and every stored row of its documents."""
    user = await db.fetchrow("SELECT email, password_hash FROM users WHERE id = $1",
                             owner.user_id)
    rows = await db.fetch(
        "SELECT d.name, u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 ORDER BY u.seq", owner.user_id)
    return tuple(user or ()), [tuple(r) for r in rows]


@pytest.mark.parametrize("route", list(TABLE), ids=[f"{m} {p}" for m, p in TABLE])
async def test_who_may_call_what(client, db, route):
    method, _ = route
    row = TABLE[route]
    world = await _world(client)
    before = await _owner_state(db, world.owner)
    assert before[1], "the owner's document is stored"
    wrong: list[str] = []
    for name in CALLERS:
        answer = await row.call(world, world.callers[name], method)
        problem = row.expect(name).mismatch(answer, method)
        if problem:
            wrong.append(f"{name}: {problem}")
        if name == "owner":
            continue
        if SECRET.encode() in answer.body or DOC.encode() in answer.body:
            wrong.append(f"{name}: the answer shows the owner's document")
        if await _owner_state(db, world.owner) != before:
            wrong.append(f"{name}: the owner's account or document changed")
            before = await _owner_state(db, world.owner)
    assert not wrong, "\n".join(wrong)
