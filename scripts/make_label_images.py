#!/usr/bin/env python3
"""Generate the nutrition-label test images, tests/labels/*.jpg|png, and their ground
truth, tests/labels/truth.json (docs/ocr_accuracy.md, "The test set").

    .venv/bin/python scripts/make_label_images.py [--count 48] [--out tests/labels]

Deterministic: image i is drawn from ``random.Random(SEED + i)`` alone, so the same
Pillow and fonts give the same files. The images are committed (CI machines may lack
the DejaVu fonts); run this again only to change the set.

What varies: the font (DejaVu Sans, Serif, Condensed, Mono, bold or not) and its size,
the layout (US "Nutrition Facts" per serving; EU per 100 g, with or without a portion
column, kJ and kcal), rotation within ±5°, a background around the label, noise, blur,
and JPEG quality (or PNG). US labels carry the decoys OCR meets on real ones: "Calories
from Fat", a %DV column, and the "2,000 calories a day" footnote.

The truth follows CONTRACT.md section 7: the nutrients per serving when the label states
a serving (its printed column), else per 100 g; ``serving_size_g`` the serving's grams;
``per_100g`` per 100 g where derivable (a US label's is derived as the parser derives it:
× 100 / serving, one decimal).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SEED = 2026_12_07
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "labels"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans", "DejaVuSerif", "DejaVuSansCondensed", "DejaVuSansMono",
         "DejaVuSerifCondensed")
INK = (20, 20, 20)


@dataclass(frozen=True)
class Row:
    """One printed row: its cells left to right (the first is the name), bold or not,
    and the rule drawn under it (0: none)."""

    cells: tuple[str, ...]
    bold: bool = False
    rule: int = 0


@dataclass(frozen=True)
class Label:
    rows: list[Row]
    truth: dict[str, object]
    layout: str


def _fmt(value: float) -> str:
    """A gram amount as labels print it: "8", "0.5", "12.3"."""
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _macros(rng: random.Random, grams: float, decimals: int) -> tuple[float, float, float]:
    """Protein, carbs and fat in ``grams`` of a food that is at most 90 % of them."""
    shares = [rng.uniform(0, 1) for _ in range(3)]
    scale = rng.uniform(0.2, 0.9) * grams / sum(shares)
    protein, carbs, fat = (round(share * scale, decimals) for share in shares)
    return float(protein), float(carbs), float(fat)


def us_label(rng: random.Random) -> Label:
    serving = rng.choice((28, 30, 40, 55, 85, 100, 113, 125, 150))
    protein, carbs, fat = _macros(rng, serving, decimals=0)
    calories = round(4 * protein + 4 * carbs + 9 * fat)
    measure = rng.choice(("1 cup", "2/3 cup", "1 bar", "3 pieces", "1/2 cup", "1 package"))
    sugars = round(carbs * rng.uniform(0.1, 0.6))
    rows = [Row(("Nutrition Facts",), bold=True, rule=1),
            Row((f"{rng.randint(2, 12)} servings per container",)),
            Row((f"Serving size {measure} ({serving}g)",), bold=True, rule=3),
            Row(("Amount per serving",)),
            Row(("Calories", str(calories)), bold=True, rule=2)]
    if rng.random() < 0.5:
        rows.append(Row(("Calories from Fat", str(round(9 * fat)))))
    rows += [Row(("% Daily Value*",)),
             Row((f"Total Fat {_fmt(fat)}g", f"{round(fat / 78 * 100)}%"), bold=True),
             Row((f"Saturated Fat {_fmt(round(fat * 0.3))}g", f"{round(fat * 0.3 / 20 * 100)}%")),
             Row(("Trans Fat 0g",)),
             Row((f"Cholesterol {rng.randint(0, 60)}mg", f"{rng.randint(0, 20)}%"), bold=True),
             Row((f"Sodium {rng.randint(5, 800)}mg", f"{rng.randint(0, 35)}%"), bold=True),
             Row((f"Total Carbohydrate {_fmt(carbs)}g", f"{round(carbs / 275 * 100)}%"),
                 bold=True),
             Row((f"Dietary Fiber {rng.randint(0, 9)}g", f"{rng.randint(0, 30)}%")),
             Row((f"Total Sugars {sugars}g",)),
             Row((f"Protein {_fmt(protein)}g",), bold=True, rule=3),
             Row(("* The % Daily Value (DV) tells you how much a nutrient in",)),
             Row(("a serving of food contributes to a daily diet. 2,000 calories",)),
             Row(("a day is used for general nutrition advice.",))]
    values = {"calories": float(calories), "protein": protein, "carbs": carbs, "fat": fat}
    per_100 = {k: round(v * 100 / serving, 1) for k, v in values.items()}
    return Label(rows, {**values, "serving_size_g": float(serving), "per_100g": per_100},
                 "us")


def eu_label(rng: random.Random, portion: bool) -> Label:
    protein, carbs, fat = _macros(rng, 100, decimals=1)
    kcal = round(4 * protein + 4 * carbs + 9 * fat)
    kj = round(kcal * 4.184)
    grams = rng.choice((25, 30, 40, 45, 50, 125, 150))
    per_100 = {"calories": float(kcal), "protein": protein, "carbs": carbs, "fat": fat}
    part = {"calories": float(round(kcal * grams / 100)),
            **{k: round(per_100[k] * grams / 100, 1) for k in ("protein", "carbs", "fat")}}
    head = ("Nutrition information", "per 100 g") + ((f"per portion ({grams} g)",) if portion
                                                     else ())
    sugars = round(carbs * rng.uniform(0.1, 0.6), 1)

    def row(name: str, key: str | None, per100: float, bold: bool = False) -> Row:
        cells = [f"{_fmt(per100)} g"]
        if portion:
            cells.append(f"{_fmt(part[key] if key else round(per100 * grams / 100, 1))} g")
        return Row((name, *cells), bold=bold)

    energy = [f"{kj} kJ / {kcal} kcal"]
    if portion:
        energy.append(f"{round(kj * grams / 100)} kJ / {part['calories']:g} kcal")
    rows = [Row(head, bold=True, rule=2),
            Row(("Energy", *energy), bold=True, rule=1),
            row("Fat", "fat", fat, bold=True),
            row("of which saturates", None, round(fat * 0.4, 1)),
            row("Carbohydrate", "carbs", carbs, bold=True),
            row("of which sugars", None, sugars),
            row("Fibre", None, round(rng.uniform(0, 8), 1)),
            row("Protein", "protein", protein, bold=True),
            Row(("Salt", f"{_fmt(round(rng.uniform(0, 2.5), 2))} g"), rule=2)]
    values = part if portion else per_100
    truth = {**values, "serving_size_g": float(grams) if portion else None, "per_100g": per_100}
    return Label(rows, truth, "eu-portion" if portion else "eu")


def _font(name: str, bold: bool, size: int) -> ImageFont.FreeTypeFont:
    style = "-Bold" if bold else ""
    return ImageFont.truetype(str(FONT_DIR / f"{name}{style}.ttf"), size)


def render(label: Label, rng: random.Random) -> Image.Image:
    """The label drawn on a white card: names left, amounts in columns."""
    family, size = rng.choice(FONTS), rng.randint(15, 26)
    regular, bold = _font(family, False, size), _font(family, True, size)
    gap, pad, line = size * 2, size, int(size * 1.45)
    widths = _column_widths(label.rows, regular, bold)
    columns_x = [pad]
    for width in widths[:-1]:
        columns_x.append(columns_x[-1] + width + gap)
    card_w = max(columns_x[-1] + widths[-1], pad + _lone_width(label.rows, regular, bold)) + pad
    card_h = pad * 2 + line * len(label.rows) + sum(r.rule * 3 for r in label.rows)
    card = Image.new("RGB", (card_w, card_h), "white")
    draw = ImageDraw.Draw(card)
    y = pad
    for row in label.rows:
        font = bold if row.bold else regular
        for x, cell in zip(columns_x, row.cells, strict=False):
            draw.text((x, y), cell, font=font, fill=INK)
        y += line
        if row.rule:
            draw.rectangle((pad, y - line // 6, card_w - pad, y - line // 6 + row.rule * 2),
                           fill=INK)
            y += row.rule * 3
    return card


def _column_widths(rows: list[Row], regular: ImageFont.FreeTypeFont,
                   bold: ImageFont.FreeTypeFont) -> list[int]:
    """Each column's width. A lone cell (a title, the footnote) spans the table: it
    widens the card, not column 0."""
    columns = max(len(r.cells) for r in rows)
    widths = [0] * columns
    for row in rows:
        if len(row.cells) == 1 and columns > 1:
            continue
        font = bold if row.bold else regular
        for i, cell in enumerate(row.cells):
            widths[i] = max(widths[i], int(font.getlength(cell)))
    return widths


def _lone_width(rows: list[Row], regular: ImageFont.FreeTypeFont,
                bold: ImageFont.FreeTypeFont) -> int:
    return max((int((bold if r.bold else regular).getlength(r.cells[0]))
                for r in rows if len(r.cells) == 1), default=0)


def photograph(card: Image.Image, rng: random.Random, png: bool) -> Image.Image:
    """The card as a phone might see it: on a background, turned, blurred, noisy (a PNG
    has no noise: noise would make it ten times larger)."""
    margin = rng.randint(10, 60)
    shade = tuple(rng.randint(90, 200) for _ in range(3))
    scene = Image.new("RGB", (card.width + 2 * margin, card.height + 2 * margin), shade)
    scene.paste(card, (margin, margin))
    angle = rng.uniform(-5, 5)
    scene = scene.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                         fillcolor=shade)
    blur = rng.choice((0, 0, 0.4, 0.6, 0.8))
    if blur:
        scene = scene.filter(ImageFilter.GaussianBlur(blur))
    noise = rng.choice((0, 6, 12, 18))
    if noise and not png:
        grain = Image.effect_noise(scene.size, noise).convert("RGB")
        scene = Image.blend(scene, grain, 0.12)
    return scene


def make(index: int, out: Path) -> tuple[Path, dict[str, object]]:
    """Image ``index``, saved under ``out``, and its truth."""
    rng = random.Random(SEED + index)  # noqa: S311 (test data, seeded on purpose)
    kind = index % 3  # an even share of each layout
    label = us_label(rng) if kind == 0 else eu_label(rng, portion=kind == 2)
    png = rng.random() < 0.2
    image = photograph(render(label, rng), rng, png)
    if png:  # grey and few shades: a PNG of a few tens of kB
        path = out / f"label_{index:03d}.png"
        image.convert("L").quantize(16).save(path, optimize=True)
    else:
        path = out / f"label_{index:03d}.jpg"
        image.save(path, quality=rng.choice((40, 55, 70, 85)), optimize=True)
    return path, {**label.truth, "layout": label.layout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in [*args.out.glob("label_*.jpg"), *args.out.glob("label_*.png")]:
        old.unlink()
    truth: dict[str, dict[str, object]] = {}
    for i in range(args.count):
        path, values = make(i, args.out)
        truth[path.name] = values
    (args.out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{args.count} images in {args.out}, {total / 1e6:.2f} MB with truth.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
