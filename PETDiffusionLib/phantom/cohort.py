"""The cohort folder layout, read in one place: ``COHORT/case_XXXX/case.json`` plus its images.

The simulator (``petdiffusion phantom --out COHORT``) and the real-data cohort builders write this
layout; training recipes and task evaluations read it through these functions.
"""
from __future__ import annotations

import json
from pathlib import Path

from PETDiffusionLib.errors import InputError

CASE_INFO = "case.json"


def list_cases(cohort: str | Path, require: tuple[str, ...] = ()) -> list[Path]:
    """The cohort's ``case_*`` folders that hold ``case.json`` (and every file in ``require``),
    sorted by name; InputError naming the cohort when there is none."""
    root = Path(cohort)
    if not root.is_dir():
        raise InputError("cohort folder not found", root)
    cases = sorted(p for p in root.glob("case_*")
                   if (p / CASE_INFO).is_file() and all((p / f).is_file() for f in require))
    if not cases:
        need = ", ".join((CASE_INFO,) + tuple(require))
        raise InputError(f"no case_* folders with {need} in the cohort", root)
    return cases


def case_index(case_dir: Path) -> int:
    """``case_0012`` -> 12."""
    return int(Path(case_dir).name.split("_")[-1])


def cases_by_index(cohort: str | Path, case_indices, require: tuple[str, ...] = ()) -> list[Path]:
    """The cohort's cases with the given indices; InputError if none of them exists."""
    wanted = {int(i) for i in case_indices}
    dirs = [d for d in list_cases(cohort, require) if case_index(d) in wanted]
    if not dirs:
        raise InputError(f"none of the cases {sorted(wanted)} exists", cohort)
    return dirs


def case_info(case_dir: Path) -> dict:
    """The case's ``case.json`` (split, demographics, label names, ...)."""
    path = Path(case_dir) / CASE_INFO
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable case description ({exc})", path) from exc


def cases_in_split(cohort: str | Path, split: str) -> list[Path]:
    """The cases whose case.json ``split`` equals ``split`` (real cohorts: finetune / validation)."""
    return [d for d in list_cases(cohort) if case_info(d).get("split") == split]
