"""Room: one document in memory, on a real GroupCommitWriter and the real UpdateLog."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from uuid import UUID

import asyncpg
import pytest
from pycrdt import (
    Awareness,
    Doc,
    Map,
    Text,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
)

from modi_sync.sync.connection import Connection
from modi_sync.sync.protocol import parse_message
from modi_sync.sync.room import (
    EMPTY_STATE,
    DocumentTooLarge,
    DocumentUnavailable,
    InvalidUpdate,
    Room,
    RoomLimits,
)
from modi_sync.sync.writer import GroupCommitWriter, WriteFailed
from storage.rate_limits import Limit
from storage.update_log import UpdateLog
from storage.users import UserStore


class RecordingTransport:
    """The bytes the connection writes, as a socket's peer would read them."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def messages(self) -> list[bytes]:
        """Unframe what was written: unmasked binary frames, as RFC 6455 lays them out."""
        out, data, i = [], bytes(self.written), 0
        while i < len(data):
            assert data[i] == 0x82, "a final, binary frame"
            size, i = data[i + 1], i + 2
            if size == 126:
                size, i = int.from_bytes(data[i:i + 2], "big"), i + 2
            elif size == 127:
                size, i = int.from_bytes(data[i:i + 8], "big"), i + 8
            out.append(data[i:i + size])
            i += size
        return out


class RecordingConnection(Connection):
    """A real Connection on a recording transport; ``close`` is only noted."""

    def __init__(self, user_id: UUID) -> None:
        self.transport = RecordingTransport()
        super().__init__(
            SimpleNamespace(transport=self.transport),  # type: ignore[arg-type]
            SimpleNamespace(closed=False),  # type: ignore[arg-type]
            user_id, max_queue_bytes=1 << 20, message_limit=Limit(1000, 1),
        )
        self.closed_with: int | None = None

    @property
    def sent(self) -> list[bytes]:
        self.flush()  # what the peer will have read once this turn of the loop ends
        return self.transport.messages()

    def clear(self) -> None:
        self.transport.written.clear()

    def close(self, code: int, reason: str = "") -> None:
        self.closed_with = code


@pytest.fixture
async def writer(pool: asyncpg.Pool) -> AsyncIterator[GroupCommitWriter]:
    writer = GroupCommitWriter(UpdateLog(pool))
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()


@pytest.fixture
async def user_id(pool: asyncpg.Pool) -> UUID:
    user = await UserStore(pool).create(f"room-{uuid.uuid4().hex[:10]}@example.com", "x")
    return user.id


class RoomFactory:
    def __init__(self, pool: asyncpg.Pool, writer: GroupCommitWriter, user_id: UUID) -> None:
        self.update_log = UpdateLog(pool)
        self.pool = pool
        self.writer = writer
        self.user_id = user_id
        self.broken: list[Room] = []

    async def open(self, name: str | None = None, *, max_bytes: int = 1 << 20) -> Room:
        name = name or f"doc-{uuid.uuid4().hex[:8]}"
        stored = await self.update_log.load(self.user_id, name)
        return Room((self.user_id, name), stored.doc_id, stored.updates, self.writer,
                    limits=RoomLimits(max_bytes=max_bytes), on_broken=self.broken.append)

    async def loaded(self, updates: list[bytes]) -> Room:
        """A room of a real (empty) document, loaded as if ``updates`` were its stored rows."""
        stored = await self.update_log.load(self.user_id, f"doc-{uuid.uuid4().hex[:8]}")
        return Room((self.user_id, "loaded"), stored.doc_id, updates, self.writer,
                    limits=RoomLimits(max_bytes=1 << 20), on_broken=self.broken.append)

    async def rows(self, room: Room) -> list[bytes]:
        records = await self.pool.fetch(
            "SELECT data FROM doc_updates WHERE doc_id = $1 ORDER BY seq", room.doc_id
        )
        return [r["data"] for r in records]


@pytest.fixture
async def rooms(pool: asyncpg.Pool, writer: GroupCommitWriter, user_id: UUID) -> RoomFactory:
    return RoomFactory(pool, writer, user_id)


def _edit(doc: Doc, key: str, **fields: object) -> bytes:
    """Make an edit on a client doc; return the update it produced."""
    before = doc.get_state()
    doc.get("workouts", type=Map)[key] = Map(fields)
    return doc.get_update(before)


