"""The websocket endpoint over real sockets: convergence, durability, limits."""

from __future__ import annotations

import pycrdt
from pycrdt import Map

from .conftest import register, ws_url
from .yclient import YClient, eventually


async def test_two_devices_converge(client):
    user = await register(client)
    url = ws_url(client, "default", user["access_token"])
    a = await YClient(client.session, url).connect()
    b = await YClient(client.session, url).connect()
    await a.wait_synced()
    await b.wait_synced()

    a.workouts()["w1"] = Map({"name": "squat", "sets": 5, "reps": 5, "weight": 100.0})
    b.weights()["x1"] = Map({"weight": 80.5, "date_time": "2026-11-23T08:00:00Z"})

    await eventually(lambda: "x1" in a.weights() and "w1" in b.workouts())
    assert a.workouts().to_py() == b.workouts().to_py()
    assert a.weights().to_py() == b.weights().to_py()
    await a.disconnect()
    await b.disconnect()
