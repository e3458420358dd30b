"""The nutrition-label parser on text alone (ocr_worker/label_parser.py): US and EU
layouts, OCR's misreadings, and values left unread rather than guessed."""

from __future__ import annotations

import pytest

from ocr_worker.label_parser import MAX_TEXT, parse_label

US_LABEL = """Nutrition Facts
8 servings per container
Serving size 2/3 cup (55g)
Amount per serving
Calories 230
% Daily Value*
Total Fat 8g 10%
Saturated Fat 1g 5%
Trans Fat 0g
Cholesterol 0mg 0%
Sodium 160mg 7%
Total Carbohydrate 37g 13%
Dietary Fiber 4g 14%
Total Sugars 12g
Includes 10g Added Sugars 20%
Protein 3g
"""

EU_LABEL = """Nutrition information
Typical values per 100 g
Energy 1046 kJ / 250 kcal
Fat 12 g
of which saturates 3.1 g
Carbohydrate 30,5 g
of which sugars 5 g
Fibre 2 g
Protein 6.2 g
Salt 0.8 g
"""

EU_TWO_COLUMNS = """Nutrition declaration  per 100 g  per portion (30 g)
Energy 1500 kJ 358 kcal 450 kJ 107 kcal
Fat 10 g 3 g
of which saturates 2 g 0.6 g
Carbohydrate 60 g 18 g
of which sugars 20 g 6 g
Protein 8 g 2.4 g
Salt 0.5 g 0.15 g
"""


def _values(reading) -> tuple:
    return reading.calories, reading.protein, reading.carbs, reading.fat


def test_a_us_label_is_read_per_serving_with_its_weight():
    reading = parse_label(US_LABEL)
    assert _values(reading) == (230, 3, 37, 8)
    assert reading.serving_size_g == 55
    assert reading.per_100g == {"calories": 418.2, "protein": 5.5, "carbs": 67.3,
                                "fat": 14.5}
    assert reading.confidence == 1.0
    assert reading.raw_text == US_LABEL


def test_an_eu_label_per_100_g_only():
    reading = parse_label(EU_LABEL)
    assert _values(reading) == (250, 6.2, 30.5, 12)  # "of which" rows are not the row
    assert reading.serving_size_g is None
    assert reading.per_100g == {"calories": 250, "protein": 6.2, "carbs": 30.5, "fat": 12}


def test_an_eu_label_with_a_portion_column_is_read_per_portion():
    reading = parse_label(EU_TWO_COLUMNS)
    assert reading.serving_size_g == 30
    assert _values(reading) == (107, 2.4, 18, 3)
    assert reading.per_100g == {"calories": 358, "protein": 8, "carbs": 60, "fat": 10}


def test_energy_in_kj_alone_is_converted():
    reading = parse_label("per 100 g\nEnergy 1046 kJ\nFat 1 g\nCarbohydrate 2 g\n"
                          "Protein 3 g")
    assert reading.calories == 250  # 1046 / 4.184


def test_a_portion_stated_without_its_column_is_derived_from_100_g():
    reading = parse_label("Per 100g: Energy 400 kcal, Fat 20 g, Carbohydrate 50 g, "
                          "Protein 10 g. Portion (25 g)")
    assert reading.serving_size_g == 25
    assert _values(reading) == (100, 2.5, 12.5, 5)
    assert reading.per_100g == {"calories": 400, "protein": 10, "carbs": 50, "fat": 20}


@pytest.mark.parametrize("noisy, expected", [
    ("Calories 2OO\nTotal Fat 1Og\nTotal Carbohydrate 3Sg\nProtein B g", (200, 8, 35, 10)),
    ("Calories 1l0\nTotal Fat Og\nTotal Carbohydrate 2lg\nProtein S g", (110, 5, 21, 0)),
    ("Calories 150\nTotal Fat 5g\nTotal Carbohydrate 20g\nProtein 7g", (150, 7, 20, 5)),
])
def test_ocr_misreadings_of_digits_are_undone_in_amounts(noisy, expected):
    assert _values(parse_label(noisy)) == expected