async def _next_turn() -> None:
    """Return after everything already scheduled on the event loop has run."""
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn


def _snapshot(room: Room) -> tuple[bytes, dict]:
    return room.doc.get_state(), room.doc.get("workouts", type=Map).to_py()


async def _room_with_one_edit(
    rooms: RoomFactory, **open_args: int
) -> tuple[Room, RecordingConnection, Doc]:
    """A room with one stored edit, a peer that has read nothing yet, and the editing doc."""
    room = await rooms.open(**open_args)
    peer = RecordingConnection(rooms.user_id)
    room.add(peer)
    client = Doc()
    await rooms.writer.wait_committed(room.apply_update(_edit(client, "w1", sets=1), None))
    peer.clear()
    return room, peer, client


async def test_valid_update_is_applied_stored_then_sent_to_the_others(rooms):
    room = await rooms.open()
    sender, peer = RecordingConnection(rooms.user_id), RecordingConnection(rooms.user_id)
    room.add(sender)
    room.add(peer)
    update = _edit(Doc(), "w1", name="squat", sets=5)

    ticket = room.apply_update(update, sender)

    assert ticket is not None and ticket == room.last_ticket
    assert room.doc.get("workouts", type=Map).to_py() == {"w1": {"name": "squat", "sets": 5.0}}
    await rooms.writer.wait_committed(ticket)
    stored = await rooms.rows(room)
    assert len(stored) == 1
    # What is stored is what the peer got, and the sender got nothing back.
    assert peer.sent == [create_update_message(stored[0])]
    assert sender.sent == []
    fresh = Doc()
    fresh.apply_update(stored[0])
    assert fresh.get("workouts", type=Map).to_py() == {"w1": {"name": "squat", "sets": 5.0}}


async def test_one_batch_reaches_each_peer_as_one_merged_update(rooms):
    room = await rooms.open()
    one, two, peer = (RecordingConnection(rooms.user_id) for _ in range(3))
    for conn in (one, two, peer):
        room.add(conn)
    doc_one, doc_two = Doc(), Doc()
    # Applied in one loop turn: the writer stores them as one batch.
    for i in range(3):
        room.apply_update(_edit(doc_one, f"a{i}", sets=i), one)
        ticket = room.apply_update(_edit(doc_two, f"b{i}", sets=i), two)
    await rooms.writer.wait_committed(ticket)

    (row,) = await rooms.rows(room)  # one row for the six updates, and one message
    (message,) = peer.sent
    assert parse_message(message).payload == row
    assert (room.stored_updates, room.stored_bytes) == (1, len(row))
    got = Doc()
    got.apply_update(parse_message(message).payload)
    assert room.doc.get_update(got.get_state()) == b"\x00\x00"  # nothing missing
    assert got.get("workouts", type=Map).to_py() == room.doc.get("workouts", type=Map).to_py()
    # Updates from two senders: each gets the merge, its own part included.
    assert one.sent == two.sent == [message]


async def test_a_batch_from_one_sender_is_not_echoed_to_it(rooms):
    room = await rooms.open()
    sender, peer = RecordingConnection(rooms.user_id), RecordingConnection(rooms.user_id)
    room.add(sender)
    room.add(peer)
    doc = Doc()
    for i in range(3):
        ticket = room.apply_update(_edit(doc, f"w{i}", sets=i), sender)
    await rooms.writer.wait_committed(ticket)
    assert len(peer.sent) == 1 and sender.sent == []


