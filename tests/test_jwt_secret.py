"""The JWT secret: refused when weak or exposed, at start; rotated without logging anyone out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from modi_sync.tokens import SecretError, key_id, load_or_create_secret

from .conftest import free_port, register

OLD = "old-secret-" + "o" * 40
NEW = "new-secret-" + "n" * 40


# -- at start -----------------------------------------------------------------------------


def test_a_generated_secret_is_long_and_private(tmp_path: Path):
    secret = load_or_create_secret(None, tmp_path / "data")
    path = tmp_path / "data" / "jwt_secret"
    assert len(secret.encode()) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(None, tmp_path / "data") == secret  # kept, not remade


@pytest.mark.parametrize(("content", "mode", "says"), [
    ("s" * 64, 0o644, "mode 0644"),
    ("s" * 64, 0o640, "mode 0640"),
    ("s" * 64, 0o606, "mode 0606"),
    ("", 0o600, "empty"),
    ("\n", 0o600, "empty"),
    ("short", 0o600, "shorter than 32 bytes"),
])
def test_a_kept_secret_that_is_exposed_or_unusable_is_refused(
        tmp_path: Path, content: str, mode: int, says: str):
    path = tmp_path / "jwt_secret"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(SecretError) as refused:
        load_or_create_secret(None, tmp_path)
    assert says in str(refused.value) and str(path) in str(refused.value)


def _serve(data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("JWT_SECRET", "MODI_JWT_PREVIOUS_SECRETS")}
    return subprocess.run(
        [sys.executable, "-m", "modi_sync.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(data_dir)],
        env={**environ, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("env", "says"), [
    ({"JWT_SECRET": "six666"}, "JWT_SECRET is shorter than 32 bytes"),
    ({"JWT_SECRET": "x" * 31}, "JWT_SECRET is shorter than 32 bytes"),
    ({"JWT_SECRET": NEW, "MODI_JWT_PREVIOUS_SECRETS": f"{OLD},tiny"},
     "MODI_JWT_PREVIOUS_SECRETS: secret 2 is shorter than 32 bytes"),
])
def test_serve_refuses_a_short_secret_with_exit_2(tmp_path: Path, env: dict, says: str):
    done = _serve(tmp_path, **env)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(("content", "mode", "says"), [
    ("s" * 64, 0o644, "has mode 0644"),
    ("", 0o600, "is empty"),
])
def test_serve_refuses_an_exposed_or_empty_secret_file_with_exit_2(
        tmp_path: Path, content: str, mode: int, says: str):
    path = tmp_path / "jwt_secret"
    path.write_text(content)
    path.chmod(mode)
    done = _serve(tmp_path)
    assert done.returncode == 2
    assert f"{path} {says}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "pg").exists()  # refused before any service started


# -- rotation -----------------------------------------------------------------------------


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_of_a_previous_secret_verify_and_new_ones_use_the_current(make_client):
    before = await make_client(jwt_secret=OLD)
    pair = await register(before)
    old_token = pair["access_token"]
    assert jwt.get_unverified_header(old_token)["kid"] == key_id(OLD)

    rotated = await make_client(jwt_secret=NEW, jwt_previous_secrets=(OLD,))
    assert (await rotated.get("/api/v1/docs", headers=_bearer(old_token))).status == 200
    refreshed = await rotated.post("/api/v1/auth/refresh",
                                   json={"refresh_token": pair["refresh_token"]})
    new_token = (await refreshed.json())["data"]["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == key_id(NEW)
    jwt.decode(new_token, NEW, algorithms=["HS256"])  # signed with the current secret only
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(new_token, OLD, algorithms=["HS256"])

    # Another algorithm stays refused, whichever key the kid names.
    claims = jwt.decode(old_token, OLD, algorithms=["HS256"])
    other_alg = jwt.encode(claims, OLD, algorithm="HS384", headers={"kid": key_id(OLD)})
    assert (await rotated.get("/api/v1/docs", headers=_bearer(other_alg))).status == 401

    # Once the previous secret is dropped, its tokens are refused; the new ones are not.
    after = await make_client(jwt_secret=NEW)
    assert (await after.get("/api/v1/docs", headers=_bearer(old_token))).status == 401
    assert (await after.get("/api/v1/docs", headers=_bearer(new_token))).status == 200


async def test_device_tokens_survive_a_rotation(make_client):
    before = await make_client(jwt_secret=OLD)
    pair = await register(before)
    rotated = await make_client(jwt_secret=NEW, jwt_previous_secrets=(OLD,),
                                login_free_failures=1)
    login = {"email": pair["user"]["email"]}
    wrong = await rotated.post("/api/v1/auth/login", json={**login, "password": "wrong pass"})
    assert wrong.status == 401  # the account now backs off
    blocked = await rotated.post("/api/v1/auth/login", json={**login, "password": "correct horse"})
    assert blocked.status == 429
    resp = await rotated.post("/api/v1/auth/login", json={
        **login, "password": "correct horse", "device_token": pair["device_token"]})
    assert resp.status == 200