def test_letters_of_words_are_left_alone():
    reading = parse_label("Serving size 1 bar (40g)\nCalories 190\nSodium 95mg\n"
                          "Total Fat 7g\nTotal Sugars 11g\nTotal Carbohydrate 29g\n"
                          "Protein 4g\nIron 8%")
    assert _values(reading) == (190, 4, 29, 7)


def test_calories_from_fat_is_neither_the_energy_nor_the_fat():
    reading = parse_label("Calories from Fat 70\nCalories 250\nTotal Fat 8g 12%\n"
                          "Protein 5g\nTotal Carbohydrate 30g")
    assert (reading.calories, reading.fat) == (250, 8)


def test_a_row_broken_across_lines_is_one_row():
    reading = parse_label("Serving size (30g)\nCalories\n120\nTotal\nFat\n3g\n5%\n"
                          "Total Carbohydrate\n20g 7%\nProtein\n2g")
    assert _values(reading) == (120, 2, 20, 3)


def test_dv_percentages_are_not_amounts():
    reading = parse_label("Calories 100\nTotal Fat 10% 2g\nProtein 4% 1g\n"
                          "Total Carbohydrate 6% 18g")
    assert _values(reading) == (100, 1, 18, 2)


def test_what_was_not_read_is_null_and_lowers_the_confidence():
    reading = parse_label("Calories 120\nProtein 4g\nSodium 20mg", ocr_confidence=0.8)
    assert _values(reading) == (120, 4, None, None)
    assert reading.serving_size_g is None
    assert reading.per_100g is None  # per an unknown serving: nothing per 100 g
    assert reading.confidence == pytest.approx(0.4)


@pytest.mark.parametrize("text", ["", "a photo of a cat", "%%%% 12 34 56 g g g",
                                  "Fat Fat Fat", "Calories\n\n\n", "kcal kJ 100 g per"])
def test_text_with_no_label_reads_nothing(text):
    reading = parse_label(text)
    assert reading.confidence <= 0.25
    assert reading.fat is None and reading.protein is None and reading.carbs is None


def test_implausible_amounts_are_not_taken():
    reading = parse_label("Calories 99999\nTotal Fat 5000g\nProtein 3g")
    assert (reading.calories, reading.fat, reading.protein) == (None, None, 3)


def test_the_text_read_is_bounded():
    reading = parse_label("Calories 100 " + "x" * (MAX_TEXT * 5))
    assert len(reading.raw_text) == MAX_TEXT
    assert reading.calories == 100


def test_the_result_has_the_contracts_fields():
    assert set(parse_label(US_LABEL).as_json()) == {
        "calories", "protein", "carbs", "fat", "serving_size_g", "per_100g", "raw_text",
        "confidence"}


def test_a_dv_column_before_the_grams_with_a_space_is_not_the_amount():
    reading = parse_label("Calories 100\nTotal Fat 10 % 8g\nProtein 5 g\n"
                          "Total Carbohydrate 3 % 9 g")
    assert (reading.fat, reading.protein, reading.carbs) == (8, 5, 9)


@pytest.mark.parametrize("energy", ["2029 kl / 485 kcal", "2029 k) 485 kcal",
                                    "2029 kI / 485 kcal", "2029kl 485 kcal"])
def test_kj_misread_by_ocr_is_still_kj_and_not_a_column_of_its_own(energy):
    # Seen from EasyOCR on the test photos (tests/labels/): "kJ" as "kl" or "k)".
    reading = parse_label("per 100 g per portion (125 g)\n"
                          f"Energy 1623 kJ / 388 kcal {energy}\nFat 12.1 g 15.1 g")
    assert (reading.calories, reading.per_100g["calories"]) == (485, 388)


def test_per_100_whose_g_was_lost_is_still_per_100_g():
    reading = parse_label("Nutrition information per 100 per portion (40 g)\n"
                          "Energy 460 kJ 110 kcal 184 kJ 44 kcal\nFat 4 g 1.6 g")
    assert (reading.calories, reading.fat, reading.serving_size_g) == (44, 1.6, 40)
    assert reading.per_100g == {"calories": 110, "fat": 4, "protein": None, "carbs": None}


