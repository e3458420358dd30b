"""Label photos: the upload's checks, the queue's bound, and what the owner may read.

An upload is judged by its content, never by its name or declared type: its first
bytes must be JPEG's or PNG's (else Unsupported), its header must give at most
``MAX_PIXELS`` pixels (a small file can declare a huge canvas: a decompression bomb),
and it must decode whole (else Invalid). The decode runs in a thread: Pillow lets go of
the GIL while it decodes, so a 10 MB photo does not hold the event loop.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from dataclasses import dataclass
from uuid import UUID

from PIL import Image
from redis.asyncio import Redis

from storage.images import ImageRecord, ImageStore, NewImage, wake_workers

from .audit import Actor
from .errors import Invalid, NotFound, RateLimited, Unsupported

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the contract's limit
# A 48-megapixel phone photo is 8000 x 6000: room for it, none for a canvas of
# gigapixels that decodes to gigabytes.
MAX_PIXELS = 50_000_000
# What a full queue asks a client to wait: about what a worker takes for a few dozen
# jobs (docs/ocr.md).
QUEUE_FULL_RETRY_SECONDS = 60
# Decodes at once per process: one of MAX_PIXELS takes 150 MB while it lasts.
DECODES_AT_ONCE = 2

# Pillow's own check warns from 89 million pixels and refuses from twice that; the one
# in check_image refuses from MAX_PIXELS, before any decode, and says so in a 400.
Image.MAX_IMAGE_PIXELS = None

_SIGNATURES = {
    b"\xff\xd8\xff": ("JPEG", "image/jpeg"),
    b"\x89PNG\r\n\x1a\n": ("PNG", "image/png"),
}


@dataclass(frozen=True, slots=True)
class CheckedImage:
    content_type: str
    width: int
    height: int


def check_image(data: bytes) -> CheckedImage:
    """What ``data`` is, once it has decoded whole; blocking (call it in a thread)."""
    kind = next((k for magic, k in _SIGNATURES.items() if data.startswith(magic)), None)
    if kind is None:
        raise Unsupported("only JPEG and PNG images are taken")
    pillow_format, content_type = kind
    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Invalid("image", f"{width}x{height} is more than {MAX_PIXELS} pixels")
            image.load()
    except Invalid:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise Invalid("image", f"not a whole {pillow_format} image ({exc})") from None
    return CheckedImage(content_type, width, height)


class Images:
    def __init__(self, store: ImageStore, redis: Redis, *, queue_max: int) -> None:
        self._store = store
        self._redis = redis
        self._queue_max = queue_max
        self._decoding = asyncio.Semaphore(DECODES_AT_ONCE)

    async def upload(self, user_id: UUID, doc_name: str, data: bytes, actor: Actor,
                     ) -> ImageRecord:
        """Check, store and queue the photo; its reading will go to ``doc_name``."""
        if not data:
            raise Invalid("image", "empty")
        async with self._decoding:
            checked = await asyncio.to_thread(check_image, data)
        image_id = uuid.uuid4()
        record = await self._store.add(
            NewImage(image_id, user_id, doc_name, checked.content_type, checked.width,
                     checked.height, data),
            actor.entry("image.upload", "image", user_id=user_id, resource_id=str(image_id),
                        details={"size": len(data), "content_type": checked.content_type}),
            queue_max=self._queue_max)
        if record is None:
            raise RateLimited(QUEUE_FULL_RETRY_SECONDS, "the label reading queue is full")
        await wake_workers(self._redis, image_id)
        return record

    async def get(self, user_id: UUID, image_id: UUID) -> ImageRecord:
        record = await self._store.get(user_id, image_id)
        if record is None:
            raise NotFound("no such image")
        return record
