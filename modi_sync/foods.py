"""The food database's service: search, lookup, contributions and moderation, the
popular and recent lists, with their answers cached in Redis (docs/foods.md).

Answers are JSON bytes, cached as they are sent: a cache hit costs no decoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson

from storage.food_cache import POPULAR_TTL, SEARCH_TTL, FoodCache
from storage.foods import DuplicateBarcode, Food, FoodStore, NewFood, QueryWord

from .barcodes import normalize_barcode
from .errors import Conflict, Invalid, NotFound, TooLarge
from .pagination import Page, paginated_json

QUERY_LENGTH = 100  # characters; longer is refused
QUERY_WORDS = 8  # words of a query searched; the rest are ignored
PREFIX_FROM = 3  # a word this long or longer also matches as a prefix (as typed)
CORRECTIONS = 3  # known words tried in place of one that matches nothing
NAME_LENGTH = 200
PENDING_PER_USER = 100  # a user's contributions waiting for verification

# Atwater's general factors (kcal per g) and how far a label's energy may stray from
# them: rounding on labels, fibre counted in carbohydrate, polyols.
_KCAL_PER_G = {"protein": Decimal(4), "carbs": Decimal(4), "fat": Decimal(9)}
_KCAL_SLACK = Decimal(20)
_KCAL_SLACK_SHARE = Decimal("0.2")

_WORD = re.compile(r"[^\W_]+")  # letters and digits: never tsquery or LIKE syntax

# The most logged foods, most first, with their counts (modi_sync/popular.py).
PopularIds = Callable[[int], Awaitable[list[tuple[UUID, int]]]]


def food_json(food: Food) -> dict[str, Any]:
    return {"id": str(food.id), "name": food.name, "brand": food.brand,
            "barcode": food.barcode,
            # Per 100 g, as numbers: JSON has no decimals, and these fit a double.
            "calories": float(food.calories), "protein": float(food.protein),
            "carbs": float(food.carbs), "fat": float(food.fat),
            "verified": food.verified, "created_at": food.created_at.isoformat()}


def query_words(q: str) -> list[str]:
    """The words searched for in ``q`` (Invalid if it is empty or too long)."""
    q = q.strip()
    if not q:
        raise Invalid("q", "required: what to search for")
    if len(q) > QUERY_LENGTH:
        raise Invalid("q", f"at most {QUERY_LENGTH} characters")
    return _WORD.findall(q.lower())[:QUERY_WORDS]


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Two tsqueries, in tsquery syntax with every lexeme quoted: what a food must
    match (each word, as a prefix or by a correction), and the words as typed, whole
    (or their nearest correction), which rank a food higher where they are found."""
    match: str
    exact: str


def search_query(words: list[QueryWord], typed: list[str]) -> SearchQuery | None:
    """None if only stop words are left."""
    terms, exact = [], []
    for word, raw in zip(words, typed, strict=True):
        if word.lexeme is None:
            continue
        term = _lexeme(word.lexeme)
        exact.append(term)
        term += ":*" if len(raw) >= PREFIX_FROM else ""
        if word.near:  # the nearest is taken for the word meant, and ranks as typed
            exact.append(_lexeme(word.near[0]))
            term = "(" + " | ".join([term, *map(_lexeme, word.near)]) + ")"
        terms.append(term)
    return SearchQuery(" & ".join(terms), " | ".join(exact)) if terms else None


