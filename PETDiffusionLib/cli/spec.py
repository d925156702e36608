"""`petdiffusion spec [TASK]`: the task specs as JSON (read by the Slicer panels and docs)."""
from __future__ import annotations

import json

from PETDiffusionLib.tasks.registry import available_tasks, get_task


def register(sub) -> None:
    p = sub.add_parser("spec", help="print task specs (inputs, parameters, outputs) as JSON")
    p.add_argument("task", nargs="?", help="one task id; all tasks when omitted")
    p.set_defaults(func=_spec)


def _spec(args) -> int:
    ids = [args.task] if args.task else available_tasks()
    print(json.dumps({tid: get_task(tid).SPEC.to_json() for tid in ids}, indent=2))
    return 0
