"""``/api/v1/foods``: the shared food database (docs/api.md, "Foods"; docs/foods.md).

Every route is for signed-in users; verifying a food is for admins. The service answers
lists as JSON bytes, cached as sent.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from ..access import authenticated_user
from ..app_keys import FOODS
from ..errors import Forbidden
from .errors import ApiError, json_response
from .validation import int_param, json_body, page_params

routes = web.RouteTableDef()

_FOODS = "/api/v1/foods"
# A UUID in the path, so that /popular, /recent and /search are never taken for an id.
_FOOD = _FOODS + "/{id:[0-9a-fA-F-]{32,36}}"


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


@routes.get(_FOODS + "/search")
async def search(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    page = page_params(request)
    return _json(await request.app[FOODS].search(request.query.get("q", ""),
                                                 claims.user_id, page))


@routes.get(_FOODS + "/popular")
async def popular(request: web.Request) -> web.Response:
    await authenticated_user(request)
    return _json(await request.app[FOODS].popular(int_param(request, "limit", 20, 1, 100)))


@routes.get(_FOODS + "/recent")
async def recent(request: web.Request) -> web.Response:
    await authenticated_user(request)
    return _json(await request.app[FOODS].recent(page_params(request)))


@routes.get(_FOODS + "/barcode/{code}")
async def by_barcode(request: web.Request) -> web.Response:
    await authenticated_user(request)
    return json_response(await request.app[FOODS].by_barcode(request.match_info["code"]))


@routes.post(_FOODS)
async def contribute(request: web.Request) -> web.Response:
    claims = await authenticated_user(request, writes=True)
    food = await request.app[FOODS].contribute(claims.user_id, await json_body(request))
    return json_response(food, status=201)


@routes.post(_FOOD + "/verify")
async def verify(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    if claims.role != "admin":
        raise Forbidden("only an admin verifies foods")
    return json_response(await request.app[FOODS].verify(_food_id(request)))


@routes.get(_FOOD)
async def get_food(request: web.Request) -> web.Response:
    await authenticated_user(request)
    return json_response(await request.app[FOODS].get(_food_id(request)))


def _food_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise ApiError.validation("id", "not a food id") from None