async def test_room_loads_its_state_from_the_stored_updates(rooms):
    name = f"doc-{uuid.uuid4().hex[:8]}"
    first = await rooms.open(name)
    client = Doc()
    for i in range(3):
        ticket = first.apply_update(_edit(client, f"w{i}", sets=i), None)
    await rooms.writer.wait_committed(ticket)

    again = await rooms.open(name)
    assert again.doc_id == first.doc_id
    assert _snapshot(again) == _snapshot(first)
    assert again.stored_bytes == sum(len(r) for r in await rooms.rows(again))


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xff\xff\xff", b"garbage bytes here", b"\x01\x01\x05\x00"],
)
async def test_invalid_update_raises_and_changes_nothing(rooms, garbage):
    room, peer, client = await _room_with_one_edit(rooms)
    before, ticket_before, bytes_before = _snapshot(room), room.last_ticket, room.stored_bytes

    with pytest.raises(InvalidUpdate):
        room.apply_update(garbage, None)

    assert _snapshot(room) == before
    assert (room.last_ticket, room.stored_bytes) == (ticket_before, bytes_before)
    # A later valid update is stored right after the first: nothing slipped in between.
    second = _edit(client, "w2", sets=2)
    await rooms.writer.wait_committed(room.apply_update(second, None))
    stored = await rooms.rows(room)
    assert len(stored) == 2
    assert len(peer.sent) == 1


async def test_truncated_valid_update_raises_and_changes_nothing(rooms):
    room = await rooms.open()
    update = _edit(Doc(), "w1", name="bench " * 20)
    before = _snapshot(room)
    with pytest.raises(InvalidUpdate):
        room.apply_update(update[:-3], None)
    assert _snapshot(room) == before
    assert room.last_ticket == 0


async def test_duplicate_update_is_stored_once(rooms):
    room = await rooms.open()
    peer = RecordingConnection(rooms.user_id)
    room.add(peer)
    update = _edit(Doc(), "w1", sets=3)

    ticket = room.apply_update(update, None)
    assert ticket is not None
    assert room.apply_update(update, None) is None  # the diff is empty
    await rooms.writer.wait_committed(ticket)

    assert len(await rooms.rows(room)) == 1
    assert len(peer.sent) == 1


async def test_full_state_resent_stores_only_what_is_new(rooms):
    """A reconnecting client resends all it has: only the part new to the server is kept."""
    room = await rooms.open()
    client = Doc()
    await rooms.writer.wait_committed(room.apply_update(_edit(client, "w1", sets=1), None))
    _edit(client, "w2", sets=2)  # made offline

    ticket = room.apply_update(client.get_update(), None)  # everything the client has
    await rooms.writer.wait_committed(ticket)

    stored = await rooms.rows(room)
    assert len(stored) == 2
    only_new = Doc()
    only_new.apply_update(stored[1])
    assert only_new.get("workouts", type=Map).to_py() == {"w2": {"sets": 2.0}}


async def test_document_size_limit_raises_and_changes_nothing(rooms):
    room, peer, client = await _room_with_one_edit(rooms, max_bytes=600)
    before, bytes_before, ticket_before = _snapshot(room), room.stored_bytes, room.last_ticket

    big = _edit(client, "w2", notes="x" * 1000)
    with pytest.raises(DocumentTooLarge):
        room.apply_update(big, None)

    assert _snapshot(room) == before
    assert (room.stored_bytes, room.last_ticket) == (bytes_before, ticket_before)
    assert len(await rooms.rows(room)) == 1
    assert peer.sent == []


async def test_size_limit_counts_what_is_already_stored(rooms):
    name = f"doc-{uuid.uuid4().hex[:8]}"
    first = await rooms.open(name)
    client = Doc()
    text = client.get("notes", type=Text)
    before = client.get_state()
    text += "y" * 400
    await rooms.writer.wait_committed(first.apply_update(client.get_update(before), None))

    # Reloaded with a limit just above what is stored: a small edit still fits,
    # one that would pass the limit does not.
    stored = first.stored_bytes
    room = await rooms.open(name, max_bytes=stored + 100)
    assert room.stored_bytes == stored
    room.apply_update(_edit(client, "w1", sets=1), None)
    with pytest.raises(DocumentTooLarge):
        room.apply_update(_edit(client, "w2", notes="z" * 200), None)
    assert "w2" not in room.doc.get("workouts", type=Map)


async def test_sync_step2_answers_with_what_the_client_lacks(rooms):
    room = await rooms.open()
    client = Doc()
    room.apply_update(_edit(client, "w1", sets=1), None)
    other = Doc()

    reply, ticket = room.sync_step2(other.get_state())

    assert ticket == room.last_ticket
    message = parse_message(reply)
    assert (message.type, message.sync_type) == (YMessageType.SYNC, YSyncMessageType.SYNC_STEP2)
    other.apply_update(message.payload)
    assert other.get("workouts", type=Map).to_py() == {"w1": {"sets": 1.0}}
    await rooms.writer.wait_committed(ticket)


