"""Two server instances on one PostgreSQL and Redis: each one's clients see the other's edits.

The Redis bus carries a group commit's updates as one message; an instance applies
the other's and skips its own, and reads its rooms from storage again when it may have
missed some.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from pycrdt import Doc, Map
from redis.asyncio import Redis

from modi_sync.app_keys import PUBLISHER
from modi_sync.sync.bus import Gaps, UpdatePublisher
from storage.doc_events import (
    ACK,
    DELETED,
    HELLO,
    UPDATE,
    DocChannel,
    DocEvent,
    DocMessage,
    decode,
    doc_events,
    encode,
    subscribe_doc_events,
)
from storage.update_log import UpdateLog

from .conftest import Client, register, synced
from .yclient import eventually


async def test_edits_on_one_instance_reach_clients_of_the_other(make_client):
    first, second = await make_client(), await make_client()
    user = await register(first)
    a = await synced(first, user["access_token"])
    b = await synced(second, user["access_token"])

    for i in range(50):  # enough for several group commits, some with many updates
        a.workouts()[f"a{i}"] = Map({"name": "squat", "sets": i})
        b.weights()[f"b{i}"] = Map({"weight": 80.0 + i})
    await eventually(lambda: len(a.weights()) == 50 and len(b.workouts()) == 50)
    assert a.workouts().to_py() == b.workouts().to_py()
    assert a.weights().to_py() == b.weights().to_py()

    # A fresh client of either instance gets the same state: nothing was applied twice
    # or lost on the way.
    fresh = await synced(second, user["access_token"])
    assert fresh.workouts().to_py() == a.workouts().to_py()
    assert fresh.weights().to_py() == a.weights().to_py()
    for conn in (a, b, fresh):
        await conn.disconnect()


async def test_a_delete_on_one_instance_closes_sockets_on_the_other(make_client):
    first, second = await make_client(), await make_client()
    user = await register(first)
    there = await synced(second, user["access_token"], "gone")
    there.workouts()["w1"] = Map({"name": "squat"})  # stored: the document exists
    auth = {"Authorization": f"Bearer {user['access_token']}"}
    await eventually(lambda: _exists(first, auth, "gone"))
    resp = await first.delete("/api/v1/docs/gone", headers=auth)
    assert resp.status == 204
    assert await there.wait_closed(timeout=2) == 4404


async def test_a_document_first_written_on_another_instance_reaches_a_room_loaded_empty(
        make_client):
    """The second instance loaded the room before the document had a row, so it knows
    it by (user, name), not by an id."""
    first, second = await make_client(), await make_client()
    user = await register(first)
    reader = await synced(second, user["access_token"], "new")
    writer = await synced(first, user["access_token"], "new")
    writer.workouts()["w1"] = Map({"name": "deadlift"})
    await eventually(lambda: "w1" in reader.workouts())
    # It exists for the second instance's HTTP routes too, though it has no row id there.
    auth = {"Authorization": f"Bearer {user['access_token']}"}
    assert await _exists(second, auth, "new")
    # And the reader's own first write finds the row the writer's instance made.
    reader.weights()["x"] = Map({"weight": 80.5})
    await eventually(lambda: "x" in writer.weights())
    fresh = await synced(first, user["access_token"], "new")
    assert set(fresh.workouts()) == {"w1"} and set(fresh.weights()) == {"x"}
    for conn in (reader, writer, fresh):
        await conn.disconnect()


async def test_a_document_made_on_another_instance_is_not_taken_for_a_new_one(make_client):
    """The first instance read the user's document names before the second made this
    document; it learns of it from the bus, so opening it there is a load, not an
    empty room."""
    first, second = await make_client(), await make_client()
    user = await register(first)
    token = user["access_token"]
    here = await synced(first, token)  # the user's names are read with this load
    made = await synced(second, token, "made-there")
    made.workouts()["w1"] = Map({"name": "deadlift"})
    auth = {"Authorization": f"Bearer {token}"}
    await eventually(lambda: _exists(second, auth, "made-there"))  # stored, so published
    mark = await synced(second, token)
    mark.weights()["after"] = Map({"weight": 80.5})
    # One sender's messages arrive in order: the first instance has heard of both.
    await eventually(lambda: "after" in here.weights())
    fresh = await synced(first, token, "made-there")
    assert fresh.workouts().to_py() == {"w1": {"name": "deadlift"}}
    for conn in (here, made, mark, fresh):
        await conn.disconnect()


async def _exists(client: Client, auth: dict[str, str], name: str) -> bool:
    return (await client.get(f"/api/v1/docs/{name}", headers=auth)).status == 200


def test_one_message_carries_many_updates_and_splits_when_large():
    doc, updates = Doc(), []
    workouts = doc.get("workouts", type=Map)
    doc.observe(lambda event: updates.append(event.update))
    for i in range(20):
        workouts[str(i)] = "x" * 100
    instance, user = uuid.uuid4(), uuid.uuid4()
    records = [(UPDATE, (user, "default"), u, seq) for seq, u in enumerate(updates, 40)]
    (message,) = encode(instance, records, 7)
    assert message[:24] == instance.bytes + (7).to_bytes(8, "big")  # sender, number
    # Each update keeps its seq in its document, for a receiver's catch-up.
    assert [(e.kind, e.key, e.update, e.seq) for e in decode(message)] == records

    big = bytes(600 * 1024)
    keys = [(user, "a"), (uuid.uuid4(), "b." * 32), (user, "c")]
    messages = encode(instance, [(UPDATE, keys[0], big, 1), (UPDATE, keys[1], big, 1),
                                 (DELETED, keys[2], b"", 0)], 7)
    assert [m[16:24] for m in messages] == [(7).to_bytes(8, "big"), (8).to_bytes(8, "big")]
    assert [e.key for m in messages for e in decode(m)] == keys
    assert decode(messages[0][:-10]) == decode(messages[0])[:1]  # a cut record is dropped


async def test_a_password_change_on_one_instance_refuses_old_tokens_on_the_other(make_client):
    first, second = await make_client(), await make_client()
    user = await register(first)
    token = user["access_token"]  # issued in the same second as the change, as like as not
    old = {"Authorization": f"Bearer {token}"}
    assert (await second.get("/api/v1/docs", headers=old)).status == 200  # now remembered
    there = await synced(second, token)

    resp = await first.post("/api/v1/auth/password", headers=old, json={
        "current_password": "correct horse", "new_password": "battery staple"})
    assert resp.status == 200
    assert await there.wait_closed(timeout=2) == 4401  # the second instance heard of it
    assert (await second.get("/api/v1/docs", headers=old)).status == 401


async def test_an_instance_alone_publishes_nothing_and_starts_on_a_hello(make_client, redis, db):
    first = await make_client(bus_recheck_seconds=0.2)
    user = await register(first)
    a = await synced(first, user["access_token"])
    publisher = first.app[PUBLISHER]
    assert not publisher.others

    before = await _publishes(redis)
    for i in range(20):
        a.workouts()[f"alone{i}"] = Map({"sets": i})
    await eventually(lambda: _is_stored(db, user, {f"alone{i}" for i in range(20)}))
    assert await _publishes(redis) == before  # stored, and sent to nobody

    second = await make_client(bus_recheck_seconds=0.2)
    assert publisher.others  # it heard the second instance's hello before that one served
    b = await synced(second, user["access_token"])
    a.workouts()["together"] = Map({"sets": 1})
    await eventually(lambda: "together" in b.workouts())
    await b.disconnect()

    await second.close()  # the second instance leaves; the next recheck notices
    await eventually(lambda: not publisher.others, timeout=5)
    before = await _publishes(redis)
    a.workouts()["alone again"] = Map({"sets": 2})
    await eventually(lambda: _is_stored(db, user, {"together", "alone again"}))
    assert await _publishes(redis) == before
    await a.disconnect()


async def _publishes(redis: Redis) -> int:
    """PUBLISH commands Redis has run: its own count, whoever sent them."""
    return (await redis.info("commandstats")).get("cmdstat_publish", {}).get("calls", 0)


async def _is_stored(db: asyncpg.Connection, user: dict[str, Any], keys: set[str]) -> bool:
    doc = Doc()
    for row in await db.fetch(
            "SELECT u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
            " WHERE d.user_id = $1 ORDER BY u.seq", uuid.UUID(user["user"]["id"])):
        doc.apply_update(row[0])
    return keys <= set(doc.get("workouts", type=Map).keys())


async def test_an_instance_that_lost_its_subscription_reads_its_rooms_again(
        make_client, redis, pool, db):
    """An update stored but never heard (as if published while the subscription was
    down) reaches the room's clients once the subscription is back."""
    client = await make_client()
    user = await register(client)
    there = await synced(client, user["access_token"])
    there.workouts()["first"] = Map({"sets": 1})
    await eventually(lambda: _is_stored(db, user, {"first"}))

    await _store_unheard(pool, db, user, "missed")
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await eventually(lambda: "missed" in there.workouts())
    assert there.workouts()["missed"].to_py() == {"sets": 1.0}
    await there.disconnect()


