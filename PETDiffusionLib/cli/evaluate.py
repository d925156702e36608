"""`petdiffusion evaluate <task> --cohort DIR [--out FILE.json] ...`: a task's evaluation.

Dispatches to the task's ``tasks/<task>/evaluate.py``: ``evaluate(args)`` (returns its figures as
text, printed here, or an exit status); task-specific options come from its ``add_evaluate_args(parser)`` (parsed after the task is known, so that
``petdiffusion --help`` stays fast; ``petdiffusion evaluate TASK --help`` lists them).
"""
from __future__ import annotations

import argparse

from PETDiffusionLib.tasks.registry import task_ids, task_part


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a task's model on a cohort",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       )
    p.add_argument("task", choices=task_ids())
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--cohort DIR [--out FILE.json] and task options")
    p.set_defaults(func=_evaluate)


def evaluate_parser(task: str, module) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"petdiffusion evaluate {task}", conflict_handler="resolve")
    p.add_argument("--cohort", required=True, help="folder of case_XXXX/ studies to evaluate on")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    if hasattr(module, "add_evaluate_args"):
        module.add_evaluate_args(p)
    return p


def _evaluate(args) -> int:
    module = task_part(args.task, "evaluate")
    eargs = evaluate_parser(args.task, module).parse_args(args.rest)
    eargs.task, eargs.verbose = args.task, getattr(args, "verbose", False)
    eargs.argv = list(args.rest)   # the task's options as given (a card records its command)
    result = module.evaluate(eargs)
    if isinstance(result, str):  # the task's summary table, for the terminal
        print(result)
        return 0
    return int(result or 0)
