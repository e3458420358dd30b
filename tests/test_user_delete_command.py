"""``modi-sync user delete EMAIL|ID``: the account and its documents are gone; a second
run finds no such account (exit 3); without ``--yes`` the email must be typed."""

from __future__ import annotations

import uuid

import asyncpg
from pycrdt import Map

from .conftest import register, run_cli, synced
from .yclient import eventually


async def _held(db: asyncpg.Connection, user_id: uuid.UUID) -> tuple[int, int]:
    users = await db.fetchval("SELECT count(*) FROM users WHERE id = $1", user_id)
    documents = await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1", user_id)
    return users, documents


async def test_user_delete_erases_the_account_and_a_second_run_finds_none(client, db, services):
    email = f"erase-me-{uuid.uuid4().hex[:8]}@example.com"
    pair = await register(client, email)
    user_id = uuid.UUID(pair["user"]["id"])
    conn = await synced(client, pair["access_token"], "diary")
    conn.doc.get("weights", type=Map)["w1"] = Map({"weight": 80.5})

    async def document_stored() -> bool:
        return await _held(db, user_id) == (1, 1)

    await eventually(document_stored)

    code, out, err = await run_cli(services, "user", "delete", email.upper(), "--yes")
    assert code == 0, err
    assert f"erased account {user_id}" in out and "audit entries stripped" in out
    assert email not in out  # the output may end up in a log; the email must not
    assert await _held(db, user_id) == (0, 0)
    assert await conn.wait_closed() == 4401  # its socket closed, as for the REST route

    code, out, err = await run_cli(services, "user", "delete", str(user_id), "--yes")
    assert code == 3 and f"no account {user_id}" in err and out == ""


async def test_user_delete_wants_the_email_typed_without_yes(client, db, services):
    email = f"confirm-{uuid.uuid4().hex[:8]}@example.com"
    user_id = uuid.UUID((await register(client, email))["user"]["id"])

    code, _, err = await run_cli(services, "user", "delete", str(user_id), stdin=b"wrong@x.y\n")
    assert code == 1 and "nothing erased" in err
    assert (await _held(db, user_id))[0] == 1

    code, out, err = await run_cli(services, "user", "delete", str(user_id),
                                stdin=email.encode() + b"\n")
    assert code == 0, err
    assert (await _held(db, user_id))[0] == 0
