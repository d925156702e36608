"""``DIR/summary.csv``: one row per finished study, rewritten whole (atomically) as studies finish.

Columns: ``id, status, seconds, engine, worker, error`` and then the task's headline figures
(batch/headline.py). ``status`` is ``ok`` (run now), ``skipped`` (a complete manifest was already
there; its figures are read from it, ``seconds`` is empty) or ``failed`` (``error`` holds the
message; the other studies went on). Rows are in the cohort's order. A reader that opens the file
while the batch runs sees the studies finished so far, never a half-written file (io/atomic.py).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from PETDiffusionLib.io.atomic import atomic_write_text

SUMMARY = "summary.csv"
BASE_COLUMNS = ("id", "status", "seconds", "engine", "worker", "error")
STATUSES = ("ok", "skipped", "failed")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return " | ".join(str(value).splitlines())  # one line per study, whatever the message


class SummaryTable:
    def __init__(self, path: str | Path, order: Iterable[str], headline_columns: Iterable[str]):
        self.path = Path(path)
        self.order = list(order)
        self.columns = list(BASE_COLUMNS) + [c for c in headline_columns if c not in BASE_COLUMNS]
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        """Record a finished study and rewrite the file."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"study {row.get('id')}: status {row.get('status')!r} is not one of "
                             f"{', '.join(STATUSES)}")
        self.rows[row["id"]] = row
        self.write()

    def write(self) -> Path:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for sid in self.order:
            if sid in self.rows:
                writer.writerow([_cell(self.rows[sid].get(c)) for c in self.columns])
        return atomic_write_text(self.path, buf.getvalue())

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for r in self.rows.values() if r["status"] == s) for s in STATUSES}
