"""The task registry: task id -> module. Modules are imported lazily (torch-heavy)."""
from __future__ import annotations

import importlib
from types import ModuleType

from PETDiffusionLib.errors import InputError

TASK_MODULES: dict[str, str] = {
    "denoise-segment": "PETDiffusionLib.tasks.denoise_segment",
    "ct-to-pet": "PETDiffusionLib.tasks.ct_to_pet",
}


def available_tasks() -> list[str]:
    out = []
    for tid, mod in TASK_MODULES.items():
        if importlib.util.find_spec(mod) is not None:
            out.append(tid)
    return out


def get_task(task_id: str) -> ModuleType:
    if task_id not in TASK_MODULES:
        raise InputError(f"unknown task {task_id!r}; known tasks: {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task_id])
