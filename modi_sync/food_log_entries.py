"""Reading one entry of a document's ``food_logs`` (CONTRACT.md section 5), whatever a
client wrote into it.

The server checks nothing when clients write (docs/api.md, "The document schema"), so
the popular list and the daily summary read each field here, and a field that is not
what the schema says reads as None: the caller skips the entry, nothing fails.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from uuid import UUID

# A quantity past this many grams (a tonne) is taken for garbage, not food: it would
# only swamp a sum (and 1e308 of it would make the sum infinite).
MAX_QUANTITY_G = 1_000_000.0

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# RFC 3339's date-time: the offset is required (a local time without one names no day
# we could check), ``T`` or a space between date and time, either case.
_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# Checked in this order; the first one that holds a date-time with an offset names the
# entry's day (docs/foods.md, "The daily summary").
TIME_FIELDS = ("logged_at", "date_time")


def parse_day(text: str) -> date | None:
    """A ``YYYY-MM-DD`` day, or None if ``text`` is not one."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:  # 2025-02-30
        return None


def entry_day(entry: Mapping[str, Any]) -> date | None:
    """The user's local day of an entry.

    An RFC 3339 time with its offset (``logged_at``, else ``date_time``) says it best:
    its day is the date as written, in its own offset (``2025-03-01T23:30:00-05:00`` is
    1 March, though it is 2 March in UTC). Without one, ``date``, which the client
    writes as the user's local day. None if neither reads.
    """
    for field in TIME_FIELDS:
        day = _day_of_time(entry.get(field))
        if day is not None:
            return day
    value = entry.get("date")
    return parse_day(value) if isinstance(value, str) else None


def _day_of_time(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return None
    try:  # the whole time must exist (no 25:00, no +24:00), not only its date
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parse_day(match[1])


def food_uuid(value: Any) -> UUID | None:
    """A food's id: a UUID in its usual 36-character form, or None."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return UUID(value)
    except ValueError:
        return None


def quantity_g(entry: Mapping[str, Any]) -> float | None:
    """The entry's grams: a finite number from 0 to MAX_QUANTITY_G, or None."""
    value = entry.get("quantity_g")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    grams = float(value)
    if not math.isfinite(grams) or not 0 <= grams <= MAX_QUANTITY_G:
        return None
    return grams
