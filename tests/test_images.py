"""``/api/v1/images``: uploads judged by their content, bounded, owned, logged, exported,
erased and retained (docs/ocr.md). The reading itself: tests/test_ocr_jobs.py."""

from __future__ import annotations

import base64
import io
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from PIL import Image

from modi_sync.retention import retention_pass
from modi_sync.runtime import open_storage

from .conftest import Client, register
from .test_auth import assert_error

IMAGES = "/api/v1/images"


def png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (250, 250, 250)).save(out, "PNG")
    return out.getvalue()


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 200)).save(out, "JPEG", quality=80)
    return out.getvalue()


def with_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (its CRC made right): a bomb's shape."""
    ihdr = bytearray(data[12:29])  # type, then 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return data[:12] + bytes(ihdr) + crc + data[33:]


def form(data: bytes | None, *, doc: str | None = None, filename: str = "label.png",
         content_type: str = "image/png") -> aiohttp.FormData:
    body = aiohttp.FormData(default_to_multipart=True)
    if data is not None:
        body.add_field("image", io.BytesIO(data), filename=filename,
                       content_type=content_type)
    if doc is not None:
        body.add_field("doc", doc)
    return body


class Owner:
    def __init__(self, client: Client, pair: dict) -> None:
        self.client = client
        self.id = uuid.UUID(pair["user"]["id"])
        self.auth = {"Authorization": f"Bearer {pair['access_token']}"}

    async def upload(self, data: bytes | None, **kwargs) -> aiohttp.ClientResponse:
        return await self.client.post(IMAGES, data=form(data, **kwargs), headers=self.auth)


@pytest.fixture
async def owner(client: Client, db) -> AsyncIterator[Owner]:
    """A user whose images are removed after the test: a queued job left behind would
    be read by the worker tests' workers."""
    user = Owner(client, await register(client))
    yield user
    await db.execute("DELETE FROM images WHERE user_id = $1", user.id)


async def _stored(db, user_id: uuid.UUID) -> int:
    return await db.fetchval("SELECT count(*) FROM images WHERE user_id = $1", user_id)


async def test_an_upload_is_queued_and_its_owner_alone_reads_it(client, owner, db):
    resp = await owner.upload(png(40, 30), doc="diary")
    assert resp.status == 202, await resp.text()
    queued = (await resp.json())["data"]
    assert queued["status"] == "queued" and queued["result"] is None
    resp = await client.get(f"{IMAGES}/{queued['id']}", headers=owner.auth)
    assert resp.status == 200
    seen = (await resp.json())["data"]
    assert (seen["id"], seen["status"], seen["doc"], seen["content_type"], seen["width"],
            seen["height"]) == (queued["id"], "queued", "diary", "image/png", 40, 30)

    other = await register(client)
    resp = await client.get(f"{IMAGES}/{queued['id']}",
                            headers={"Authorization": f"Bearer {other['access_token']}"})
    assert resp.status == 404
    assert_error(await resp.json(), "NOT_FOUND")

    entry = await db.fetchrow("SELECT action, details FROM audit_log WHERE user_id = $1 AND "
                              "resource_id = $2", owner.id, queued["id"])
    assert entry["action"] == "image.upload" and '"size"' in entry["details"]


async def test_an_upload_is_judged_by_its_content_not_its_declared_type(owner, db):
    resp = await owner.upload(jpeg(), filename="label.png", content_type="image/png")
    assert resp.status == 202
    assert (await resp.json())["data"]["content_type"] == "image/jpeg"
    assert await _stored(db, owner.id) == 1


@pytest.mark.parametrize("data", [
    b"GIF89a" + b"\x00" * 64,
    b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 64,
    b"%PDF-1.7\n" + b"x" * 64,
    b"just some text, not an image",
], ids=["gif", "webp", "pdf", "text"])
async def test_what_is_neither_jpeg_nor_png_is_a_415(owner, db, data):
    resp = await owner.upload(data)
    assert resp.status == 415
    assert_error(await resp.json(), "UNSUPPORTED_MEDIA_TYPE")
    assert await _stored(db, owner.id) == 0


@pytest.mark.parametrize("data", [
    png()[:60],  # cut short
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,  # PNG's signature, then nothing of a PNG
    b"\xff\xd8\xff\xe0" + b"\x13" * 500,  # JPEG's, the same
    with_size(png(), 60_000, 60_000),  # a small file declaring 3.6 gigapixels
    with_size(png(), 10_000, 10_000),  # 100 million: where Pillow would only warn
], ids=["truncated-png", "png-signature-only", "jpeg-signature-only", "pixel-bomb",
        "pixel-bomb-below-pillows-limit"])
async def test_a_broken_image_or_a_pixel_bomb_is_a_400(owner, db, data):
    resp = await owner.upload(data)
    assert resp.status == 400, await resp.text()
    error = assert_error(await resp.json(), "VALIDATION_ERROR")
    assert error["details"]["field"] == "image"
    assert await _stored(db, owner.id) == 0


async def test_an_image_over_10_mb_is_a_413_and_stores_nothing(owner, db):
    big = png() + b"\x00" * (10 * 1024 * 1024)
    resp = await owner.upload(big)
    assert resp.status == 413
    assert_error(await resp.json(), "PAYLOAD_TOO_LARGE")
    assert await _stored(db, owner.id) == 0


