"""`petdiffusion train <task> --config FILE [--resume] [--run-dir DIR]`: run a task's training recipe.

The recipe is ``PETDiffusionLib.training.recipes.<task_module>.train(config_dict, args) -> int``
(task_module: denoise_segment for denoise-segment, ct_to_pet for ct-to-pet). A recipe may define
``add_train_args(parser)`` for its own options; those are parsed after the task is known, so that
``petdiffusion --help`` stays fast. Launch under ``torchrun`` for DDP (see training/loop.py).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.registry import TASK_MODULES

log = logging.getLogger(__name__)


def task_module_name(task: str) -> str:
    if task not in TASK_MODULES:
        raise InputError(f"unknown task {task!r}; known tasks: {', '.join(TASK_MODULES)}")
    return TASK_MODULES[task].rsplit(".", 1)[1]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a task's models from a JSON config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       )
    p.add_argument("task", choices=list(TASK_MODULES))
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="--config FILE [--resume] [--run-dir DIR] [--stage S] and task options")
    p.set_defaults(func=_train)


def train_parser(task: str, recipe) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"petdiffusion train {task}", conflict_handler="resolve")
    p.add_argument("--config", required=True, help="JSON file with the recipe's settings")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--run-dir", default=None, help="run folder (overrides the config's run_dir)")
    p.add_argument("--stage", default=None, help="run only these stages (comma-separated), if the "
                                                 "recipe has stages")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: auto)")
    if hasattr(recipe, "add_train_args"):
        recipe.add_train_args(p)
    return p


def _train(args) -> int:
    module = task_module_name(args.task)
    recipe = importlib.import_module(f"PETDiffusionLib.training.recipes.{module}")
    targs = train_parser(args.task, recipe).parse_args(args.rest)
    cfg_path = Path(targs.config)
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("config file not found", cfg_path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", cfg_path) from exc
    if targs.run_dir:
        config["run_dir"] = targs.run_dir
    if targs.resume:
        config["resume"] = True
    if targs.device:
        config["device"] = targs.device
    targs.task, targs.verbose = args.task, getattr(args, "verbose", False)
    log.info("training %s with %s", args.task, cfg_path)
    return int(recipe.train(config, targs) or 0)