async def test_a_gap_in_another_instance_numbers_makes_an_instance_read_its_rooms_again(
        make_client, redis, pool, db):
    client = await make_client()
    user = await register(client)
    there = await synced(client, user["access_token"])
    there.workouts()["first"] = Map({"sets": 1})
    await eventually(lambda: _is_stored(db, user, {"first"}))
    key = (uuid.UUID(user["user"]["id"]), "default")
    other = DocChannel(redis, uuid.uuid4())  # another instance, as the bus sees it
    try:
        await other.publish([(UPDATE, key, _update("heard 1"), 0)])
        await _store_unheard(pool, db, user, "missed")
        await other.publish([(UPDATE, key, _update("heard 2"), 0)])
        await eventually(lambda: "heard 2" in there.workouts())
        assert "missed" not in there.workouts()  # numbers 1, 2: nothing missed, not read

        other.skip()  # as if message 3 failed to go out
        await other.publish([(UPDATE, key, _update("heard 4"), 0)])
        await eventually(lambda: "missed" in there.workouts())
        assert {"first", "heard 1", "heard 2", "heard 4"} <= set(there.workouts())
    finally:
        await other.close()
    await there.disconnect()


async def test_an_update_whose_publish_failed_reaches_the_other_instance_unprompted(
        make_client, redis, db):
    """The failed message is the sender's last: no later one shows its gap, so the
    sender says hello at its next recheck and the other instance reads storage."""
    first = await make_client(bus_recheck_seconds=0.2)
    second = await make_client(bus_recheck_seconds=0.2)
    user = await register(first)
    a = await synced(first, user["access_token"])
    b = await synced(second, user["access_token"])
    a.workouts()["before"] = Map({"sets": 1})
    await eventually(lambda: "before" in b.workouts())

    # Drop both publishers' Redis connections (the last command each ran was a PUBLISH
    # or its recheck's PUBSUB): the next PUBLISH on each fails, as on a broken connection.
    for client in await redis.client_list():
        if client["cmd"] in ("publish", "pubsub"):
            await redis.client_kill_filter(_id=client["id"])
    a.workouts()["unsent"] = Map({"sets": 2})
    await eventually(lambda: _is_stored(db, user, {"before", "unsent"}))
    await eventually(lambda: "unsent" in b.workouts(), timeout=5)
    assert b.workouts().to_py() == a.workouts().to_py()
    for conn in (a, b):
        await conn.disconnect()


