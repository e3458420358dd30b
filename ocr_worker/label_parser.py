"""Nutrition-label text, as OCR reads it, to the values of the contract's ``result``
(CONTRACT.md section 7; docs/ocr.md, "The parser").

The text is a label's lines in reading order. The parser looks for each nutrient's row
name and takes the amounts that follow it, before the next row name, so a row broken
across lines reads like one on a single line. It reads US labels (values per serving,
``Serving size 2/3 cup (55g)``, ``Calories 230``, ``%DV`` columns) and EU ones
(``per 100 g``, ``Energy 1046 kJ / 250 kcal``, ``of which sugars``, a per-portion
column). A value that was not read stays None: nothing is guessed. Pure text in,
values out: no OCR here, so it is tested on text alone.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

MAX_TEXT = 20_000  # characters read; a label holds far fewer
KJ_PER_KCAL = 4.184
NUTRIENTS = ("calories", "protein", "carbs", "fat")
# Bounds on the work a text can ask for: a row name tried this many times at most, and
# this many numbers read after it (a label's row has a few columns).
ROW_TRIES = 20
ROW_NUMBERS = 12

# OCR's usual misreadings of digits, undone only inside what looks like an amount.
_DIGIT_FOR = str.maketrans({"O": "0", "o": "0", "D": "0", "l": "1", "I": "1", "|": "1",
                            "L": "1", "S": "5", "s": "5", "B": "8"})
_UNIT = r"(?:mg|g|kcal|kj|cal|%)"
# A run of digits and look-alikes, standing alone or glued to a unit: "1Og", "2OO",
# "B g". Not part of a word ("Sodium", "Sugars"): no letter may touch it but a unit's.
_AMOUNT_LIKE = re.compile(
    r"(?<![A-Za-z0-9])([0-9OoDlI|SsB][0-9OoDlI|SsB]*(?:[.,][0-9OoDlI|SsB]+)?)"
    r"(?=\s?" + _UNIT + r"?(?![A-Za-z]))", re.IGNORECASE)

# An amount and its unit; a percentage only with its sign attached: in "Calories 230
# % Daily Value" the sign heads the next column.
_QUANTITY = re.compile(r"(\d+(?:[.,]\d+)?)(?:\s?(mg|g|kcal|kj|cal)|(%))?(?![a-z])")
_ROWS = {
    # The energy row: "Calories", "Energy", "Energie". "Calories from Fat" is removed
    # first: it is neither the energy nor the fat.
    "calories": re.compile(r"\b(?:calories|energy|energie|kcal)\b"),
    "protein": re.compile(r"\bproteins?\b"),
    "carbs": re.compile(r"\b(?:total\s+)?(?:carbohydrates?|carbs?|carb\.)"),
    "fat": re.compile(r"\b(?:total\s+)?fats?\b"),
}
# Rows that name a nutrient but are another: "Saturated Fat", "of which saturates".
_NOT_THE_ROW = re.compile(r"(?:saturated|trans|unsaturated|polyunsaturated|"
                          r"monounsaturated|from)\s+$")
# Any row name, so that a row's amounts stop where the next row starts.
_ANY_ROW = re.compile(
    r"\b(?:calories|energy|energie|protein|carbohydrates?|carbs?|fats?|saturate[sd]?|"
    r"trans|cholesterol|sodium|salt|sugars?|fibre|fiber|potassium|vitamin|calcium|iron|"
    r"of which|includes|portion|serving)\b")
_CALORIES_FROM_FAT = re.compile(r"calories\s+from\s+fat\s*\d*")
# "per 100 g", "/100g"; and "per 100" whose unit OCR lost, when no amount or other
# unit follows it ("per 100 per portion", not "per 100 kcal").
_PER_100 = re.compile(r"\b(?:per|pro|par|/)\s*100\s?(?:g|ml|9(?![.,]?\d))\b"
                      r"|\b(?:per|pro|par)\s+100\b(?!\s?[.,]?\d|\s?(?:kcal|kj|cal|mg|%))")
# OCR's readings of "kJ" after an amount: "kl", "k)", "kI", "k1", "k]", "k|".
_KJ_MISREAD = re.compile(r"(?<=\d)(\s?)k\s?[jli1)\]|](?![a-z])")
# A row name glued to its amount: "Protein59g".
_NAME_GLUED = re.compile(r"\b(calories|energy|protein|fat|carbohydrate)(?=\d)")
# A lone 9 right after a decimal amount is its "g" misread: "Fat 15.1 9 18.9 g".
_G_AFTER_DECIMAL = re.compile(r"(\d[.,]\d+)\s9(?![\d.,]|\s?(?:mg|g|kcal|kj|cal|%))")
# kcal per gram (the Atwater factors), for the energy check of misread amounts.
_ATWATER = {"protein": 4.0, "carbs": 4.0, "fat": 9.0}
# A row's first amount bare, whole and ending in 9 or 8: maybe a "g" misread.
_BARE_ENDING_IN_G = re.compile(r"\s*(\d+[98])(?![\d.,]|\s?(?:mg|g|kcal|kj|cal|%))")
# A column headed per portion or per serving, beside a per 100 g one.
_PORTION_COLUMN = re.compile(r"\bper\s+(?:portion|serving)\b")
_SERVING = re.compile(
    r"(?:serving\s+size|per\s+serving|portion|per\s+portion)[^\n]{0,40}?\(?\s*"
    r"(\d+(?:[.,]\d+)?)\s?(g|ml)\b")


@dataclass(frozen=True, slots=True)
class LabelReading:
    """The contract's ``result``: nutrients per serving when the label states one, else
    per 100 g; ``per_100g`` whenever it can be derived."""

    calories: float | None
    protein: float | None
    carbs: float | None
    fat: float | None
    serving_size_g: float | None
    per_100g: dict[str, float | None] | None
    raw_text: str
    confidence: float

    def as_json(self) -> dict[str, Any]:
        return {"calories": self.calories, "protein": self.protein, "carbs": self.carbs,
                "fat": self.fat, "serving_size_g": self.serving_size_g,
                "per_100g": self.per_100g, "raw_text": self.raw_text,
                "confidence": self.confidence}


@dataclass(slots=True)
class _Columns:
    """Each nutrient's amounts in the order read: one per column of the label."""

    amounts: dict[str, list[float]] = field(default_factory=dict)
    # A macronutrient's first amount as it would be with a trailing 9 or 8 taken for
    # the "g" OCR misread ("Protein 39" for 3g); the energy decides (_energy_check).
    without_g: dict[str, float] = field(default_factory=dict)

    def first(self, nutrient: str, column: int = 0) -> float | None:
        found = self.amounts.get(nutrient, [])
        return found[column] if column < len(found) else None