async def test_sync_step2_with_a_bad_state_vector_raises_invalid_update(rooms):
    room = await rooms.open()
    with pytest.raises(InvalidUpdate):
        room.sync_step2(b"\x05\x01")


def _awareness_update(state: dict | None, awareness: Awareness | None = None) -> tuple:
    awareness = awareness or Awareness(Doc())
    awareness.set_local_state(state)
    payload = awareness.encode_awareness_update([awareness.client_id])
    return awareness, payload


async def test_awareness_is_tracked_per_connection_relayed_and_removed_on_leave(rooms):
    room = await rooms.open()
    a, b = RecordingConnection(rooms.user_id), RecordingConnection(rooms.user_id)
    room.add(a)
    room.add(b)
    aw_a, payload = _awareness_update({"user": "a"})
    message = b"\x01" + bytes([len(payload)]) + payload

    room.apply_awareness(a, payload, message)

    assert a.awareness == {aw_a.client_id: len(b'{"user":"a"}')}
    assert b.awareness == {}
    assert room.awareness.states[aw_a.client_id] == {"user": "a"}
    assert b.sent == [message] and a.sent == []
    # A newcomer is told about it.
    known = parse_message(room.awareness_message())
    newcomer = Awareness(Doc())
    newcomer.apply_awareness_update(known.payload, "server")
    assert newcomer.states[aw_a.client_id] == {"user": "a"}

    room.remove(a)

    assert aw_a.client_id not in room.awareness.states
    assert aw_a.client_id not in room.awareness.meta  # pycrdt's clock of it goes too
    assert a.awareness == {}
    assert len(b.sent) == 2
    # What b got is a removal its own Awareness understands.
    removal = parse_message(b.sent[1])
    assert removal.type == YMessageType.AWARENESS
    newcomer.apply_awareness_update(removal.payload, "server")
    assert aw_a.client_id not in newcomer.states
    assert room.awareness_message() is None


async def test_awareness_cleared_by_the_client_is_forgotten(rooms):
    room = await rooms.open()
    a, b = RecordingConnection(rooms.user_id), RecordingConnection(rooms.user_id)
    room.add(a)
    room.add(b)
    aw, payload = _awareness_update({"user": "a"})
    room.apply_awareness(a, payload, b"m1")
    _, payload = _awareness_update(None, aw)  # the client says it is gone itself
    room.apply_awareness(a, payload, b"m2")

    assert a.awareness == {aw.client_id: 0}  # still its client, with no state
    assert aw.client_id not in room.awareness.states
    room.remove(a)
    assert b.sent == [b"m1", b"m2"]  # no removal of its own: nothing left to remove


async def test_leaving_without_awareness_sends_nothing(rooms):
    room = await rooms.open()
    a, b = RecordingConnection(rooms.user_id), RecordingConnection(rooms.user_id)
    room.add(a)
    room.add(b)
    room.remove(a)
    assert room.connections == {b}
    assert b.sent == []


@pytest.mark.parametrize("payload", [b"", b"\x01\x05\x00\x03{no", b"\x01\x05\x00\x20ab"])
async def test_bad_awareness_update_raises_invalid_update(rooms, payload):
    room = await rooms.open()
    a, b = RecordingConnection(rooms.user_id), RecordingConnection(rooms.user_id)
    room.add(a)
    room.add(b)
    with pytest.raises(InvalidUpdate):
        room.apply_awareness(a, payload, b"\x01" + payload)
    assert b.sent == []
    assert room.awareness.states == {}


async def test_failed_write_closes_the_connections_and_breaks_the_room(rooms):
    """A batch PostgreSQL cannot take (a document id outside bigint) fails as a whole."""
    good = await rooms.open()
    broken = Room((rooms.user_id, "broken"), 2**63, [], rooms.writer,
                  limits=RoomLimits(max_bytes=1 << 20), on_broken=rooms.broken.append)
    conn = RecordingConnection(rooms.user_id)
    broken.add(conn)

    ticket = broken.apply_update(_edit(Doc(), "w1", sets=1), None)
    with pytest.raises(WriteFailed):
        await rooms.writer.wait_committed(ticket)
    assert conn.closed_with == 1011
    assert rooms.broken == [broken]
    # The writer goes on: the next batch, of another room, is stored.
    ok = good.apply_update(_edit(Doc(), "w2", sets=2), None)
    await rooms.writer.wait_committed(ok)
    assert len(await rooms.rows(good)) == 1


