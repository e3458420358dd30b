"""Awareness (presence, cursors) across instances: two devices of one user on two
instances see each other, and see each other leave, whether by a clean close or by
their instance going silent; never stored, and rate-limited per connection on the bus.
"""

from __future__ import annotations

import asyncio
import uuid

from pycrdt import Awareness, Doc

from storage.doc_events import AWARENESS, CHANNEL, DocChannel, decode

from .conftest import register, synced
from .yclient import YClient, eventually, stays_false


def _state(conn: YClient, other: YClient) -> dict | None:
    return conn.awareness.states.get(other.awareness.client_id)


async def test_devices_on_two_instances_see_each_other_and_each_other_leave(make_client, db):
    first, second = await make_client(), await make_client()
    user = await register(first)
    phone = await synced(first, user["access_token"])
    laptop = await synced(second, user["access_token"])

    await phone.send_awareness({"device": "phone", "cursor": 3})
    await eventually(lambda: _state(laptop, phone) == {"device": "phone", "cursor": 3})
    await laptop.send_awareness({"device": "laptop"})
    await eventually(lambda: _state(phone, laptop) == {"device": "laptop"})

    # A device that connects later learns of the other instance's clients at once,
    # without waiting for their next renewal.
    tablet = await synced(second, user["access_token"])
    await eventually(lambda: _state(tablet, phone) == {"device": "phone", "cursor": 3})

    await phone.disconnect()  # a clean close: its state is removed everywhere
    await eventually(lambda: _state(laptop, phone) is None and _state(tablet, phone) is None)
    for conn in (laptop, tablet):
        await conn.disconnect()
    # Ephemeral: nothing of it was stored.
    stored = await db.fetchval(
        "SELECT count(*) FROM doc_updates u JOIN documents d ON d.id = u.doc_id "
        "WHERE d.user_id = $1", uuid.UUID(user["user"]["id"]))
    assert stored == 0


async def test_a_silent_instances_clients_expire_within_the_awareness_timeout(
        make_client, redis):
    """An instance killed with SIGKILL says nothing more: its clients' states, heard on
    the bus once and never renewed, are removed after the timeout."""
    client = await make_client(awareness_timeout_seconds=1.0)
    user = await register(client)
    laptop = await synced(client, user["access_token"])
    ghost = Awareness(Doc())
    ghost.set_local_state({"device": "phone on a dead instance"})
    update = ghost.encode_awareness_update([ghost.client_id])
    dead = DocChannel(redis, uuid.uuid4())  # another instance, as the bus sees it
    try:
        await dead.publish([(AWARENESS, (uuid.UUID(user["user"]["id"]), "default"), update, 0)])
    finally:
        await dead.close()
    await eventually(lambda: ghost.client_id in laptop.awareness.states)
    seen = asyncio.get_running_loop().time()
    await eventually(lambda: ghost.client_id not in laptop.awareness.states, timeout=5)
    assert asyncio.get_running_loop().time() - seen < 3  # 1 s, and a sweep each second
    await laptop.disconnect()


async def test_a_live_client_of_another_instance_is_kept_while_it_renews(make_client):
    first = await make_client()
    second = await make_client(awareness_timeout_seconds=1.0)
    user = await register(first)
    phone = await synced(first, user["access_token"])
    laptop = await synced(second, user["access_token"])
    for i in range(6):  # renewed every 0.4 s for 2.4 s: longer than the timeout
        await phone.send_awareness({"device": "phone", "tick": i})
        await eventually(lambda i=i: (_state(laptop, phone) or {}).get("tick") == i)
        await asyncio.sleep(0.4)  # the renewal period is the point of the test
    await phone.disconnect()
    await laptop.disconnect()


async def test_a_burst_of_cursor_moves_crosses_the_bus_rate_limited_ending_on_the_last(
        make_client, redis):
    first, second = await make_client(), await make_client()
    user = await register(first)
    key = (uuid.UUID(user["user"]["id"]), "default")
    phone = await synced(first, user["access_token"])
    laptop = await synced(second, user["access_token"])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    crossed = 0

    async def count() -> None:
        nonlocal crossed
        async for message in pubsub.listen():
            crossed += sum(e.kind == AWARENESS and e.key == key for e in decode(message["data"]))

    counting = asyncio.create_task(count())
    try:
        for i in range(100):
            await phone.send_awareness({"cursor": i})
        await eventually(lambda: _state(laptop, phone) == {"cursor": 99}, timeout=5)
        assert crossed <= 15  # a burst of 10, then the latest state once due
    finally:
        counting.cancel()
        await pubsub.aclose()
    await phone.disconnect()
    await laptop.disconnect()


async def test_a_frozen_tabs_state_expires_on_its_own_instance_and_the_others(make_client):
    """A client still connected that stopped renewing its state (a frozen tab): gone
    after the timeout for the peers of its instance and of the other, and not handed
    to a device that connects later."""
    first = await make_client(awareness_timeout_seconds=1.0)
    second = await make_client(awareness_timeout_seconds=30.0)  # learns it from the first
    user = await register(first)
    frozen = await synced(first, user["access_token"])
    near = await synced(first, user["access_token"])
    far = await synced(second, user["access_token"])
    await frozen.send_awareness({"device": "frozen tab"})
    await eventually(lambda: _state(near, frozen) is not None and _state(far, frozen) is not None)
    await eventually(lambda: _state(near, frozen) is None and _state(far, frozen) is None,
                     timeout=5)
    later = await synced(first, user["access_token"])
    assert await stays_false(lambda: _state(later, frozen) is not None, seconds=1.0)
    for conn in (frozen, near, far, later):
        await conn.disconnect()

