"""The label reader's cost and accuracy per configuration: time per image (median and
p90, wall and CPU), a worker's peak RSS, and field accuracy on tests/labels/
(docs/ocr_accuracy.md).

Each configuration runs in a fresh Python process, as a worker would: import, load the
reader once, read every image in turn. That process reports its own figures; its peak
RSS (``ru_maxrss``) covers the load and every read. The first read is left out of the
times (torch's first call warms up its kernels) but its memory counts.

    .venv/bin/python bench/ocr.py [--configs baseline,threads-1,...] [--images N]
                                  [--scale 1.0]

``--scale 3`` enlarges every image 3x before reading, to see what the knobs do to a
phone's 12-megapixel photo rather than to the test set's small images. The table goes
to stdout; ``--json FILE`` keeps every run's raw figures.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "tests" / "labels"
NUTRIENTS = ("calories", "protein", "carbs", "fat")
# The accuracy test's tolerance (tests/test_ocr_accuracy.py): 1 kcal, 0.1 g.
TOLERANCE = {"calories": 1.0, "protein": 0.1, "carbs": 0.1, "fat": 0.1}
# EasyOCR as it comes (its default canvas, full size, no cropping) with our lines and
# parser: what the knobs are measured against. Straightening stays on: without it the
# rows of a turned label mix (its own row shows what that costs).
BASELINE: dict[str, Any] = {"threads": 2, "max_side": None, "canvas_size": 2560,
                            "crop_to_label": False, "deskew": True, "quantize": True}
CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "threads-1": {"threads": 1},
    "no-quantize": {"quantize": False},
    "crop": {"crop_to_label": True},
    "canvas-960": {"canvas_size": 960},
    "canvas-640": {"canvas_size": 640},
    "default": {"default": True},  # LabelReader() as the worker makes it
}

def child(config: dict[str, Any], names: list[str], scale: float) -> dict[str, Any]:
    """Run in the fresh process: load, read ``names``, report."""
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    from ocr_worker.reader import LabelReader

    kwargs = {} if config.get("default") else {**BASELINE, **config}
    with LabelReader(**kwargs) as reader:
        load = time.perf_counter() - t0
        wall, cpu, readings = [], [], {}
        for name in names:
            data = _scaled((LABELS / name).read_bytes(), scale)
            w0, c0 = time.perf_counter(), time.process_time()
            reading = reader.read(data)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
            readings[name] = {n: getattr(reading, n) for n in NUTRIENTS}
    return {"load_s": load, "wall": wall, "cpu": cpu, "readings": readings,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _scaled(data: bytes, scale: float) -> bytes:
    if scale == 1.0:
        return data
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    size = (round(image.width * scale), round(image.height * scale))
    out = io.BytesIO()
    image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def run_config(name: str, names: list[str], scale: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(CONFIGS[name]),
           "--names", ",".join(names), "--scale", str(scale)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def accuracy(readings: dict[str, dict[str, float | None]], truth: dict[str, Any],
             ) -> dict[str, float]:
    def right(value: float | None, want: float | None, tolerance: float) -> bool:
        if want is None:
            return value is None
        return value is not None and abs(value - want) <= tolerance + 1e-9

    return {n: statistics.fmean(right(r[n], truth[name][n], TOLERANCE[n])
                                for name, r in readings.items()) for n in NUTRIENTS}


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def report(results: dict[str, dict[str, Any]], truth: dict[str, Any]) -> None:
    print("| configuration | wall p50 s | wall p90 s | CPU p50 s | load s | peak RSS MB "
          "| calories | protein | carbs | fat |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        wall, cpu = res["wall"][1:] or res["wall"], res["cpu"][1:] or res["cpu"]
        acc = accuracy(res["readings"], truth)
        print(f"| {name} | {statistics.median(wall):.2f} | {p90(wall):.2f} "
              f"| {statistics.median(cpu):.2f} | {res['load_s']:.1f} "
              f"| {res['peak_rss_mb']:.0f} | "
              + " | ".join(f"{acc[n]:.0%}" for n in NUTRIENTS) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"from {', '.join(CONFIGS)}")
    parser.add_argument("--images", type=int, default=0, help="the first N images (0: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="enlarge images first")
    parser.add_argument("--json", type=Path, help="write every run's raw figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child), args.names.split(","), args.scale)))
        return 0

    truth = json.loads((LABELS / "truth.json").read_text())
    names = sorted(truth)[:args.images or None]
    results = {}
    for name in args.configs.split(","):
        t0 = time.perf_counter()
        results[name] = run_config(name, names, args.scale)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{len(names)} label images (tests/labels/), scale {args.scale:g}, "
          f"times without the first read\n")
    report(results, truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
