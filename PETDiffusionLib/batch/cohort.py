"""The cohort CSV of ``petdiffusion batch``: one row per study, checked against the task's spec.

Columns (docs/SCALE.md): ``id`` (the study's folder name under the batch output folder), one column
per image input of the task (``task_spec(task).inputs``: ``pet``, ``ct``, ``organs``, ...) and,
optionally, one column per task parameter (``spec.parameters``, by name; ``lesion-threshold`` and
``lesion_threshold`` are the same column). An empty parameter cell means the parameter's default.
Relative image paths are relative to the folder of the CSV file.

Every problem with the table itself (an unknown or missing column, an empty id or required input,
a duplicate id, a parameter value out of range) is an :class:`InputError` naming the file, the line
and the column, raised before any study runs. A study whose image file does not exist is not a
table error: that study alone fails (:func:`missing_inputs`), the others run.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.base import TaskSpec
from PETDiffusionLib.tasks.runner import MANIFEST

ID_COLUMN = "id"
# A study id becomes a folder name on every OS a cohort may be read on: letters, digits, ".", "_",
# "-" (the POSIX portable filename character set, POSIX.1-2017 Sec. 3.282), not starting with ".".
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Study:
    """One row of the cohort: what ``run_task`` needs for one study."""
    id: str
    line: int                          # line of the CSV file (the header is line 1)
    inputs: dict[str, str]             # input name -> absolute path (only the non-empty cells)
    params: dict[str, Any] = field(default_factory=dict)  # the non-empty parameter cells, coerced

    def to_dict(self) -> dict:
        """Plain types only: what a Ray worker receives."""
        return {"id": self.id, "line": self.line, "inputs": dict(self.inputs),
                "params": dict(self.params)}


def _column_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def read_cohort(csv_path: str | Path, spec: TaskSpec) -> list[Study]:
    """The studies of ``csv_path`` for the task ``spec``; raises InputError naming file/line/column."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError("the cohort CSV does not exist (check the path given to --inputs)", csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # utf-8-sig: spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the cohort CSV as UTF-8 text ({exc})", csv_path) from exc
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise InputError("the cohort CSV is empty: its first line must name the columns "
                         f"({_expected_columns(spec)})", csv_path)
    inputs = {i.name: i for i in spec.inputs}
    params = {p.name: p for p in spec.parameters}
    columns: list[str] = []
    for pos, raw in enumerate(header, start=1):
        key = _column_key(raw)
        if key != ID_COLUMN and key not in inputs and key not in params:
            raise InputError(f"line 1, column {pos} {raw.strip()!r}: not a column of task {spec.id}; "
                             f"the columns are {_expected_columns(spec)}", csv_path)
        if key in columns:
            raise InputError(f"line 1: the column {raw.strip()!r} appears twice", csv_path)
        columns.append(key)
    if ID_COLUMN not in columns:
        raise InputError(f"line 1: no '{ID_COLUMN}' column (each study needs an id: the name of "
                         f"its output folder); the columns are {_expected_columns(spec)}", csv_path)
    for inp in spec.inputs:
        if inp.required and inp.name not in columns:
            raise InputError(f"line 1: no {inp.name!r} column, which task {spec.id} needs "
                             f"({inp.help})", csv_path)

    studies: list[Study] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines (a trailing newline, a spreadsheet's empty rows)
        if len(row) > len(columns):
            raise InputError(f"line {line}: {len(row)} cells but the header names {len(columns)} "
                             "columns (a comma inside a path must be quoted)", csv_path)
        cells = dict(zip(columns, (c.strip() for c in row)))
        sid = cells.get(ID_COLUMN, "")
        where = f"line {line}"
        if not sid:
            raise InputError(f"{where}, column {ID_COLUMN}: empty (each study needs an id)", csv_path)
        if not ID_PATTERN.fullmatch(sid):
            raise InputError(f"{where}, column {ID_COLUMN}: {sid!r} is not usable as a folder name "
                             "(letters, digits, '.', '_' and '-' only, not starting with '.')",
                             csv_path)
        if sid in seen:
            raise InputError(f"{where}, column {ID_COLUMN}: the id {sid!r} is also on line "
                             f"{seen[sid]} (ids name output folders and must be unique)", csv_path)
        seen[sid] = line
        where = f"line {line} (id {sid})"
        paths: dict[str, str] = {}
        for name, inp in inputs.items():
            value = cells.get(name, "")
            if not value:
                if inp.required:
                    raise InputError(f"{where}, column {name}: empty, but task {spec.id} needs "
                                     f"it ({inp.help})", csv_path)
                continue
            path = Path(value).expanduser()
            paths[name] = str(path if path.is_absolute() else (csv_path.parent / path).resolve())
        values: dict[str, Any] = {}
        for name, prm in params.items():
            value = cells.get(name, "")
            if value == "":
                continue
            try:
                values[name] = prm.coerce(value)
            except InputError as exc:
                raise InputError(f"{where}, column {name}: {exc}", csv_path) from exc
        studies.append(Study(sid, line, paths, values))
    if not studies:
        raise InputError("the cohort CSV has a header but no studies", csv_path)
    return studies


def _expected_columns(spec: TaskSpec) -> str:
    req = [i.name for i in spec.inputs if i.required]
    opt = [i.name for i in spec.inputs if not i.required] + [p.name for p in spec.parameters]
    return f"{ID_COLUMN}, {', '.join(req)}" + (f" and optionally {', '.join(opt)}" if opt else "")


def missing_inputs(study: Study) -> str | None:
    """The error of a study whose image files do not exist (None when every input exists)."""
    for name, path in study.inputs.items():
        if not Path(path).exists():
            return f"line {study.line}, column {name}: {path} does not exist"
    return None


def complete_manifest(study_dir: str | Path, task_id: str) -> dict | None:
    """The manifest of a finished study: ``manifest.json`` of this task whose every listed output
    file exists; None when the study must (re-)run."""
    path = Path(study_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("task") != task_id:
        return None
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    for out in outputs.values():
        name = out.get("file") if isinstance(out, dict) else None
        if not name or not (Path(study_dir) / name).is_file():
            return None
    return manifest
