"""y-websocket framing (modi_sync.sync.protocol): what parses, and what is refused."""

from __future__ import annotations

import pytest
from pycrdt import (
    Awareness,
    Doc,
    Map,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    write_message,
    write_var_uint,
)

from modi_sync.sync.protocol import (
    MESSAGE_AUTH,
    MESSAGE_QUERY_AWARENESS,
    AwarenessEntry,
    Message,
    ProtocolError,
    Reader,
    TooManyEntries,
    decode_state_vector,
    parse_awareness,
    parse_message,
    sync_step2_message,
)


def _doc_with_content() -> Doc:
    doc = Doc()
    doc.get("workouts", type=Map)["w1"] = Map({"name": "squat", "sets": 5})
    return doc


def test_sync_step1_parses_to_the_state_vector():
    doc = _doc_with_content()
    message = parse_message(create_sync_message(doc))
    assert message == Message(YMessageType.SYNC, YSyncMessageType.SYNC_STEP1, doc.get_state())


def test_sync_step2_parses_to_the_update():
    update = _doc_with_content().get_update()
    message = parse_message(sync_step2_message(update))
    assert message.type == YMessageType.SYNC
    assert message.sync_type == YSyncMessageType.SYNC_STEP2
    assert message.payload == update
    # The payload is a real update: it brings the content into a fresh doc.
    fresh = Doc()
    fresh.apply_update(message.payload)
    assert fresh.get("workouts", type=Map).to_py() == {"w1": {"name": "squat", "sets": 5.0}}


def test_sync_update_parses_to_the_update():
    update = _doc_with_content().get_update()
    message = parse_message(create_update_message(update))
    assert (message.type, message.sync_type, message.payload) == (
        YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE, update
    )


def test_awareness_parses_to_its_payload():
    awareness = Awareness(Doc())
    awareness.set_local_state({"user": "a"})
    payload = awareness.encode_awareness_update([awareness.client_id])
    message = parse_message(create_awareness_message(payload))
    assert message == Message(YMessageType.AWARENESS, None, payload)


def test_query_awareness_and_auth_parse_without_payload():
    assert parse_message(bytes([MESSAGE_QUERY_AWARENESS])) == Message(
        MESSAGE_QUERY_AWARENESS, None, b""
    )
    # y-protocols' auth message: type 2, then "permission denied" and a reason.
    auth = bytes([MESSAGE_AUTH, 0]) + write_message(b"no")
    assert parse_message(auth) == Message(MESSAGE_AUTH, None, b"")


def test_large_payload_with_multibyte_length_prefix():
    payload = bytes(range(256)) * 40  # 10240 bytes: a 2-byte var-uint length
    message = parse_message(create_update_message(payload))
    assert message.payload == payload


def test_sync_step2_message_matches_pycrdt_framing():
    update = _doc_with_content().get_update()
    framed = sync_step2_message(update)
    assert framed == bytes([0, 1]) + write_message(update)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80", id="unterminated-type-varint"),
        pytest.param(b"\x00", id="sync-without-sync-type"),
        pytest.param(b"\x00\x80", id="sync-type-unterminated"),
        pytest.param(b"\x00\x02", id="update-without-length"),
        pytest.param(b"\x00\x02\x05abc", id="update-shorter-than-prefix"),
        pytest.param(b"\x00\x00\x81", id="step1-length-unterminated"),
        pytest.param(b"\x00\x01\xff\xff\x03" + b"x" * 10, id="step2-huge-length-prefix"),
        pytest.param(b"\x01", id="awareness-without-length"),
        pytest.param(b"\x01\x10abc", id="awareness-shorter-than-prefix"),
    ],
)
def test_truncated_frames_raise_protocol_error(frame):
    with pytest.raises(ProtocolError):
        parse_message(frame)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\x04", id="type-4"),
        pytest.param(b"\x7f", id="type-127"),
        pytest.param(b"\xff\x01", id="type-255-two-byte-varint"),
        pytest.param(b"\x00\x03\x00", id="sync-type-3"),
        pytest.param(b"\x00\x09\x00", id="sync-type-9"),
        pytest.param(b"garbage", id="ascii-garbage"),  # 'g' = 103
        pytest.param(b'{"type": "update"}', id="json-text"),
    ],
)
def test_unknown_types_and_garbage_raise_protocol_error(frame):
    with pytest.raises(ProtocolError):
        parse_message(frame)


def test_protocol_error_is_a_value_error():
    # The handler catches it by name; callers that only know ValueError still see it.
    assert issubclass(ProtocolError, ValueError)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\x80" * 8 + b"\x01", id="nine-byte-varint"),
        pytest.param(b"\xff" * (1 << 20), id="a-MiB-of-ff"),
        pytest.param(b"\x00\x00" + b"\xff" * 100 + b"\x01", id="long-length-prefix"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\xff\x7f", id="past-2^53"),
    ],
)
def test_var_uints_are_bounded(frame):
    with pytest.raises(ProtocolError):
        parse_message(frame)


def test_the_largest_javascript_integer_still_reads():
    assert Reader(write_var_uint(2**53 - 1)).var_uint() == 2**53 - 1


def test_state_vectors_are_bounded_by_their_bytes():
    doc = _doc_with_content()
    assert decode_state_vector(doc.get_state()) == {doc.client_id: 3}  # a map and two keys
    with pytest.raises(ProtocolError):
        decode_state_vector(write_var_uint(2**40) + b"\x01\x01")  # a count past its bytes


def test_awareness_entries_are_measured_not_decoded():
    awareness = Awareness(Doc())
    awareness.set_local_state({"user": "a"})
    present = awareness.encode_awareness_update([awareness.client_id])
    awareness.set_local_state(None)
    gone = awareness.encode_awareness_update([awareness.client_id])
    assert parse_awareness(present, 8) == [AwarenessEntry(awareness.client_id, 1, 12)]
    assert parse_awareness(gone, 8) == [AwarenessEntry(awareness.client_id, 2, 0)]
    with pytest.raises(TooManyEntries):
        parse_awareness(write_var_uint(9) + b"\x01\x01\x00" * 9, 8)
    with pytest.raises(ProtocolError):
        parse_awareness(write_var_uint(1) + b"\x01\x01\x05ab", 8)  # a state cut short
