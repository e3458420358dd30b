"""Property: whatever three devices do, online or off, they converge, and so does storage,
whether they share one server instance or are spread over two.

Hypothesis draws interleavings of map sets and deletes on the Magni roots (the document schema),
nested edits, disconnects, reconnects and pauses of the event loop (which let messages
in flight arrive at different moments). After each run every device reconnects; then
the three documents must be equal, and so must the document rebuilt from the stored
``doc_updates`` rows, down to the state vector: every update a device holds was stored.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Decoder, Doc, Map

from .conftest import Client, MakeClient, register, ws_url
from .yclient import YClient, eventually

ROOTS = ("workouts", "weights", "food_logs", "favorites")
KEYS = ("id-1", "id-2", "id-3")
DEVICES = 3


def _value(root: str) -> st.SearchStrategy[bool | dict[str, Any]]:
    if root == "favorites":
        return st.just(True)
    if root == "workouts":
        return st.builds(lambda n, s: {"name": n, "sets": s},
                         st.sampled_from(["squat", "bench", "row"]), st.integers(1, 10))
    if root == "weights":
        return st.builds(lambda w: {"weight": w, "date_time": "2026-01-01T08:00:00Z"},
                         st.floats(40, 150, allow_nan=False).map(lambda f: round(f, 1)))
    return st.builds(lambda q, m: {"food_id": "f-1", "quantity_g": q, "meal_type": m,
                                   "date": "2026-11-23"},
                     st.integers(1, 500), st.sampled_from(["breakfast", "lunch"]))


_device = st.integers(0, DEVICES - 1)
_root = st.sampled_from(ROOTS)
_key = st.sampled_from(KEYS)

_set = _root.flatmap(lambda r: st.tuples(st.just("set"), _device, st.just(r), _key, _value(r)))
_delete = st.tuples(st.just("delete"), _device, _root, _key)
_nested = st.tuples(st.just("nested"), _device, _key, st.integers(1, 20))
_disconnect = st.tuples(st.just("disconnect"), _device)
_reconnect = st.tuples(st.just("reconnect"), _device)
_pause = st.tuples(st.just("pause"), st.integers(0, 5))

STEPS = st.lists(
    st.one_of(_set, _set, _delete, _nested, _disconnect, _reconnect, _pause),
    min_size=1, max_size=25,
)


def roots(doc: Doc) -> dict:
    return {name: doc.get(name, type=Map).to_py() for name in ROOTS}


def state_vector(doc: Doc) -> dict[int, int]:
    decoder = Decoder(doc.get_state())
    count = decoder.read_var_uint()
    return dict((decoder.read_var_uint(), decoder.read_var_uint()) for _ in range(count))


def _apply(device: YClient, step: tuple) -> None:
    kind = step[0]
    doc = device.doc
    if kind == "set":
        _, _, root, key, value = step
        target = doc.get(root, type=Map)
        target[key] = value if root == "favorites" else Map(value)
    elif kind == "delete":
        _, _, root, key = step
        target = doc.get(root, type=Map)
        if key in target:
            del target[key]
    elif kind == "nested":
        _, _, key, sets = step
        workouts = doc.get("workouts", type=Map)
        if key in workouts:
            workouts[key]["sets"] = sets


async def _stored(db: asyncpg.Connection, user_id: str, name: str) -> Doc:
    rows = await db.fetch(
        "SELECT u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = $2 ORDER BY u.seq", UUID(user_id), name)
    doc = Doc()
    for row in rows:
        doc.apply_update(row["data"])
    return doc


@pytest.fixture
async def account(client: Client) -> dict[str, Any]:
    return await register(client)


@pytest.fixture(params=[1, 2], ids=["one instance", "two instances"])
async def servers(request: pytest.FixtureRequest, client: Client,
                  make_client: MakeClient) -> list[Client]:
    """The device i talks to servers[i % len(servers)]: with two, through the Redis bus."""
    return [client] + [await make_client() for _ in range(request.param - 1)]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=STEPS)
async def test_three_devices_and_storage_always_converge(servers, db, account, steps):
    name = f"prop-{uuid.uuid4().hex[:12]}"
    devices = []
    for i in range(DEVICES):
        server = servers[i % len(servers)]
        devices.append(YClient(server.session, ws_url(server, name, account["access_token"])))
    online = [True] * DEVICES
    try:
        for device in devices:
            await device.connect()
        for device in devices:
            await device.wait_synced()

        for step in steps:
            kind = step[0]
            if kind == "pause":
                for _ in range(step[1]):
                    await asyncio.sleep(0)
            elif kind == "disconnect":
                if online[step[1]]:
                    await devices[step[1]].disconnect()
                    online[step[1]] = False
            elif kind == "reconnect":
                if not online[step[1]]:
                    await devices[step[1]].connect()
                    online[step[1]] = True
            else:
                _apply(devices[step[1]], step)

        for i, device in enumerate(devices):
            if not online[i]:
                await device.connect()
                online[i] = True
        for device in devices:
            await device.wait_synced()

        def converged() -> bool:
            first = devices[0]
            return all(roots(d.doc) == roots(first.doc)
                       and state_vector(d.doc) == state_vector(first.doc) for d in devices)

        await eventually(converged, timeout=15)
        # Everything the devices hold went through the server, which stores before it
        # sends: the stored rows already hold all of it.
        stored = await _stored(db, account["user"]["id"], name)
        assert roots(stored) == roots(devices[0].doc)
        assert state_vector(stored) == state_vector(devices[0].doc)
    finally:
        for device in devices:
            await device.disconnect()
