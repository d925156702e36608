"""`petdiffusion bench NAME [--json FILE]`: the speed and memory of every task, and other benches.

NAME is a registered task (``registry.task_ids()``), one of the library benches below, or ``all``.
A task's bench is its ``tasks/<package>/bench.py``: ``TITLE`` and ``bench(args) -> dict`` of figures
(seconds per volume at a stated size, network evaluations per volume counted with forward hooks,
the seed paper's sampler cost). It runs in a child process whose peak resident memory
(``VmHWM``) is added as ``peak_rss_mb`` (batch/measure.py). ``--json FILE`` writes every
figure, with the machine they were measured on; ``make bench`` writes ``bench.json``.

Benchmarks are commands, never timed tests.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import os
import platform
import sys
import time

from PETDiffusionLib import __version__
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.tasks.registry import task_ids, task_part

# The library's own benches (not tasks): "module:function" (function(args) prints its figures or
# returns them as text) and what it measures.
LIBRARY_BENCHES: dict[str, tuple[str, str]] = {
    "lesions": ("PETDiffusionLib.quant.bench:bench_lesion_table",
                "lesion table for a 256x256x300 SUV volume with 50 lesions (target < 5 s)"),
    "phantom": ("PETDiffusionLib.phantom.bench:bench_phantom_case",
                "one 128x128x160 phantom case with every derived image (target < 60 s)"),
    "samplers": ("PETDiffusionLib.diffusion.bench:bench_samplers",
                 "time per network evaluation and per sample for each sampler"),
    "windows": ("PETDiffusionLib.diffusion.bench:bench_windows",
                "peak memory of a 3D windowed step vs window and volume size"),
}


def register(sub) -> None:
    names = task_ids() + list(LIBRARY_BENCHES)
    p = sub.add_parser("bench", help="benchmarks: every task (speed, network evaluations, memory, "
                       "the paper's sampler cost) and " + ", ".join(LIBRARY_BENCHES),
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=names + ["all"])
    p.add_argument("--repeat", type=int, default=1, help="runs per bench; the fastest is kept")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, mps")
    p.add_argument("--size", default=None, metavar="X,Y,Z",
                   help="bench volume in voxels, for the task benches that take one "
                        "(denoise-segment: default 256,256,250); others ignore it")
    p.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON")
    p.set_defaults(func=_bench)


def run_task_bench(task: str, device: str = "auto", repeat: int = 1,
                   size: str | None = None) -> dict:
    """In the child process: the task's bench.py, its figures as a dict."""
    mod = task_part(task, "bench")
    result = mod.bench(argparse.Namespace(device=device, repeat=repeat, size=size))
    figures = dict(result) if isinstance(result, dict) else {"text": str(result)}
    figures.setdefault("title", getattr(mod, "TITLE", task))
    return figures


def machine() -> dict:
    """Where the figures were measured (they mean nothing without it)."""
    import torch  # lazy on purpose: `petdiffusion --help` imports this module and stays torch-free
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    with contextlib.suppress(OSError):
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info


def format_task(task: str, f: dict) -> str:
    """A task's figures as text; tolerant of a bench.py that returns fewer figures."""
    if "seconds_per_volume" not in f:
        return f.get("text") or f"{task}: {json.dumps(f, default=str)}"
    lines = [f"{task}: {f.get('volume', '')}",
             f"  seconds per volume: {f['seconds_per_volume']:.1f} s on {f.get('device', '?')} "
             f"({f.get('torch_threads', '?')} torch thread(s))",
             f"  network evaluations per volume: {f.get('network_evaluations', '?')} "
             f"({f.get('evaluations_by_network', {})}; {f.get('evaluations_how', '')})",
             f"  peak resident memory: {f.get('peak_rss_mb', 0):.0f} MB "
             f"({f.get('peak_rss_mb', 0) / 1024:.2f} GB)"]
    paper = f.get("paper") or {}
    if paper:
        per_eval = paper.get("seconds_per_evaluation_here")
        lines.append(f"  paper's sampler: {paper.get('steps')} steps; "
                     f"{paper.get('evaluations_per_volume', '?')} network evaluations per volume"
                     + (f"; {per_eval * 1e3:.0f} ms per evaluation here"
                        f" (~{paper.get('seconds_per_volume_here', 0):.0f} s per volume)" if per_eval
                        else f"; network not measured here ({paper.get('network', 'unknown')})"))
    return "\n".join(lines)


class _Tee(io.StringIO):
    """Keeps what a library bench prints and passes it on to the terminal."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()


def _bench(args) -> int:
    names = task_ids() + list(LIBRARY_BENCHES) if args.name == "all" else [args.name]
    from PETDiffusionLib.batch.measure import run_child  # lazy: imports torch (see machine())
    report = {"library_version": __version__,
              "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "tasks": {}, "library_benches": {}}
    rc = 0
    for name in names:
        t0 = time.monotonic()
        if name in task_ids():
            print(f"== bench {name}", flush=True)
            try:
                figures, peak_mb = run_child("PETDiffusionLib.cli.bench", "run_task_bench",
                                             {"task": name, "device": args.device,
                                              "repeat": args.repeat,
                                              "size": getattr(args, "size", None)})
            except RuntimeError as exc:  # a task not finished yet (no shipped model): say so, go on
                report["tasks"][name] = {"error": str(exc)}
                print(f"{name}: FAILED: {exc}", flush=True)
                rc = 1
                continue
            if "peak_rss_mb" not in figures:  # a bench that measured its timed run's child keeps it
                figures["peak_rss_mb"] = round(peak_mb, 1)
                figures["peak_rss_how"] = ("peak resident set (VmHWM) of the child process that ran "
                                           "the bench")
            report["tasks"][name] = figures
            print(format_task(name, figures), flush=True)
        else:
            target, what = LIBRARY_BENCHES[name]
            print(f"== bench {name}: {what}", flush=True)
            mod, fn = target.split(":")
            buf = _Tee(sys.stdout)
            with contextlib.redirect_stdout(buf):  # shown as it comes and kept for the JSON
                result = getattr(importlib.import_module(mod), fn)(args)
            if isinstance(result, int):
                rc |= result
            if isinstance(result, str):
                print(result, file=buf, flush=True)
            text = buf.getvalue()
            report["library_benches"][name] = {"what": what, "output": text.rstrip("\n").splitlines(),
                                               "seconds": round(time.monotonic() - t0, 1)}
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return rc