@pytest.mark.parametrize("text", ["Energy per 100 kcal 400", "Calories 230 per 100 5 g"])
def test_a_100_that_is_an_amount_is_not_per_100_g(text):
    assert parse_label(text).per_100g is None


def test_a_kcal_beyond_belief_beside_its_kj_is_the_kjs():
    # "/ 273" read as "13273": the kJ says 273.
    reading = parse_label("per 100 g\nEnergy 1142 kJ 13273 kcal\nFat 16 g")
    assert reading.calories == 273


def test_a_portion_column_whose_weight_was_not_read_still_gives_the_portions_values():
    # "(30 g)" read as "(30 9)": the portion's column is still the values.
    reading = parse_label("Nutrition information per 100 g per portion (30 9)\n"
                          "Energy 820 kJ / 196 kcal 246 kJ / 59 kcal\nFat 19.5 g 5.8 g\n"
                          "Carbohydrate 3.1 g 0.9 g\nProtein 2 g")
    assert (reading.calories, reading.fat, reading.carbs) == (59, 5.8, 0.9)
    assert reading.protein is None  # no portion amount, no weight: nothing derived
    assert reading.serving_size_g is None
    assert reading.per_100g == {"calories": 196, "protein": 2, "carbs": 3.1, "fat": 19.5}


def test_an_l_before_a_unit_is_a_1():
    assert parse_label("Protein Lg\nTotal Fat 2g").protein == 1


@pytest.mark.parametrize(("row", "expected"), [
    ("Total Carbohydrate 229 8%", 22), ("Total Carbohydrate 139", 13),
    ("Total Carbohydrate 99", 99), ("Total Carbohydrate 120", 120),
    ("Total Carbohydrate 22.9", 22.9), ("Total Carbohydrate 229g", 229)])
def test_a_g_read_as_9_after_a_whole_number_of_100_or_more_is_dropped(row, expected):
    assert parse_label(row).carbs == expected


def test_a_g_read_as_9_is_found_by_the_energy():
    # 4 x 3 + 4 x 40 + 9 x 10 = 262: "39" is 3 g; 39 g would make 406 kcal.
    reading = parse_label("Calories 260\nTotal Fat 10g\nTotal Carbohydrate 40g\n"
                          "Protein 39")
    assert reading.protein == 3


def test_an_amount_that_agrees_with_the_energy_is_left_as_read():
    # 4 x 29 + 4 x 40 + 9 x 10 = 366: "29" is right, though it ends in 9.
    reading = parse_label("Calories 366\nTotal Fat 10g\nTotal Carbohydrate 40g\n"
                          "Protein 29")
    assert reading.protein == 29


def test_ocrs_stray_underline_does_not_hide_a_row_name():
    assert parse_label("per 100 g\nEnergy_ 1787 kJ 427 kcal\nFat 23.2 g").calories == 427


def test_a_lone_9_after_a_decimal_amount_is_its_g():
    reading = parse_label("Nutrition information per 100 g per portion (125 g)\n"
                          "Fat 15.1 9 18.9 g\nProtein 15.7 9 19.6 g\nCarbohydrate 1.6 9")
    assert (reading.fat, reading.protein) == (18.9, 19.6)
    assert reading.per_100g["fat"] == 15.1 and reading.per_100g["protein"] == 15.7
    assert reading.per_100g["carbs"] == 1.6


def test_per_100_g_with_its_g_read_as_9_and_kj_read_as_k_l():
    reading = parse_label("Nutrition information per 100 9 per portion (30 g)\n"
                          "Energy 1874 k L 448 kcal 562 kL/ 134 kcal\nFat 28.4 g 8.5 g")
    assert (reading.calories, reading.fat) == (134, 8.5)
    assert reading.per_100g["calories"] == 448


def test_a_row_name_glued_to_its_amount():
    assert parse_label("Calories 599\nProtein59g").protein == 59