def test_gaps_are_numbers_skipped_or_a_first_message_that_is_not_a_sender_first():
    me, other, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    gaps = Gaps(me)

    def heard(sender: uuid.UUID, number: int, kind: bytes = UPDATE,
              to: uuid.UUID | None = None) -> bool:
        event = DocEvent(kind, (to or uuid.uuid4(), ""), b"")
        return gaps.missed(DocMessage(sender, number, [event]))

    assert not heard(other, 1, HELLO)  # an instance's first message: nothing before it
    assert not heard(other, 2)
    assert heard(other, 4)  # 3 never came
    assert not heard(other, 5)
    assert not heard(uuid.UUID(int=0), 0)  # a command's message has no number
    assert not heard(late, 9, ACK, to=me)  # its answer to this instance's hello
    assert heard(uuid.uuid4(), 9, HELLO)  # served a while, never heard from: missed some
    gaps.forget()  # subscription renewed (and everything read again)
    assert not heard(other, 11)
    assert heard(other, 13)


async def test_batches_not_published_while_alone_leave_a_gap(redis):
    """An instance that believed itself alone skips one number for what it did not
    send, so a listener it did not know of sees that it missed something."""
    listener = await subscribe_doc_events(redis)
    heard = doc_events(listener, ignore=uuid.uuid4())
    instance = uuid.uuid4()
    publisher = UpdatePublisher(DocChannel(redis, instance), instance)
    try:
        await publisher.start()  # its hello reaches only this test's subscription
        hello = await asyncio.wait_for(anext(heard), 5)
        assert (hello.number, hello.events[0].kind) == (1, HELLO)
        key = (uuid.uuid4(), "default")
        publisher.publish([(key, _update("a"), 0)])
        publisher.publish([(key, _update("b"), 0)])  # one gap for the whole stretch
        publisher.others = True
        publisher.publish([(key, _update("c"), 0)])
        message = await asyncio.wait_for(anext(heard), 5)
        assert message.number == 3 and len(message.events) == 1
        gaps = Gaps(uuid.uuid4())
        assert not gaps.missed(hello) and gaps.missed(message)
    finally:
        await publisher.stop()
        await listener.aclose()


