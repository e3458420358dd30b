"""Reading and checking request bodies; every failure names its field."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from ..accounts import PASSWORD_LENGTHS, checked_email
from ..pagination import Page, paginated_json
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


_CONSENT_VERSION = re.compile(r"[A-Za-z0-9._-]{1,32}")


def consent_version(field: str, value: Any) -> str:
    """A policy version as stored: a string like ``2026-05`` or ``3``; a positive
    integer is taken as its decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 10**9:
            raise ApiError.validation(field, "must be 1..1000000000")
        return str(value)
    if not isinstance(value, str) or not _CONSENT_VERSION.fullmatch(value):
        raise ApiError.validation(field, "must be a positive integer or 1..32 of "
                                         "A-Z a-z 0-9 . _ -")
    return value


def consent_version_field(body: dict[str, Any], document: str) -> str | None:
    """``<document>_version`` of the body; None when absent or null."""
    field = f"{document}_version"
    value = body.get(field)
    return None if value is None else consent_version(field, value)


def email_field(body: dict[str, Any]) -> str:
    return checked_email(string_field(body, "email", max_len=320))


def password_field(body: dict[str, Any], field: str = "password") -> str:
    low, high = PASSWORD_LENGTHS
    return string_field(body, field, min_len=low, max_len=high)


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError.validation(name, "must be an integer") from None
    if not low <= value <= high:
        raise ApiError.validation(name, f"must be {low}..{high}")
    return value


def page_params(request: web.Request) -> Page:
    """``page`` (from 1) and ``limit`` (1..100, default 20), per the REST conventions."""
    return Page(int_param(request, "page", 1, 1, 1_000_000),
                int_param(request, "limit", 20, 1, 100))


def paginated_response(items: list[Any], page: Page, total: int) -> web.Response:
    return web.Response(body=paginated_json(items, page, total),
                        content_type="application/json")
