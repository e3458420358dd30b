"""``/api/v1/food-logs``: the daily summary of the caller's food log (docs/api.md, "The
daily summary"; how it counts: docs/foods.md). The document is always the caller's own:
the service is asked with the caller's user id."""

from __future__ import annotations

import re

from aiohttp import web

from ..access import authenticated_user
from ..app_keys import DOCUMENTS, STORAGE
from ..contract import DEFAULT_DOCUMENT, DOC_NAME
from ..food_log_entries import parse_day
from ..food_summary import daily_summary
from .errors import ApiError, json_response

routes = web.RouteTableDef()

_NAME = re.compile(DOC_NAME)


@routes.get("/api/v1/food-logs/daily-summary")
async def get_daily_summary(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    day = parse_day(request.query.get("date", ""))
    if day is None:
        raise ApiError.validation("date", "required, a day as YYYY-MM-DD")
    name = request.query.get("doc", DEFAULT_DOCUMENT)
    if not _NAME.fullmatch(name):
        raise ApiError.validation("doc", "1..64 of A-Z a-z 0-9 . _ -")
    summary = await daily_summary(request.app[DOCUMENTS], request.app[STORAGE].foods,
                                  claims.user_id, name, day)
    return json_response(summary)
