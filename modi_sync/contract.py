"""The constants of the public contract (CONTRACT.md, docs/api.md), in one place.

The server, the commands and the OpenAPI description read them from here, so none of
them is typed twice. Changing one is a breaking change for clients.
"""

from __future__ import annotations

from enum import IntEnum

# A document's name, scoped to its user (docs/api.md, "Names and ownership").
DOC_NAME = r"[A-Za-z0-9._-]{1,64}"
# The document a route reads or writes when the client names none.
DEFAULT_DOCUMENT = "default"

# The root types of a user's document that the server reads (docs/api.md, "The
# document schema"); clients may add others. Each is a Y.Map.
DOCUMENT_ROOTS = ("workouts", "weights", "food_logs", "favorites", "ocr_drafts")


class CloseCode(IntEnum):
    """How the server closes a sync websocket (docs/api.md, "Close codes")."""

    GOING_AWAY = 1001  # the server is shutting down: reconnect
    INVALID_MESSAGE = 1003  # not a y-websocket message, or an update that does not apply
    POLICY = 1008  # too many connections or awareness clients, updates that never integrate
    TOO_BIG = 1009  # a frame, a document or a quota past its size
    INTERNAL_ERROR = 1011  # storage failed, or the document was reloaded: reconnect
    TRY_AGAIN_LATER = 1013  # too many messages: reconnect with backoff
    SESSION_ENDED = 4401  # logout, password change, account deletion: sign in again
    CONSENT_WITHDRAWN = 4403  # the user withdrew consent to processing: no more syncing
    DOCUMENT_DELETED = 4404  # the document was erased
