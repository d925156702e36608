"""Progress reporting and cancellation shared by every task.

Protocol (ARCHITECTURE.md, "Contracts"): with ``--progress json`` each event is one JSON object on
one line of stdout:

    {"event": "progress", "stage": "denoise", "fraction": 0.42, "message": "..."}
    {"event": "log", "level": "warning", "message": "..."}
    {"event": "result", "manifest": "/abs/path/manifest.json"}
    {"event": "error", "message": "..."}

The Slicer runner parses these lines; in a terminal the same calls draw a tqdm bar instead.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Callable

from tqdm import tqdm

from PETDiffusionLib.errors import Cancelled


class Progress:
    """Reports (stage, fraction) and checks for cancellation between steps.

    ``fraction`` is the overall fraction of the whole run in [0, 1]; tasks split the range between
    their stages with :meth:`sub`.
    """

    def __init__(self, mode: str = "none", stream: IO[str] | None = None,
                 callback: Callable[[dict], None] | None = None):
        if mode not in ("none", "json", "bar"):
            raise ValueError(f"progress mode must be none, json or bar, not {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.callback = callback
        self.cancel_event = threading.Event()
        self._bar = None
        self._last = 0.0
        self._t0 = time.monotonic()

    # -- events -------------------------------------------------------------------------------
    def _emit(self, event: dict) -> None:
        if self.callback is not None:
            self.callback(event)
        if self.mode == "json":
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        """Report that the run as a whole is ``fraction`` done, now in ``stage``."""
        self.check_cancelled()
        fraction = float(min(max(fraction, 0.0), 1.0))
        fraction = max(fraction, self._last)  # never goes backwards
        self._last = fraction
        self._emit({"event": "progress", "stage": stage, "fraction": round(fraction, 4),
                    "message": message})
        if self.mode == "bar":
            if self._bar is None:
                self._bar = tqdm(total=1000, unit="‰", file=sys.stderr, leave=True)
            self._bar.set_description(stage)
            self._bar.n = int(fraction * 1000)
            self._bar.refresh()

    def log(self, message: str, level: str = "info") -> None:
        self._emit({"event": "log", "level": level, "message": message})
        if self.mode == "bar":
            sys.stderr.write(f"[{level}] {message}\n")

    def result(self, manifest_path: str) -> None:
        self.close()
        self._emit({"event": "result", "manifest": str(manifest_path)})

    def error(self, message: str) -> None:
        self.close()
        self._emit({"event": "error", "message": message})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- cancellation -------------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancel_event.set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by the user")

    # -- sub-ranges ---------------------------------------------------------------------------
    def sub(self, start: float, end: float, stage: str) -> "SubProgress":
        """A view that maps a stage's own 0..1 onto [start, end] of the whole run."""
        return SubProgress(self, start, end, stage)


class SubProgress:
    def __init__(self, parent: Progress, start: float, end: float, stage: str):
        self.parent, self.start, self.end, self.stage = parent, start, end, stage

    def __call__(self, fraction: float, message: str = "") -> None:
        self.parent.update(self.stage, self.start + (self.end - self.start) * fraction, message)

    def check_cancelled(self) -> None:
        self.parent.check_cancelled()


NULL_PROGRESS = Progress("none")