def _lexeme(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class Foods:
    def __init__(self, store: FoodStore, cache: FoodCache, popular_ids: PopularIds) -> None:
        self._store = store
        self._cache = cache
        self._popular_ids = popular_ids

    async def search(self, q: str, viewer: UUID, page: Page) -> bytes:
        """A page of matches, as the answer's JSON. Cached, except for a viewer with
        unverified contributions: for them the order is their own."""
        typed = query_words(q)
        if not typed:
            return paginated_json([], page, 0)
        if await self._store.has_unverified(viewer):
            return await self._search(typed, viewer, page)
        key, cached = await self._cache.get("food_search", f"{typed}:{page}")
        if cached is None:
            cached = await self._search(typed, None, page)
            await self._cache.put(key, cached, SEARCH_TTL)
        return cached

    async def _search(self, typed: list[str], viewer: UUID | None, page: Page) -> bytes:
        query = search_query(await self._store.query_words(typed, CORRECTIONS), typed)
        if query is None:
            return paginated_json([], page, 0)
        foods, total = await self._store.search(query.match, query.exact, viewer,
                                                page.limit, page.offset)
        return paginated_json([food_json(f) for f in foods], page, total)

    async def get(self, food_id: UUID) -> dict[str, Any]:
        food = await self._store.get(food_id)
        if food is None:
            raise NotFound("no such food")
        return food_json(food)

    async def by_barcode(self, code: str) -> dict[str, Any]:
        try:
            barcode = normalize_barcode(code)
        except ValueError as e:
            raise Invalid("code", str(e)) from None
        food = await self._store.by_barcode(barcode)
        if food is None:
            raise NotFound("no food has this barcode")
        return food_json(food)

    async def contribute(self, user_id: UUID, body: dict[str, Any]) -> dict[str, Any]:
        try:
            food = await self._store.contribute(user_id, new_food(body), PENDING_PER_USER)
        except DuplicateBarcode:
            raise Conflict("a food with this barcode exists") from None
        if food is None:
            raise TooLarge(f"{PENDING_PER_USER} of your foods are waiting for verification "
                           "already")
        await self._cache.foods_changed()
        return food_json(food)

    async def verify(self, food_id: UUID) -> dict[str, Any]:
        food = await self._store.verify(food_id)
        if food is None:
            raise NotFound("no such food")
        await self._cache.foods_changed()
        return food_json(food)

    async def recent(self, page: Page) -> bytes:
        key, cached = await self._cache.get("foods_recent", str(page))
        if cached is None:
            foods, total = await self._store.recent(page.limit, page.offset)
            cached = paginated_json([food_json(f) for f in foods], page, total)
            await self._cache.put(key, cached, SEARCH_TTL)
        return cached

    async def popular(self, limit: int) -> bytes:
        """The ``limit`` verified foods logged most in the last 30 days, with the
        number of times each was logged."""
        key, cached = await self._cache.get("foods_popular", str(limit))
        if cached is None:
            counted = await self._popular_ids(limit)
            found = await self._store.many([food_id for food_id, _ in counted])
            items = [food_json(found[i]) | {"logs": n} for i, n in counted if i in found]
            cached = orjson.dumps({"data": items})
            await self._cache.put(key, cached, POPULAR_TTL)
        return cached


def new_food(body: dict[str, Any]) -> NewFood:
    """A contribution's body, checked: names, barcode, and values a food can have."""
    values = {field: _amount(body, field) for field in ("calories", *_KCAL_PER_G)}
    if values["protein"] + values["carbs"] + values["fat"] > 100:
        raise Invalid("body", "protein, carbs and fat add up to more than 100 g per 100 g")
    atwater = sum(values[f] * k for f, k in _KCAL_PER_G.items())
    if abs(values["calories"] - atwater) > _KCAL_SLACK + _KCAL_SLACK_SHARE * max(
            values["calories"], atwater):
        raise Invalid("calories", f"inconsistent with the macros (about {atwater:.0f} kcal "
                                  "from 4 kcal/g protein and carbs, 9 kcal/g fat)")
    barcode = _text(body, "barcode", 14, required=False)
    if barcode is not None:
        try:
            barcode = normalize_barcode(barcode)
        except ValueError as e:
            raise Invalid("barcode", str(e)) from None
    return NewFood(name=_text(body, "name", NAME_LENGTH) or "",
                   brand=_text(body, "brand", NAME_LENGTH, required=False),
                   barcode=barcode, **values)


def _amount(body: dict[str, Any], field: str) -> Decimal:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(field, "required number, per 100 g")
    if not math.isfinite(value) or value < 0:
        raise Invalid(field, "must be a finite number, 0 or more")
    if value > (900 if field == "calories" else 100):
        raise Invalid(field, "more than 100 g holds" if field != "calories"
                      else "more than 900 kcal per 100 g (pure fat)")
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _text(body: dict[str, Any], field: str, max_len: int, *,
          required: bool = True) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Invalid(field, "required text")
    value = value.strip()
    if len(value) > max_len or "\x00" in value:
        raise Invalid(field, f"at most {max_len} characters, and no NUL")
    return value
