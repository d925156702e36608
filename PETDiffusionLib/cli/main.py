"""`petdiffusion`: one command whose subcommands live in PETDiffusionLib/cli/<name>.py.

Each command module defines ``register(subparsers)`` which adds its parser and sets
``func(args) -> int``. Errors meant for the user (PETDiffusionError) are printed as one line
(or as a JSON ``error`` event with ``--progress json``) and give exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from PETDiffusionLib import __version__
from PETDiffusionLib.errors import Cancelled, PETDiffusionError

# Order is the order shown in --help.
COMMANDS = ["demo", "run", "inspect", "suv", "quantify", "report", "phantom", "evaluate",
            "train", "batch", "bench", "spec", "models"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petdiffusion",
        description="PET/CT diffusion methods for research: denoise and segment low-count PET, "
                    "synthesize PET from CT, quantify (SUV, MTV, TLG) and report. "
                    "Research use only, not for diagnosis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"PETDiffusionLib.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"PETDiffusionLib.cli.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    json_mode = getattr(args, "progress", None) == "json"
    try:
        return int(args.func(args) or 0)
    except Cancelled as exc:
        _report_error(str(exc), json_mode)
        return 130
    except PETDiffusionError as exc:
        _report_error(str(exc), json_mode)
        return 2
    except KeyboardInterrupt:
        _report_error("interrupted", json_mode)
        return 130


def _report_error(message: str, json_mode: bool) -> None:
    if json_mode:
        sys.stdout.write(json.dumps({"event": "error", "message": message}) + "\n")
        sys.stdout.flush()
    print(f"petdiffusion: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
