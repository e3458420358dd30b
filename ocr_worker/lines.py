"""OCR's text boxes to a label's lines in reading order (docs/ocr_accuracy.md).

EasyOCR returns boxes in detection order, and a row's name and its amounts are often
separate boxes ("Total Fat 8g" | "10%"; "Protein" | "6.2 g" | "1.9 g"). The parser
needs each row on one line, top to bottom, left to right. A label photographed at an
angle has rows that slope: the boxes are turned back by the skew first, so that a row
is a horizontal band again. Pure geometry: no OCR here, tested on made-up boxes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Point = tuple[float, float]
# Two boxes share a line when their vertical spans overlap by at least this share of
# the smaller one's height: rows of a label are about one line height apart, so half a
# height keeps neighbours apart and still joins boxes of one row drawn in bold and not.
SAME_LINE_OVERLAP = 0.5
# Beyond this a box edge is not taken as evidence of the skew (a rotated word, noise).
MAX_SKEW_DEGREES = 10.0


@dataclass(frozen=True, slots=True)
class TextBox:
    """One of OCR's boxes: its four corners (clockwise from top left, as EasyOCR gives
    them), its text and the OCR's confidence in it (0..1)."""

    corners: tuple[Point, Point, Point, Point]
    text: str
    confidence: float

    @classmethod
    def from_easyocr(cls, found: tuple[Sequence[Sequence[float]], str, float]) -> TextBox:
        points, text, confidence = found
        p0, p1, p2, p3 = ((float(x), float(y)) for x, y in points)
        return cls((p0, p1, p2, p3), text, float(confidence))

    @property
    def width(self) -> float:
        (x0, y0), (x1, y1) = self.corners[0], self.corners[1]
        return math.hypot(x1 - x0, y1 - y0)


@dataclass(slots=True)
class _Placed:
    """A box turned back by the skew: its vertical span and left edge."""

    top: float
    bottom: float
    left: float
    text: str

    @property
    def height(self) -> float:
        return self.bottom - self.top


@dataclass(slots=True)
class _Line:
    boxes: list[_Placed] = field(default_factory=list)

    @property
    def top(self) -> float:
        return statistics.median(b.top for b in self.boxes)

    @property
    def bottom(self) -> float:
        return statistics.median(b.bottom for b in self.boxes)

    def overlap(self, box: _Placed) -> float:
        """The share of the smaller height that ``box`` and this line have in common."""
        shared = min(self.bottom, box.bottom) - max(self.top, box.top)
        smaller = min(self.bottom - self.top, box.height)
        return shared / smaller if smaller > 0 else 0.0

    def text(self) -> str:
        return " ".join(b.text for b in sorted(self.boxes, key=lambda b: b.left))


def skew_degrees(boxes: Iterable[TextBox]) -> float:
    """The skew the boxes' top edges show, in degrees (positive: rows fall to the
    right), the median weighted by width: long boxes say more than short ones. 0 when
    no box is tilted (EasyOCR gives axis-aligned boxes for text within about 5.7°, so
    the image itself is straightened before OCR; this catches what it returns turned)."""
    weighted: list[tuple[float, float]] = []
    for box in boxes:
        (x0, y0), (x1, y1) = box.corners[0], box.corners[1]
        if x1 - x0 <= 0:
            continue
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        if abs(angle) <= MAX_SKEW_DEGREES:
            weighted.append((angle, box.width))
    return _weighted_median(weighted)


def _weighted_median(pairs: list[tuple[float, float]]) -> float:
    if not pairs:
        return 0.0
    pairs.sort()
    half, seen = sum(w for _, w in pairs) / 2, 0.0
    for value, weight in pairs:
        seen += weight
        if seen >= half:
            return value
    return pairs[-1][0]


def rebuild_lines(boxes: Sequence[TextBox], skew: float | None = None) -> list[str]:
    """The boxes' text as lines in reading order. ``skew`` in degrees (as
    ``skew_degrees`` measures it); measured from the boxes when None."""
    angle = math.radians(skew_degrees(boxes) if skew is None else skew)
    placed = sorted((_place(box, angle) for box in boxes if box.text.strip()),
                    key=lambda b: (b.top + b.bottom) / 2)
    lines: list[_Line] = []
    for box in placed:
        # Sorted by centre, a box belongs to one of the last lines if to any.
        best = max(lines[-3:], key=lambda line: line.overlap(box), default=None)
        if best is not None and best.overlap(box) >= SAME_LINE_OVERLAP:
            best.boxes.append(box)
        else:
            lines.append(_Line([box]))
    return [line.text() for line in lines]


def _place(box: TextBox, angle: float) -> _Placed:
    """``box`` turned by ``-angle`` about the origin: a sloping row becomes level."""
    cos, sin = math.cos(angle), math.sin(angle)
    turned = [(x * cos + y * sin, -x * sin + y * cos) for x, y in box.corners]
    ys = [y for _, y in turned]
    return _Placed(min(ys), max(ys), min(x for x, _ in turned), box.text.strip())


def mean_confidence(boxes: Sequence[TextBox]) -> float | None:
    """The OCR's mean confidence over the boxes; None when there are none."""
    return statistics.fmean(b.confidence for b in boxes) if boxes else None
