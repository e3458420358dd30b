"""Loaded by a bench's server when ``bench/loop_stalls`` is on its PYTHONPATH and
``MODI_BENCH_STALLS`` names a file. It appends one JSON line (pid, end time, kind,
milliseconds, where) to that file for

- every time the server's event loop was held more than 5 ms (``loop``): a watchdog
  thread posts a callback into the loop every millisecond and times how long it waits
  to run; while it waits, the thread samples the main thread's stack every millisecond,
  and "where" is the stack it found most often (innermost frame last). Native code that
  keeps the GIL (pycrdt's Rust) cannot be sampled inside: its Python caller is. A
  stack that ends in the loop itself (``web.py:run_app``) means no Python callback was
  running when sampled: several short ones queued, or the process off the CPU;
- every garbage collection longer than 2 ms (``gc``).

It works with uvloop (which runs no ``asyncio.Handle``) by wrapping the event-loop
factories the server calls. A diagnostic for benches only (bench/daily_summary.py
``--stalls``): the watchdog wakes the loop a thousand times a second.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

LOOP_MS = 5.0
GC_MS = 2.0
_FRAMES = 8  # innermost frames named in "where"


class _Out:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        self._lock = threading.Lock()

    def write(self, kind: str, ms: float, where: str) -> None:
        line = json.dumps({"pid": os.getpid(), "t": time.time(), "kind": kind,
                           "ms": round(ms, 2), "where": where})
        with self._lock:
            self._file.write(line + "\n")


def _stack(thread_id: int) -> str:
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "?"
    return " > ".join(f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}"
                      for f in traceback.extract_stack(frame)[-_FRAMES:])


def _watch(loop: asyncio.AbstractEventLoop, out: _Out, thread_id: int) -> None:
    while not loop.is_closed():
        ran = threading.Event()
        posted = time.perf_counter()
        try:
            loop.call_soon_threadsafe(ran.set)
        except RuntimeError:  # closed meanwhile
            return
        samples: Counter[str] = Counter()
        while not ran.wait(0.001):
            if (time.perf_counter() - posted) * 1e3 > LOOP_MS:
                samples[_stack(thread_id)] += 1
            if loop.is_closed():
                return
        ms = (time.perf_counter() - posted) * 1e3
        if ms > LOOP_MS:  # where the samples found it most often (the first on a tie)
            out.write("loop", ms, samples.most_common(1)[0][0] if samples else "not sampled")
        time.sleep(0.001)


def _watched(factory: Callable[..., Any], out: _Out) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        loop = factory(*args, **kwargs)
        thread = threading.Thread(target=_watch, args=(loop, out, threading.get_ident()),
                                  name="loop-stalls", daemon=True)
        thread.start()
        return loop

    return make


def _time_collections(out: _Out) -> None:
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1e3
        if ms > GC_MS:
            out.write("gc", ms, f"generation {info['generation']}, {info['collected']} found")

    gc.callbacks.append(timed)


def _install(path: str) -> None:
    out = _Out(path)
    _time_collections(out)
    asyncio.new_event_loop = _watched(asyncio.new_event_loop, out)
    try:
        import uvloop
    except ImportError:
        return
    uvloop.new_event_loop = _watched(uvloop.new_event_loop, out)


if os.environ.get("MODI_BENCH_STALLS"):
    _install(os.environ["MODI_BENCH_STALLS"])
