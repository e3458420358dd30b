"""The OpenAPI description holds for a live server: schemathesis against every route."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from modi_sync.app import create_app
from modi_sync.config import Settings

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls


@pytest.fixture(scope="module")
def live_server(services: ServiceUrls,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
               JWT_SECRET=JWT_SECRET, MODI_RATE_LIMIT_AUTH="100000/60",
               MODI_RATE_LIMIT_USER="100000/60")
    proc = ServerProcess(tmp_path_factory.mktemp("openapi"), env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api_schema(live_server: ServerProcess) -> OpenApiSchema:
    return schemathesis.openapi.from_url(live_server.http_url + "/api/v1/openapi.json")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_every_route_answers_within_its_description(api_schema: OpenApiSchema,
                                                    live_server: ServerProcess) -> None:
    # schemathesis' pytest plugin does not load under pytest 9, so its strategies are
    # driven with hypothesis directly: same cases, same checks.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 13
    # A real user's token, so that authenticated routes are exercised past the 401.
    auth = {"Authorization": f"Bearer {live_server.register()['access_token']}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=live_server.http_url, headers=auth, checks=CHECKS)

        check()


def test_the_description_names_every_rest_route(api_schema: OpenApiSchema,
                                                live_server: ServerProcess) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(live_server.http_url + "/api/v1/openapi.json") as resp:
        spec = json.loads(resp.read())
    assert spec["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
                  if m != "parameters"}
    served = {(r.method, r.resource.canonical) for r in create_app(Settings()).router.routes()
              if r.method != "HEAD" and not r.resource.canonical.startswith(("/sync/", "/app"))}
    assert served - documented == set(), "routes the description leaves out"
    assert documented - served == set(), "described routes the app does not serve"


def test_the_device_token_is_described():
    from modi_sync.api.openapi import SPEC

    schemas = SPEC["components"]["schemas"]
    pair = schemas["TokenPair"]["properties"]["data"]
    assert "device_token" in pair["required"]
    assert pair["properties"]["device_token"]["type"] == "string"
    login = schemas["Login"]
    assert login["properties"]["device_token"] == {"type": "string", "maxLength": 512}
    assert "device_token" not in login["required"]  # optional: additive to the contract