def parse_label(text: str, ocr_confidence: float | None = None) -> LabelReading:
    """The values ``text`` states. ``ocr_confidence``, the OCR's mean confidence for the
    text (0..1), scales the reading's: the share of the four nutrients read."""
    raw = text[:MAX_TEXT]
    normal = _normalise(raw)
    serving = _serving_g(normal)
    columns = _read_rows(normal)
    per_100_first = _PER_100.search(normal) is not None
    portion_column = _PORTION_COLUMN.search(normal) is not None
    values, per_100g = _values(columns, serving, per_100_first, portion_column)
    read = sum(values[n] is not None for n in NUTRIENTS)
    confidence = read / len(NUTRIENTS) * (1.0 if ocr_confidence is None
                                          else max(0.0, min(1.0, ocr_confidence)))
    return LabelReading(**values, serving_size_g=serving, per_100g=per_100g, raw_text=raw,
                        confidence=round(confidence, 3))


def _normalise(text: str) -> str:
    # "_" is OCR's stray underline ("Energy_ 1787 kJ"): a space, or no row name
    # would end at it.
    fixed = _AMOUNT_LIKE.sub(_digits, text.replace("_", " "))
    fixed = _G_AFTER_DECIMAL.sub(r"\1 g", fixed)
    lowered = " ".join(fixed.lower().split())  # rows broken across lines: one line
    lowered = _NAME_GLUED.sub(r"\1 ", _KJ_MISREAD.sub(r"\1kj", lowered))
    return _CALORIES_FROM_FAT.sub(" ", lowered)


def _digits(match: re.Match[str]) -> str:
    token = match.group(1)
    if not any(c.isdigit() for c in token) and not _unit_follows(match):
        return token  # a lone "S" or "B" is a letter, unless a unit follows it
    return token.translate(_DIGIT_FOR)


def _unit_follows(match: re.Match[str]) -> bool:
    rest = match.string[match.end():match.end() + 5].lower().lstrip()
    return rest.startswith(("g", "mg", "kcal", "kj", "%"))


def _serving_g(text: str) -> float | None:
    found = _SERVING.search(text)
    if found is None or found.group(2) != "g":
        return None
    grams = _number(found.group(1))
    return grams if 0 < grams <= 5000 else None


def _read_rows(text: str) -> _Columns:
    columns = _Columns()
    for nutrient, row in _ROWS.items():
        for match in itertools.islice(row.finditer(text), ROW_TRIES):
            if _NOT_THE_ROW.search(text[max(0, match.start() - 20):match.start()]):
                continue
            cell = text[match.end():_row_end(text, match.end())]
            amounts = _amounts(nutrient, cell)
            if amounts:
                columns.amounts[nutrient] = amounts
                bare = _BARE_ENDING_IN_G.match(cell)
                if nutrient != "calories" and bare and _number(bare[1]) == amounts[0]:
                    columns.without_g[nutrient] = _number(bare[1][:-1])
                break
    _energy_check(columns)
    return columns


