"""Reading and checking request bodies; every failure names its field."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..accounts import PASSWORD_LENGTHS, checked_email
from .errors import ApiError


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
    if "\x00" in value:  # PostgreSQL text cannot hold it (a 500 if it got that far)
        raise ApiError.validation(field, "must not contain NUL")
    return value


def optional_string_field(body: dict[str, Any], field: str, *, max_len: int = 256) -> str | None:
    if body.get(field) is None:
        return None
    return string_field(body, field, max_len=max_len)


def email_field(body: dict[str, Any]) -> str:
    return checked_email(string_field(body, "email", max_len=320))


def password_field(body: dict[str, Any], field: str = "password") -> str:
    low, high = PASSWORD_LENGTHS
    return string_field(body, field, min_len=low, max_len=high)
