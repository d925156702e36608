"""`petdiffusion spec [TASK]`: the task specs as JSON (read by the Slicer panels and docs).

Reads only each task's ``spec.py`` (no torch), so it answers at once.
"""
from __future__ import annotations

import json

from PETDiffusionLib.tasks.registry import task_ids, task_spec


def register(sub) -> None:
    p = sub.add_parser("spec", help="print task specs (inputs, parameters, outputs) as JSON")
    p.add_argument("task", nargs="?", help="one task id; all tasks when omitted")
    p.set_defaults(func=_spec)


def _spec(args) -> int:
    ids = [args.task] if args.task else task_ids()
    print(json.dumps({tid: task_spec(tid).to_json() for tid in ids}, indent=2))
    return 0