def _energy_check(columns: _Columns) -> None:
    """Of the readings of "Protein 39" (39 g, or 3 g with its "g" read as 9), keep the
    one that agrees with the energy: 4 kcal per g of protein and of carbohydrate, 9 per
    g of fat. Only when the amounts as read are off by more than 15% and the other
    reading is within it: otherwise the amounts stay as read."""
    kcal = columns.first("calories")
    macros = [columns.first(n) for n in _ATWATER]
    if not columns.without_g or not kcal or any(m is None for m in macros):
        return

    def gap(values: dict[str, float]) -> float:
        return abs(sum(_ATWATER[n] * v for n, v in values.items()) - kcal) / kcal

    read = {n: columns.amounts[n][0] for n in _ATWATER}
    options = [read]
    for nutrient, other in columns.without_g.items():
        options += [{**option, nutrient: other} for option in options]
    best = min(options, key=gap)
    if gap(read) > 0.15 and gap(best) <= 0.15:
        for nutrient, value in best.items():
            columns.amounts[nutrient][0] = value


def _row_end(text: str, start: int) -> int:
    following = _ANY_ROW.search(text, start)
    return following.start() if following else len(text)


def _amounts(nutrient: str, cell: str) -> list[float]:
    """The amounts of one row, one per column: grams for a macronutrient, kcal for the
    energy. Percentages (%DV) are left out."""
    quantities = [(_number(m[1]), m[2] or "", m[1])
                  for m in itertools.islice(_QUANTITY.finditer(cell), ROW_NUMBERS)
                  if not m[3]]
    if nutrient == "calories":
        found = _kcal([(v, unit) for v, unit, _ in quantities])
    else:
        # Grams where the row gives them ("Total Fat 10 % 8g": 8); a bare number (the
        # "g" lost to OCR) only where it gives none.
        grams = [v for v, unit, _ in quantities if unit == "g"]
        found = grams or [_g_read_as_9(text) for _, unit, text in quantities
                          if unit == ""][:1]
    return [v for v in found if _plausible(nutrient, v)]


def _g_read_as_9(text: str) -> float:
    """A bare whole number of 100 or more that ends in 9, where grams were due, is OCR's
    reading of "<n>g" ("Total Carbohydrate 229" for 22g): no food has 100 g of one
    macronutrient in 100 g, and servings of over 100 g of one are rare."""
    value = _number(text)
    if value >= 100 and text.isdigit() and text.endswith("9"):
        return _number(text[:-1])
    return value


def _kcal(quantities: list[tuple[float, str]]) -> list[float]:
    """kcal per column: a column's kcal where it gives them, else its kJ converted."""
    found: list[float] = []
    pending_kj: float | None = None
    for value, unit in quantities:
        if unit == "kj":
            if pending_kj is not None:
                found.append(round(pending_kj / KJ_PER_KCAL))
            pending_kj = value
        elif unit != "mg":
            # A kcal beyond belief beside its kJ ("1142 kJ / 273 kcal" read as "1142 kJ
            # 13273 kcal": the slash taken for a 1) is the kJ's, converted.
            if pending_kj is not None and not _plausible("calories", value):
                value = round(pending_kj / KJ_PER_KCAL)
            found.append(value)
            pending_kj = None
    if pending_kj is not None:
        found.append(round(pending_kj / KJ_PER_KCAL))
    return found


def _plausible(nutrient: str, value: float) -> bool:
    return 0 <= value <= (5000 if nutrient == "calories" else 1000)


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def _values(columns: _Columns, serving: float | None, per_100_first: bool,
            portion_column: bool = False,
            ) -> tuple[dict[str, float | None], dict[str, float | None] | None]:
    if per_100_first:  # EU: the first column per 100 g, a second one per portion
        per_100 = {n: columns.first(n) for n in NUTRIENTS}
        if serving is None and portion_column:
            # A portion column whose weight OCR could not read ("(30 9)"): the values
            # are still the portion's, as printed; none is derived without the weight.
            return {n: columns.first(n, 1) for n in NUTRIENTS}, per_100
        if serving is None:
            return per_100, per_100
        return {n: _per_serving(columns, n, serving) for n in NUTRIENTS}, per_100
    per_serving = {n: columns.first(n) for n in NUTRIENTS}
    if serving is None:  # values with no basis stated: US style, per an unknown serving
        return per_serving, None
    return per_serving, {n: _scaled(v, 100 / serving) for n, v in per_serving.items()}


def _per_serving(columns: _Columns, nutrient: str, serving: float) -> float | None:
    read = columns.first(nutrient, 1)
    return read if read is not None else _scaled(columns.first(nutrient), serving / 100)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else round(value * factor, 1)
