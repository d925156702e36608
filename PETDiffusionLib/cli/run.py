"""`petdiffusion run <task> ...`: flags generated from each task's spec."""
from __future__ import annotations

import argparse

from PETDiffusionLib.progress import Progress
from PETDiffusionLib.tasks.registry import task_ids, task_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a clinical task on images (writes files + manifest.json)")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    for tid in task_ids():
        spec = task_spec(tid)  # spec.py only: building the parser never imports torch
        tp = tasks.add_parser(tid, help=spec.title, description=f"{spec.title}. {spec.description} "
                              f"({spec.paper}). Research use only, not for diagnosis.")
        for inp in spec.inputs:
            dashed = [f"--{inp.name.replace('_', '-')}"] if "_" in inp.name else []  # --first-pet too
            tp.add_argument(f"--{inp.name}", *dashed, dest=inp.name, required=inp.required, metavar="FILE|DICOM_DIR",
                            help=f"{inp.help} [{inp.units or 'any units'}]")
        for prm in spec.parameters:
            flag = f"--{prm.name.replace('_', '-')}"
            kw = dict(dest=f"param_{prm.name}", default=None,
                      help=f"{prm.help} (default {prm.default})")
            if prm.type is bool:
                tp.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            else:
                tp.add_argument(flag, type=prm.type, choices=prm.choices, **kw)
        add_common_run_args(tp)
        tp.set_defaults(func=_run, spec=spec)


def add_common_run_args(tp: argparse.ArgumentParser) -> None:
    tp.add_argument("--out", required=True, help="output folder")
    tp.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, mps")
    tp.add_argument("--model", default=None, help="a model folder of your own (card.json + model.safetensors)")
    tp.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                    help="progress display; json prints one event per line (Slicer runner protocol)")


def _run(args) -> int:
    # deliberate lazy import: the runner pulls in SimpleITK and, through the pipeline, torch;
    # `petdiffusion --help` and `spec` must not pay for it
    from PETDiffusionLib.tasks.runner import run_task
    spec = args.spec
    inputs = {i.name: getattr(args, i.name) for i in spec.inputs if getattr(args, i.name)}
    params = {p.name: getattr(args, f"param_{p.name}") for p in spec.parameters
              if getattr(args, f"param_{p.name}") is not None}
    progress = Progress(args.progress)
    manifest = run_task(spec.id, inputs, params, args.out, progress, args.device, args.model)
    progress.result(str(manifest.resolve()))
    if args.progress != "json":
        print(f"wrote {manifest.parent} (see manifest.json)")
    return 0
