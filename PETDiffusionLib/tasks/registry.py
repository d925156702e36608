"""The task registry: the one place that lists the clinical tasks (docs/ARCHITECTURE.md).

Every other list of tasks is derived from ``TASKS``: the CLI's ``run``/``evaluate``/``train``/
``spec``/``batch`` subcommands, the benchmarks, the demo steps, the Slicer module list in CMake
(checked by Testing/test_slicer_static.py) and the package-shape test (Testing/test_architecture.py),
which fails when a registered task lacks any of its parts.

A task ``<id>`` is the package ``PETDiffusionLib/tasks/<package>/`` with the parts in ``PARTS``:

    spec.py       SPEC (inputs, parameters, outputs, model id, Slicer module); imports no torch
    pipeline.py   check_inputs, load_model, predict, report (what tasks/runner.py calls)
    evaluate.py   add_evaluate_args(parser), evaluate(args)   (``petdiffusion evaluate <id>``)
    demo.py       TITLE, demo(out_dir) -> lines               (``petdiffusion demo``)
    bench.py      TITLE, bench(args)                          (``petdiffusion bench <id>``)

and its training recipe ``PETDiffusionLib/training/recipes/<package>`` (``petdiffusion train <id>``;
looked up by the CLI, never by tasks, which do not import training).

Parts are imported only when asked for, so that ``spec`` and ``--help`` never import torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.base import TaskSpec


@dataclass(frozen=True)
class TaskEntry:
    id: str        # the task id users type: petdiffusion run <id>
    package: str   # PETDiffusionLib/tasks/<package>/ and training/recipes/<package>


TASKS: tuple[TaskEntry, ...] = (
    TaskEntry("denoise-segment", "denoise_segment"),
    TaskEntry("ct-to-pet", "ct_to_pet"),
    TaskEntry("restore", "restore"),
    TaskEntry("synthesize", "synthesize"),
    TaskEntry("dual-timepoint-ac", "dual_timepoint_ac"),
)

PARTS: tuple[str, ...] = ("spec", "pipeline", "evaluate", "demo", "bench")


def task_ids() -> list[str]:
    return [t.id for t in TASKS]


def task_entry(task_id: str) -> TaskEntry:
    for t in TASKS:
        if t.id == task_id:
            return t
    raise InputError(f"unknown task {task_id!r}; known tasks: {', '.join(task_ids())}")


def task_part(task_id: str, part: str) -> ModuleType:
    """The module ``PETDiffusionLib.tasks.<package>.<part>`` (imported on first use)."""
    if part not in PARTS:
        raise ValueError(f"unknown task part {part!r}; parts: {', '.join(PARTS)}")
    return importlib.import_module(f"PETDiffusionLib.tasks.{task_entry(task_id).package}.{part}")


def task_spec(task_id: str) -> TaskSpec:
    return task_part(task_id, "spec").SPEC


def recipe_module_name(task_id: str) -> str:
    """The dotted name of the task's training recipe (for the CLI's ``train``; tasks never import it)."""
    return f"PETDiffusionLib.training.recipes.{task_entry(task_id).package}"
