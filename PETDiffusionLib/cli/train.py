"""`petdiffusion train <task> --config FILE [--resume] [--device D] [--stage S] [--run-dir DIR]`.

The one training command (docs/ARCHITECTURE.md, "Training"). It runs the task's recipe,
``PETDiffusionLib.training.recipes.<package>.train(config: dict, options: TrainOptions) -> int``,
which trains every network through ``training.loop.Trainer``. A recipe may define
``add_train_args(parser)`` for options of its own; they are parsed after the task is known, so that
``petdiffusion --help`` stays fast. Launch under ``torchrun`` for DDP (docs/SCALE.md).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.registry import recipe_module_name, task_ids

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a task's models from a JSON config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=task_ids())
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="--config FILE [--resume] [--device D] [--stage S] [--run-dir DIR] and task options")
    p.set_defaults(func=_train)


def train_parser(task: str, recipe) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"petdiffusion train {task}", conflict_handler="resolve")
    p.add_argument("--config", required=True, help="JSON file with the recipe's settings")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's checkpoints (without it, a run folder "
                        "that holds a checkpoint is refused)")
    p.add_argument("--run-dir", default=None, help="run folder (overrides the config's run_dir)")
    p.add_argument("--stage", default=None,
                   help="run only these stages (comma-separated), if the recipe has stages")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: auto)")
    if hasattr(recipe, "add_train_args"):
        recipe.add_train_args(p)
    return p


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("config file not found", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from exc
    if not isinstance(config, dict):
        raise InputError("a training config must be a JSON object", path)
    return config


def _train(args) -> int:
    # deliberate lazy imports: the recipe and the loop import torch, which --help must not pay for
    recipe = importlib.import_module(recipe_module_name(args.task))
    from PETDiffusionLib.training.loop import TrainOptions
    targs = train_parser(args.task, recipe).parse_args(args.rest)
    cfg_path = Path(targs.config)
    config = read_config(cfg_path)
    if targs.run_dir:
        config["run_dir"] = targs.run_dir
    options = TrainOptions(config_path=str(targs.config), resume=bool(targs.resume),
                           device=targs.device,
                           stages=[s.strip() for s in targs.stage.split(",")] if targs.stage else None,
                           run_dir=targs.run_dir)
    log.info("training %s with %s", args.task, cfg_path)
    return int(recipe.train(config, options) or 0)
