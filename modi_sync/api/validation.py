"""Reading and checking request bodies; every failure names its field."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "expected application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError.validation("body", "not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError.validation("body", "must be a JSON object")
    return body


def string_field(body: dict[str, Any], field: str, *, min_len: int = 1, max_len: int = 256) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise ApiError.validation(field, "required string")
    if not min_len <= len(value) <= max_len:
        raise ApiError.validation(field, f"length must be {min_len}..{max_len}")
    return value


def email_field(body: dict[str, Any]) -> str:
    email = string_field(body, "email", max_len=320).strip()
    if not _EMAIL.fullmatch(email):
        raise ApiError.validation("email", "not an email address")
    return email


def password_field(body: dict[str, Any], field: str = "password") -> str:
    return string_field(body, field, min_len=8, max_len=256)
