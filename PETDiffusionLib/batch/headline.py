"""A task's headline figures for a cohort's summary.csv, read from a finished study's own files.

Each task declares its figures as ``TaskSpec.headline`` (tasks/base.py), a tuple of keys:

- ``"OUTPUT:FIELD"``: the field of a JSON output (``"summary_json:tmtv_ml"``); a dotted FIELD walks
  into nested objects;
- ``"OUTPUT:ROW:COLUMN"``: a CSV output's cell, in the row whose first column is ROW
  (``"organs_csv:liver:suv_mean"``);
- ``"manifest:FIELD"``: a field of the study's manifest.json (``"manifest:kvp"``).

OUTPUT is an output name of the spec; the file is the one the manifest lists for it. A figure the
study did not produce (an optional output not written, an organ absent from the table) is left
empty: the summary says what exists, never a made-up zero.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from PETDiffusionLib.tasks.base import TaskSpec


def column_name(key: str) -> str:
    """The summary.csv column of a headline key: its parts after the output name, joined by '_'."""
    parts = key.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"headline key {key!r}: expected OUTPUT:FIELD or OUTPUT:ROW:COLUMN")
    return "_".join(p.replace(".", "_") for p in parts[1:])


def columns(spec: TaskSpec) -> list[str]:
    return [column_name(k) for k in spec.headline]


def _json_field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj if isinstance(obj, (int, float, str, bool)) else None


def _csv_cell(path: Path, row_key: str, column: str) -> str | None:
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            first = next(iter(row.values()), None)
            if first == row_key:
                value = row.get(column)
                return value if value not in (None, "") else None
    return None


def read(spec: TaskSpec, study_dir: str | Path, manifest: dict) -> dict[str, Any]:
    """{column: value} for every headline key (None where the study has no such figure)."""
    study_dir = Path(study_dir)
    outputs = manifest.get("outputs", {})
    figures: dict[str, Any] = {}
    for key in spec.headline:
        parts = key.split(":")
        value: Any = None
        if parts[0] == "manifest":
            value = _json_field(manifest, parts[1])
        elif parts[0] in outputs:
            path = study_dir / outputs[parts[0]]["file"]
            if len(parts) == 2:
                value = _json_field(json.loads(path.read_text(encoding="utf-8")), parts[1])
            else:
                value = _csv_cell(path, parts[1], parts[2])
        figures[column_name(key)] = value
    return figures
