"""``modi-sync user create``: the password comes from stdin or a prompt, never argv."""

from __future__ import annotations

import uuid

from .conftest import run_cli


async def test_user_create_admin_reads_the_password_from_stdin(services, client):
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    code, out, err = await run_cli(services, "user", "create", email, "--admin",
                                stdin=b"a strong admin password\n")
    assert code == 0, err
    assert email in out
    assert "a strong admin password" not in out + err
    resp = await client.post("/api/v1/auth/login", json={
        "email": email, "password": "a strong admin password"})
    assert resp.status == 200
    assert (await resp.json())["data"]["user"]["role"] == "admin"


async def test_user_create_refuses_a_duplicate_and_a_short_password(services):
    email = f"dup-{uuid.uuid4().hex[:8]}@example.com"
    assert (await run_cli(services, "user", "create", email, stdin=b"long enough pw\n"))[0] == 0
    code, _, err = await run_cli(services, "user", "create", email.upper(),
                                 stdin=b"long enough pw\n")
    assert code == 1 and "exists" in err
    code, _, err = await run_cli(services, "user", "create", "x@example.com", stdin=b"short\n")
    assert code == 2 and "password" in err


async def test_password_is_not_an_argument(services):
    code, _, err = await run_cli(services, "user", "create", "y@example.com", "hunter2hunter2")
    assert code == 2 and "unrecognized arguments" in err
