"""The REST conventions' paginated answer, as JSON bytes (docs/api.md, "Conventions")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Page:
    number: int  # from 1
    limit: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.limit


def paginated_json(items: list[Any], page: Page, total: int) -> bytes:
    return orjson.dumps({
        "data": items,
        "pagination": {"page": page.number, "limit": page.limit, "total": total,
                       "total_pages": math.ceil(total / page.limit)},
    })
