"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of every REST route.

Written by hand next to the routes it describes; tests/test_openapi.py runs
schemathesis against a live server so that the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..contract import DOC_NAME, DOCUMENT_ROOTS
from .errors import CODES

routes = web.RouteTableDef()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": CODES.get(s, "error"), **_json(_ref("Error"))}
        for s in (*statuses, 429, 500)
    }


_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}}
    for name in ("X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset")
}


def _op(summary: str, ok: str, ok_body: dict[str, Any] | None, *errors: int,
        body: str | None = None, auth: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    op["responses"][ok] = {"description": "success", "headers": _RATE_HEADERS}
    if ok_body is not None:
        op["responses"][ok].update(_json(ok_body))
    op["responses"].update(_errors(*(400, 415, 413, *errors) if body else errors))
    if body:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
    if auth:
        op["security"] = [{"bearer": []}]
        op["responses"].update(_errors(401))
    return op


_PASSWORD = {"type": "string", "minLength": 8, "maxLength": 256}
_DOC_NAME = {"name": "name", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": f"^{DOC_NAME}$"}}
_ENTRIES = {"type": "object", "additionalProperties": {"type": "object"}}
_EMAIL = {"type": "string", "format": "email", "maxLength": 320}
_PAGE_PARAMETERS = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
]
_PAGINATION = {
    "type": "object",
    "required": ["page", "limit", "total", "total_pages"],
    "properties": {k: {"type": "integer"} for k in ("page", "limit", "total", "total_pages")},
}
_FOOD_ID = {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "format": "uuid"}}
_PER_100G = {"type": "number", "minimum": 0}
_FOOD: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "brand", "barcode", "calories", "protein", "carbs", "fat",
                 "verified", "created_at"],
    "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                   "brand": {"type": ["string", "null"]},
                   "barcode": {"type": ["string", "null"], "pattern": "^([0-9]{8}|[0-9]{13})$"},
                   **{k: _PER_100G for k in ("calories", "protein", "carbs", "fat")},
                   "verified": {"type": "boolean"},
                   "created_at": {"type": "string", "format": "date-time"}},
}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_READING = {
    "type": ["object", "null"],
    "description": "the label's values: per serving when it states one, else per 100 g",
    "properties": {
        **{k: _NULLABLE_NUMBER for k in ("calories", "protein", "carbs", "fat",
                                         "serving_size_g", "confidence")},
        "per_100g": {"type": ["object", "null"],
                     "properties": {k: _NULLABLE_NUMBER
                                    for k in ("calories", "protein", "carbs", "fat")}},
        "raw_text": {"type": "string"},
    },
}
_IMAGE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status", "doc", "content_type", "width", "height", "size",
                 "attempts", "created_at", "finished_at", "result", "error"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "status": {"enum": ["queued", "processing", "done", "failed"]},
        "doc": {"type": "string"},
        "content_type": {"enum": ["image/jpeg", "image/png"]},
        **{k: {"type": "integer"} for k in ("width", "height", "size", "attempts")},
        "created_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "result": _READING,
        "error": {"type": ["string", "null"]},
    },
}
_IMAGE_UPLOAD = {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary",
                             "description": "JPEG or PNG, at most 10 MB"},
                   "doc": {"type": "string", "pattern": f"^{DOC_NAME}$"}},
}}}}
_NUTRIENT_TOTALS = {
    "type": "object", "required": ["calories", "protein", "carbs", "fat", "entries"],
    "properties": {**{k: {"type": "number"} for k in ("calories", "protein", "carbs", "fat")},
                   "entries": {"type": "integer"}},
}
_VERSION = {"oneOf": [{"type": "string", "pattern": "^[A-Za-z0-9._-]{1,32}$"},
                      {"type": "integer", "minimum": 1, "maximum": 1_000_000_000}]}