async def test_listeners_a_recheck_finds_are_shown_the_gap_without_waiting_for_an_update(
        redis):
    """An instance that believed itself alone skipped what it did not send; another's
    hello was lost. Its recheck finds the listener, and it says hello at once: the
    hello's number shows the gap even if no update ever follows."""
    own = await subscribe_doc_events(redis)  # the instance's own subscription
    instance = uuid.uuid4()
    publisher = UpdatePublisher(DocChannel(redis, instance), instance, recheck=0.2,
                                hello_timeout=0.1)
    listener = None
    try:
        await publisher.start()
        publisher.others = False  # alone, as far as it knows
        publisher.publish([((uuid.uuid4(), "default"), _update("unsent"), 0)])
        listener = await subscribe_doc_events(redis)  # its hello went to nobody
        heard = doc_events(listener, ignore=uuid.uuid4())
        message = await asyncio.wait_for(anext(heard), 5)
        assert message.sender == instance and message.events[0].kind == HELLO
        assert Gaps(uuid.uuid4()).missed(message)  # so the listener reads from storage
    finally:
        await publisher.stop()
        await own.aclose()
        if listener is not None:
            await listener.aclose()


async def test_updates_unpublished_after_a_hello_show_as_a_gap_once_someone_answers(redis):
    """Redis came back: an instance alone so far says hello (its subscription is back)
    and stores more before anyone answers. Those updates skip a number after the hello,
    and the answer makes it say hello again: the gap reaches the listener at once."""
    own = await subscribe_doc_events(redis)
    instance, other = uuid.uuid4(), uuid.uuid4()
    publisher = UpdatePublisher(DocChannel(redis, instance), instance, hello_timeout=0.1)
    listener = await subscribe_doc_events(redis)
    heard = doc_events(listener, ignore=other)
    gaps = Gaps(other)
    try:
        await publisher.start()
        assert not gaps.missed(await asyncio.wait_for(anext(heard), 5))  # its first hello
        publisher.others = False
        key = (uuid.uuid4(), "default")
        publisher.publish([(key, _update("while alone"), 0)])
        publisher.subscribed_again()
        again = await asyncio.wait_for(anext(heard), 5)
        assert again.events[0].kind == HELLO and gaps.missed(again)
        publisher.publish([(key, _update("after the hello"), 0)])  # still alone: unsent
        publisher.heard(DocMessage(other, 1, [DocEvent(ACK, (instance, ""), b"")]))
        answer = await asyncio.wait_for(anext(heard), 5)
        assert answer.events[0].kind == HELLO and gaps.missed(answer)
    finally:
        await publisher.stop()
        await own.aclose()
        await listener.aclose()


def _update(key: str) -> bytes:
    """An update of another client: ``key`` set in the workouts map."""
    doc = Doc()
    doc.get("workouts", type=Map)[key] = Map({"sets": 1})
    return doc.get_update()


async def _store_unheard(pool: asyncpg.Pool, db: asyncpg.Connection, user: dict[str, Any],
                         key: str) -> None:
    """Store an update of the user's default document without telling any instance."""
    doc_id = await db.fetchval("SELECT id FROM documents WHERE user_id = $1 AND name = $2",
                               uuid.UUID(user["user"]["id"]), "default")
    await UpdateLog(pool).append_many([doc_id], [_update(key)])