async def test_an_image_over_10_mb_sent_without_a_length_is_a_413(owner, db):
    """Chunked: the limit is counted as the bytes arrive, not taken from a header."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b"\x00" * (1024 * 1024)

    body = aiohttp.FormData()
    body.add_field("image", chunks(), filename="big.png", content_type="image/png")
    resp = await owner.client.post(IMAGES, data=body, headers=owner.auth)
    assert resp.status == 413
    assert await _stored(db, owner.id) == 0


async def test_a_form_without_the_image_field_or_with_a_bad_doc_is_a_400(owner, db):
    resp = await owner.upload(None, doc="diary")
    assert resp.status == 400
    assert assert_error(await resp.json(), "VALIDATION_ERROR")["details"]["field"] == "image"
    resp = await owner.upload(png(), doc="../etc")
    assert resp.status == 400
    assert assert_error(await resp.json(), "VALIDATION_ERROR")["details"]["field"] == "doc"
    assert await _stored(db, owner.id) == 0


async def test_a_body_that_is_not_a_form_is_a_415(owner):
    resp = await owner.client.post(IMAGES, data=png(), headers={
        **owner.auth, "Content-Type": "image/png"})
    assert resp.status == 415
    assert_error(await resp.json(), "UNSUPPORTED_MEDIA_TYPE")


async def test_a_form_of_many_fields_is_a_400(owner, db):
    body = form(png())
    for i in range(10):
        body.add_field(f"extra{i}", "x")
    resp = await owner.client.post(IMAGES, data=body, headers=owner.auth)
    assert resp.status == 400
    assert await _stored(db, owner.id) == 0


async def test_uploads_are_limited_per_user(make_client, db):
    client = await make_client(rate_limit_images="2/3600")
    user = Owner(client, await register(client))
    try:
        assert [(await user.upload(png())).status for _ in range(2)] == [202, 202]
        resp = await user.upload(png())
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 0
        assert await _stored(db, user.id) == 2
    finally:
        await db.execute("DELETE FROM images WHERE user_id = $1", user.id)


async def test_a_full_queue_is_a_429_with_retry_after(make_client, db):
    open_now = await db.fetchval(
        "SELECT count(*) FROM images WHERE status IN ('queued', 'processing')")
    client = await make_client(ocr_queue_max=open_now + 1)
    user = Owner(client, await register(client))
    try:
        first = await user.upload(png())
        assert first.status == 202
        resp = await user.upload(png())
        assert resp.status == 429, await resp.text()
        assert int(resp.headers["Retry-After"]) > 0
        assert "queue is full" in assert_error(await resp.json(), "RATE_LIMITED")["message"]
        assert await _stored(db, user.id) == 1
    finally:
        await db.execute("DELETE FROM images WHERE user_id = $1", user.id)


async def test_the_export_holds_the_image_and_erasure_removes_it(client, owner, db):
    data = png(41, 31)
    image_id = (await (await owner.upload(data)).json())["data"]["id"]
    resp = await client.get("/api/v1/users/me/export", headers=owner.auth)
    [exported] = (await resp.json())["data"]["images"]
    assert exported["id"] == image_id and exported["status"] == "queued"
    assert base64.b64decode(exported["data"]) == data

    resp = await client.delete("/api/v1/auth/account", json={"password": "correct horse"},
                               headers=owner.auth)
    assert resp.status == 204
    assert await db.fetchval("SELECT count(*) FROM images WHERE id = $1",
                             uuid.UUID(image_id)) == 0


async def test_retention_removes_images_past_their_days(settings, owner, db):
    old = uuid.UUID((await (await owner.upload(png())).json())["data"]["id"])
    new = uuid.UUID((await (await owner.upload(png())).json())["data"]["id"])
    await db.execute("UPDATE images SET created_at = $2 WHERE id = $1", old,
                     datetime.now(UTC) - timedelta(days=31))
    async with open_storage(replace(settings, image_retention_days=30)) as storage:
        removed = await retention_pass(storage)
    assert removed is not None and removed.images >= 1
    kept = {r["id"] for r in await db.fetch("SELECT id FROM images WHERE user_id = $1",
                                            owner.id)}
    assert kept == {new}


async def test_a_multipart_body_with_a_broken_part_header_is_a_400(owner, db):
    """Found by schemathesis: a control character in a part's name made aiohttp raise
    an error that is not a ValueError."""
    body = (b'--b1\r\nContent-Disposition: form-data; name="\x01j\x00"\r\n\r\nx\r\n'
            b'--b1\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            + png() + b"\r\n--b1--\r\n")
    resp = await owner.client.post(IMAGES, data=body, headers={
        **owner.auth, "Content-Type": "multipart/form-data; boundary=b1"})
    assert resp.status == 400
    assert_error(await resp.json(), "VALIDATION_ERROR")
    assert await _stored(db, owner.id) == 0


async def test_after_consent_is_withdrawn_an_upload_is_a_403(client, owner, db):
    resp = await client.put("/api/v1/users/me/consents", headers=owner.auth,
                            json={"privacy_policy_version": None})
    assert resp.status == 200, await resp.text()
    resp = await owner.upload(png())
    assert resp.status == 403
    assert_error(await resp.json(), "FORBIDDEN")
    assert await _stored(db, owner.id) == 0


async def test_a_form_with_two_images_is_a_400(owner, db):
    body = form(png())
    body.add_field("image", io.BytesIO(png()), filename="b.png", content_type="image/png")
    resp = await owner.client.post(IMAGES, data=body, headers=owner.auth)
    assert resp.status == 400
    assert assert_error(await resp.json(), "VALIDATION_ERROR")["details"]["field"] == "image"
    assert await _stored(db, owner.id) == 0