_CONSENT = {
    "type": "object", "required": ["document", "version", "action", "at"],
    "properties": {"document": {"enum": ["privacy_policy", "terms"]},
                   "version": {"type": ["string", "null"]},
                   "action": {"enum": ["accepted", "withdrawn"]},
                   "at": {"type": "string", "format": "date-time"}},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "modi-sync", "version": __version__,
             "description": "Accounts and documents of the Magni app. Sync itself is the "
                            "y-websocket protocol on GET /sync/{name}?token=..."},
    "paths": {
        "/health": {"get": _op("process is up", "200", _data({"type": "object"}))},
        "/ready": {"get": _op("PostgreSQL and Redis answer", "200", _data({"type": "object"}),
                              503)},
        "/api/v1/openapi.json": {"get": _op("this document", "200", {"type": "object"})},
        "/metrics": {"get": {
            **_op("Prometheus metrics; here only with MODI_METRICS_TOKEN (else 404), which "
                  "the caller sends as a Bearer token; by default they are served on "
                  "MODI_METRICS_LISTEN instead", "200", None, 401, 404),
            "security": [{"bearer": []}],
        }},
        "/api/v1/auth/register": {"post": _op(
            "create an account", "201", _ref("TokenPair"), 409, body="Register")},
        "/api/v1/auth/login": {"post": _op(
            "log in", "200", _ref("TokenPair"), 401, body="Login")},
        "/api/v1/auth/refresh": {"post": _op(
            "rotate a refresh token", "200", _ref("TokenPair"), 401, body="RefreshToken")},
        "/api/v1/auth/logout": {"post": _op(
            "end a session", "204", None, 401, body="RefreshToken")},
        "/api/v1/auth/password": {"post": _op(
            "change the password; every other session ends", "200", _ref("TokenPair"),
            body="PasswordChange", auth=True)},
        "/api/v1/auth/account": {"delete": _op(
            "erase the account and all its data", "204", None, body="Password", auth=True)},
        "/api/v1/docs": {"get": {
            **_op("the caller's documents", "200", _ref("DocumentList"), 400, auth=True),
            "parameters": _PAGE_PARAMETERS,
        }},
        "/api/v1/docs/{name}": {
            "parameters": [_DOC_NAME],
            "get": _op("the document schema's roots as JSON", "200", _data(_ref("Document")),
                       404, auth=True),
            "delete": _op("erase the document and its whole history", "204", None, 404,
                          auth=True),
        },
        "/api/v1/docs/{name}/update": {
            "parameters": [_DOC_NAME],
            "get": {
                **_op("the Yjs v1 update the caller lacks", "200", None, 400, 404, auth=True),
                "parameters": [{"name": "state_vector", "in": "query",
                                "schema": {"type": "string"}}],
            },
            "post": {
                **_op("apply, store and fan out a Yjs v1 update", "200", _data({
                    "type": "object", "required": ["state_vector"],
                    "properties": {"state_vector": {"type": "string"}}}),
                    400, 403, 413, 415, auth=True),
                "requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
            },
        },
        "/api/v1/foods/search": {"get": {
            **_op("foods matching q: full words, prefixes as typed, small typos; verified "
                  "first", "200", _ref("FoodList"), 400, auth=True),
            "parameters": [{"name": "q", "in": "query", "required": True,
                            "schema": {"type": "string", "maxLength": 100}},
                           *_PAGE_PARAMETERS],
        }},
        "/api/v1/foods/popular": {"get": {
            **_op("the verified foods logged most in the last 30 days", "200",
                  _data({"type": "array", "items": _ref("PopularFood")}), 400, auth=True),
            "parameters": [_PAGE_PARAMETERS[1]],
        }},
        "/api/v1/foods/recent": {"get": {
            **_op("the newest verified foods", "200", _ref("FoodList"), 400, auth=True),
            "parameters": _PAGE_PARAMETERS,
        }},
        "/api/v1/foods/barcode/{code}": {"get": {
            **_op("the food with this EAN-13, EAN-8 or UPC-A", "200", _data(_ref("Food")),
                  400, 404, auth=True),
            "parameters": [{"name": "code", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
        }},
        "/api/v1/foods": {"post": _op(
            "contribute a food; unverified until an admin verifies it", "201",
            _data(_ref("Food")), 403, 409, body="NewFood", auth=True)},
        "/api/v1/foods/{id}": {"get": {
            **_op("one food", "200", _data(_ref("Food")), 400, 404, auth=True),
            "parameters": [_FOOD_ID],
        }},
        "/api/v1/foods/{id}/verify": {"post": {
            **_op("verify a food (admins only)", "200", _data(_ref("Food")), 400, 403, 404,
                  auth=True),
            "parameters": [_FOOD_ID],
        }},
        "/api/v1/images": {"post": {
            **_op("upload a nutrition label's photo; its reading goes to the document's "
                  "ocr_drafts", "202", _data(_ref("Image")), 400, 403, 413, 415, auth=True),
            "requestBody": {"required": True, **_IMAGE_UPLOAD},
        }},
        "/api/v1/images/{id}": {"get": {
            **_op("an image's job: its status, and its reading once done", "200",
                  _data(_ref("Image")), 400, 404, auth=True),
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}}],
        }},
        "/api/v1/food-logs/daily-summary": {"get": {
            **_op("calories and macros of one day's food_logs in the caller's document", "200",
                  _data(_ref("DailySummary")), 400, 404, auth=True),
            "parameters": [
                {"name": "date", "in": "query", "required": True,
                 "schema": {"type": "string", "format": "date"}},
                {"name": "doc", "in": "query",
                 "schema": {"type": "string", "pattern": f"^{DOC_NAME}$"}},
            ],
        }},
        "/api/v1/users/me": {
            "get": _op("the caller's profile", "200", _data(_ref("Profile")), auth=True),
            "patch": _op("change the email (needs the current password)", "200",
                         _data(_ref("Profile")), 409, body="ProfileChange", auth=True),
        },
        "/api/v1/users/me/consents": {
            "get": {
                **_op("the consents given and withdrawn", "200", _data(_ref("Consents")), 400,
                      auth=True),
                "parameters": _PAGE_PARAMETERS,
            },
            "put": _op("accept a version (or withdraw: null) of the privacy policy or terms",
                       "200", _data(_ref("Consents")), body="ConsentChange", auth=True),
        },
        "/api/v1/users/me/audit": {"get": {
            **_op("the caller's audit log, newest first", "200", _ref("AuditList"), 400,
                  auth=True),
            "parameters": _PAGE_PARAMETERS,
        }},
        "/api/v1/users/me/export": {"get": _op(
            "everything held about the caller, as one JSON document, streamed", "200",
            _data({"type": "object"}), auth=True)},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message", "details"],
                    "properties": {
                        "code": {"enum": sorted(set(CODES.values()))},
                        "message": {"type": "string"},
                        "details": {},
                    },
                }},
            },
            "User": {
                "type": "object", "required": ["id", "email", "role", "created_at"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string"},
                    "role": {"enum": ["user", "admin"]},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "TokenPair": _data({
                "type": "object",
                "required": ["user", "access_token", "refresh_token", "token_type", "expires_in",
                             "device_token"],
                "properties": {
                    "user": _ref("User"),
                    "access_token": {"type": "string"},
                    "refresh_token": {"type": "string"},
                    "token_type": {"const": "Bearer"},
                    "expires_in": {"type": "integer"},
                    "device_token": {
                        "type": "string",
                        "description": "keep it and send it with the next login from this "
                                       "device: guesses at the account by others do not "
                                       "hold that login back"},
                },
            }),
            "Document": {
                "type": "object",
                "required": list(DOCUMENT_ROOTS),
                # Every root is a map of entries, but favorites: food id -> true.
                "properties": {root: {"type": "object"} if root == "favorites" else _ENTRIES
                               for root in DOCUMENT_ROOTS},
            },
            "Food": _FOOD,
            "Image": _IMAGE,
            "PopularFood": {**_FOOD, "required": [*_FOOD["required"], "logs"],
                            "properties": {**_FOOD["properties"],
                                           "logs": {"type": "integer", "minimum": 1}}},
            "FoodList": {
                "type": "object", "required": ["data", "pagination"],
                "properties": {"data": {"type": "array", "items": _ref("Food")},
                               "pagination": _PAGINATION},
            },
            "NewFood": {
                "type": "object", "required": ["name", "calories", "protein", "carbs", "fat"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "brand": {"type": ["string", "null"], "maxLength": 200},
                    "barcode": {"type": ["string", "null"],
                                "description": "EAN-13, EAN-8 or UPC-A, with its check digit"},
                    "calories": {"type": "number", "minimum": 0, "maximum": 900},
                    **{k: {"type": "number", "minimum": 0, "maximum": 100}
                       for k in ("protein", "carbs", "fat")},
                },
            },
            "DailySummary": {
                "type": "object",
                "required": ["date", "doc", "total", "meals", "unknown_food_ids",
                             "unknown_food_ids_total", "skipped"],
                "properties": {
                    "date": {"type": "string", "format": "date"},
                    "doc": {"type": "string"},
                    "total": _NUTRIENT_TOTALS,
                    "meals": {"type": "object", "additionalProperties": _NUTRIENT_TOTALS},
                    "unknown_food_ids": {"type": "array", "items": {"type": "string"}},
                    "unknown_food_ids_total": {"type": "integer"},
                    "skipped": {"type": "integer"},
                },
            },
            "DocumentList": {
                "type": "object", "required": ["data", "pagination"],
                "properties": {
                    "data": {"type": "array", "items": {
                        "type": "object",
                        "required": ["name", "size_bytes", "updates", "updated_at"],
                        "properties": {"name": {"type": "string"},
                                       "size_bytes": {"type": "integer"},
                                       "updates": {"type": "integer"},
                                       "updated_at": {"type": "string", "format": "date-time"}},
                    }},
                    "pagination": _PAGINATION,
                },
            },
            "Profile": {
                "type": "object", "required": ["id", "email", "role", "created_at", "updated_at"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string"},
                    "role": {"enum": ["user", "admin"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "ProfileChange": {"type": "object", "required": ["email", "current_password"],
                              "properties": {"email": _EMAIL, "current_password": _PASSWORD},
                              "additionalProperties": False},
            "Consents": {
                "type": "object",
                "required": ["privacy_policy", "terms", "processing_restricted", "history",
                             "history_total"],
                "properties": {
                    "privacy_policy": {"oneOf": [_CONSENT, {"type": "null"}]},
                    "terms": {"oneOf": [_CONSENT, {"type": "null"}]},
                    "processing_restricted": {"type": "boolean"},
                    "history": {"type": "array", "items": _CONSENT},
                    "history_total": {"type": "integer"},
                },
            },
            "ConsentChange": {
                "type": "object", "minProperties": 1, "additionalProperties": False,
                "properties": {"privacy_policy_version": {"oneOf": [_VERSION, {"type": "null"}]},
                               "terms_version": {"oneOf": [_VERSION, {"type": "null"}]}},
            },
            "AuditList": {
                "type": "object", "required": ["data", "pagination"],
                "properties": {
                    "data": {"type": "array", "items": {
                        "type": "object",
                        "required": ["id", "at", "action", "resource_type", "resource_id",
                                     "request_id", "ip", "details"],
                        "properties": {"id": {"type": "integer"},
                                       "at": {"type": "string", "format": "date-time"},
                                       "action": {"type": "string"},
                                       "resource_type": {"type": "string"},
                                       "resource_id": {"type": ["string", "null"]},
                                       "request_id": {"type": "string"},
                                       "ip": {"type": ["string", "null"]},
                                       "details": {}},
                    }},
                    "pagination": _PAGINATION,
                },
            },
            "Register": {
                "type": "object", "required": ["email", "password"],
                "properties": {"email": _EMAIL, "password": _PASSWORD,
                               "privacy_policy_version": _VERSION,
                               "terms_version": _VERSION},
            },
            "Login": {"type": "object", "required": ["email", "password"],
                      "properties": {"email": _EMAIL, "password": _PASSWORD,
                                     "device_token": {"type": "string", "maxLength": 512}}},
            "RefreshToken": {"type": "object", "required": ["refresh_token"],
                             "properties": {"refresh_token": {"type": "string", "maxLength": 512}}},
            "Password": {"type": "object", "required": ["password"],
                         "properties": {"password": _PASSWORD}},
            "PasswordChange": {"type": "object", "required": ["current_password", "new_password"],
                               "properties": {"current_password": _PASSWORD,
                                              "new_password": _PASSWORD}},
        },
    },
}

_BODY = orjson.dumps(SPEC)


@routes.get("/api/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")
