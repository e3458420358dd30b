"""``/api/v1/images``: label photos in, their readings out (docs/api.md, "Images";
docs/ocr.md).

The upload is ``multipart/form-data`` with the photo in the field ``image`` and,
optionally, the name of the document whose ``ocr_drafts`` gets the reading in ``doc``
(``default`` otherwise). The body is read part by part with every byte counted, so a
client cannot make the server buffer more than the contract's 10 MB.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from storage.rate_limits import IMAGES_SCOPE

from ..access import actor, authenticated_user, enforce_rate_limit
from ..app_keys import IMAGES, SETTINGS
from ..contract import DEFAULT_DOCUMENT, DOC_NAME
from ..errors import TooLarge, Unsupported
from ..export import image_json
from ..images import MAX_IMAGE_BYTES
from .errors import ApiError, json_response

routes = web.RouteTableDef()

_IMAGE = "/api/v1/images/{id}"
_NAME = re.compile(DOC_NAME)
_MAX_PARTS = 4  # image, doc, and a little slack for a client's extra field
_MAX_FIELD_BYTES = 256  # a part other than the image
# Multipart framing around the photo: boundaries and part headers.
_FRAMING_BYTES = 16 * 1024


@routes.post("/api/v1/images")
async def upload(request: web.Request) -> web.Response:
    claims = await authenticated_user(request, writes=True)
    await enforce_rate_limit(request, IMAGES_SCOPE, str(claims.user_id),
                             request.app[SETTINGS].rate_limit_images)
    if (request.content_length or 0) > MAX_IMAGE_BYTES + _FRAMING_BYTES:
        raise TooLarge(f"an image may have at most {MAX_IMAGE_BYTES} bytes")
    data, doc_name = await _read_form(request)
    record = await request.app[IMAGES].upload(claims.user_id, doc_name, data, actor(request))
    return json_response(image_json(record), status=202)


@routes.get(_IMAGE)
async def get_image(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    try:
        image_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise ApiError.validation("id", "not an image id") from None
    return json_response(image_json(await request.app[IMAGES].get(claims.user_id, image_id)))


async def _read_form(request: web.Request) -> tuple[bytes, str]:
    if request.content_type != "multipart/form-data":
        raise Unsupported("send the image as multipart/form-data, in the field 'image'")
    try:
        reader = await request.multipart()
        data: bytes | None = None
        doc_name = DEFAULT_DOCUMENT
        for _ in range(_MAX_PARTS):
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise ApiError.validation("image", "nested multipart bodies are not taken")
            if part.name == "image":
                if data is not None:  # one photo per upload: 10 MB held at most
                    raise ApiError.validation("image", "one image per upload")
                data = await _read_part(part, MAX_IMAGE_BYTES)
            elif part.name == "doc":
                doc_name = (await _read_part(part, _MAX_FIELD_BYTES)).decode("utf-8", "replace")
            else:
                await _read_part(part, _MAX_FIELD_BYTES)
        else:
            if await reader.next() is not None:
                raise ApiError.validation("image", f"at most {_MAX_PARTS} form fields")
    except (ValueError, AssertionError, HttpProcessingError) as exc:  # a broken body
        raise ApiError.validation("image", f"not a valid multipart body ({exc})") from None
    if data is None:
        raise ApiError.validation("image", "required: the photo, as the form field 'image'")
    if not _NAME.fullmatch(doc_name):
        raise ApiError.validation("doc", "1..64 of A-Z a-z 0-9 . _ -")
    return data, doc_name


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    """The part's bytes, or an error past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            if part.name == "image":
                raise TooLarge(f"an image may have at most {limit} bytes")
            raise ApiError.validation(part.name or "form", f"at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