# -- a room answers from its stored updates until it needs a Doc --------------------------


async def test_a_new_document_is_synced_without_building_a_doc(rooms):
    room = await rooms.open()
    conn = RecordingConnection(rooms.user_id)
    room.add(conn)

    room.greet(conn)
    reply, ticket = room.sync_step2(EMPTY_STATE)

    assert conn.sent == [create_sync_message(Doc())]  # the step 1 of an empty document
    assert parse_message(reply).payload == b"\x00\x00" and ticket == 0
    assert not room.built


async def test_a_fresh_client_of_a_one_row_document_gets_the_row_before_the_step1(rooms):
    source = Doc()
    _edit(source, "w1", sets=1)
    _edit(source, "w2", sets=2)
    row = source.get_update()
    room = await rooms.loaded([row])
    conn = RecordingConnection(rooms.user_id)
    room.add(conn)

    room.greet(conn)  # the step 1 needs the Doc: it waits a turn
    assert conn.sent == []
    reply, _ = room.sync_step2(EMPTY_STATE)
    assert not room.built
    conn.send(reply)
    await _next_turn()

    step2, step1 = (parse_message(m) for m in conn.sent)
    assert step2.payload == row  # as stored, not re-encoded
    assert (step1.sync_type, step1.payload) == (YSyncMessageType.SYNC_STEP1, source.get_state())
    assert room.built
    client = Doc()
    client.apply_update(step2.payload)
    assert client.get("workouts", type=Map).to_py() == source.get("workouts", type=Map).to_py()


async def test_what_the_stored_rows_cannot_answer_builds_the_doc(rooms):
    source = Doc()
    first = _edit(source, "w1", sets=1)
    second = _edit(source, "w2", sets=2)
    partial = Doc()
    partial.apply_update(first)

    one_row = await rooms.loaded([source.get_update()])
    missing, _ = one_row.update_since(partial.get_state())  # a client that has some of it
    two_rows = await rooms.loaded([first, second])
    everything, _ = two_rows.update_since(EMPTY_STATE)  # two rows are not one update

    assert one_row.built and two_rows.built
    partial.apply_update(missing)
    fresh = Doc()
    fresh.apply_update(everything)
    expected = source.get("workouts", type=Map).to_py()
    assert partial.get("workouts", type=Map).to_py() == expected
    assert fresh.get("workouts", type=Map).to_py() == expected


async def test_a_stored_row_that_does_not_load_closes_the_room_not_the_sender(rooms):
    room = await rooms.loaded([b"garbage bytes here"])
    conn = RecordingConnection(rooms.user_id)
    room.add(conn)

    with pytest.raises(DocumentUnavailable):
        room.apply_update(_edit(Doc(), "w1", sets=1), conn)

    assert conn.closed_with == 1011
    assert rooms.broken == [room]
    assert room.last_ticket == 0  # nothing was queued for storage


async def test_updates_of_one_turn_are_checked_together_and_only_the_waiting_one_counts(rooms):
    room = await rooms.open()
    conn = RecordingConnection(rooms.user_id)
    room.add(conn)
    source = Doc()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    workouts = source.get("workouts", type=Map)
    workouts["a"] = Map({"sets": 1})
    workouts["b"] = Map({"sets": 2})
    workouts["b"]["sets"] = 3  # builds on b
    other = _edit(Doc(), "w1", sets=1)

    room.apply_update(other, conn)  # whole
    room.apply_update(updates[0], conn)  # whole
    room.apply_update(updates[2], conn)  # waits for updates[1]
    await asyncio.sleep(0)  # the end of the turn: the check runs
    assert room._pending == [updates[2]]  # noqa: SLF001
    assert conn.closed_with is None

    room.apply_update(updates[1], conn)  # what it waited for
    await asyncio.sleep(0)
    assert room._pending == []  # noqa: SLF001
    assert room.doc.get("workouts", type=Map).to_py()["b"] == {"sets": 3.0}
