"""`petdiffusion demo [--out DIR]`: run each demo step and print what it found.

The steps are the library's own two (DICOM -> SUV, the phantom) followed by one per registered task
(its ``tasks/<task>/demo.py``: ``TITLE`` and ``demo(out_dir) -> lines``). A step is imported only when
it runs, so a step's heavy dependencies never slow the others.
"""
from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.registry import TASKS, task_part

# (folder, title, "module:function") of the steps that are not tasks
LIBRARY_STEPS: list[tuple[str, str, str]] = [
    ("demo", "DICOM PET -> SUV (synthetic series with realistic headers, read back by the project's reader)",
     "PETDiffusionLib.io.demo:demo_dicom_suv"),
    ("demo", "Phantom: one simulated PET/CT/MR case (every derived image)",
     "PETDiffusionLib.phantom.demo:demo_phantom"),
]


def demo_steps() -> list[tuple[str, str | None, str]]:
    """(folder name, title or None = the task demo's TITLE, target) for every step, in order."""
    steps = [(f, t, target) for f, t, target in LIBRARY_STEPS]
    steps += [(entry.package, None, f"task:{entry.id}") for entry in TASKS]
    return steps


def register(sub: argparse._SubParsersAction) -> None:
    n = len(demo_steps())
    p = sub.add_parser("demo", help="run the demo steps on synthetic data and print what they found")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--step", type=int, action="append", default=None, metavar="N",
                   help=f"run only step N (1-{n}; repeatable); default every step")
    p.set_defaults(func=_demo)


def run_step(target: str, out_dir: Path) -> list[str]:
    """Run one step ("module:function" or "task:<id>") into ``out_dir``; returns its lines."""
    return list(_step_function(target)[1](Path(out_dir)))


def _step_function(target: str):
    if target.startswith("task:"):
        module = task_part(target[len("task:"):], "demo")
        return getattr(module, "TITLE", None), module.demo
    module, func = target.split(":")
    return None, getattr(importlib.import_module(module), func)


def _demo(args) -> int:
    out = Path(args.out)
    steps = demo_steps()
    chosen = args.step or list(range(1, len(steps) + 1))
    bad = [n for n in chosen if not 1 <= n <= len(steps)]
    if bad:
        raise InputError(f"--step {bad[0]}: the demo has steps 1 to {len(steps)}")
    for i, (folder, title, target) in enumerate(steps, 1):
        if i not in chosen:
            continue
        t0 = time.perf_counter()
        task_title, fn = _step_function(target)
        print(f"[{i}/{len(steps)}] {title or task_title or target}")
        for line in fn(out / f"{i}_{folder}"):   # one folder per step
            print(f"    {line}")
        print(f"    ({time.perf_counter() - t0:.1f} s)")
    print(f"demo outputs in {out.resolve()}")
    return 0
