"""`petdiffusion`: one command whose subcommands live in PETDiffusionLib/cli/<name>.py.

Each command module defines ``register(subparsers)`` which adds its parser and sets
``func(args) -> int``. One error path (issue 19): errors meant for the user (PETDiffusionError) and
ordinary OS errors (permission, missing file, disk full) are printed as one line naming the file, the
problem and what to do, and sent as a JSON ``error`` event with ``--progress json``; they give exit
status 2. An unexpected exception prints its traceback (for a bug report), still sends the ``error``
event, and gives 1. SIGTERM (Slicer's cancel, schedulers) is handled like Ctrl-C: it raises
:class:`~PETDiffusionLib.errors.Terminated` (a KeyboardInterrupt) in the main thread, so staging
folders and temporary files are removed on the way out; child processes are ended; exit 143.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import signal
import sys
import traceback

import psutil

from PETDiffusionLib import __version__
from PETDiffusionLib.errors import Cancelled, PETDiffusionError, Terminated, os_error_message

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
    with _sigterm_as_interrupt():
        try:
            return int(args.func(args) or 0)
        except Cancelled as exc:
            _report_error(str(exc), json_mode)
            return 130
        except PETDiffusionError as exc:
            _report_error(str(exc), json_mode)
            return 2
        except Terminated as exc:
            _end_children()
            _report_error(f"stopped: {exc} (outputs not written)", json_mode)
            return 128 + exc.signum
        except KeyboardInterrupt:
            _end_children()
            _report_error("interrupted (outputs not written)", json_mode)
            return 130
        except OSError as exc:
            _report_error(os_error_message(exc), json_mode)
            return 2
        except MemoryError:
            _report_error("out of memory; close other programs, or use a smaller input or a "
                          "device with more memory", json_mode)
            return 2
        except Exception as exc:  # a bug: keep the traceback for the report, tell Slicer too
            traceback.print_exc()
            _report_error(f"internal error ({type(exc).__name__}: {exc}); please report it with "
                          "the traceback above", json_mode)
            return 1


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated in the main thread (once: a second one during the clean-up is
    ignored so the clean-up can finish)."""
    def handler(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a test runner thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _end_children(timeout_s: float = 5.0) -> None:
    """Terminate this process's children (worker processes), then kill those that stay."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _report_error(message: str, json_mode: bool) -> None:
    if json_mode:
        sys.stdout.write(json.dumps({"event": "error", "message": message}) + "\n")
        sys.stdout.flush()
    print(f"petdiffusion: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
