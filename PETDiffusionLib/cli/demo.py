"""`petdiffusion demo [--out DIR]`: run each demo step and print what it found.

Each step is a function ``f(out_dir: Path) -> list[str]`` named as "module:function"; steps are
imported only when they run, so a step's heavy dependencies never slow the others.
"""
from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from PETDiffusionLib.errors import InputError

# (title, "module:function"); later issues append one step per task.
DEMO_STEPS: list[tuple[str, str]] = [
    ("DICOM PET -> SUV (synthetic series with realistic headers, read back by the project's reader)",
     "PETDiffusionLib.io.demo:demo_dicom_suv"),
    ("Phantom: one simulated PET/CT/MR case (every derived image)",
     "PETDiffusionLib.phantom.demo:demo_phantom"),
    ("Low-count PET -> denoised PET, lesions, organs, TLG/MTV report (denoise-segment, AMDiff)",
     "PETDiffusionLib.tasks.denoise_segment:demo"),
    ("CT -> synthetic PET (ct-to-pet, CPDM latent Brownian bridge, simulated phantom CT)",
     "PETDiffusionLib.tasks.ct_to_pet:demo"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo steps on synthetic data and print what they found")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--step", type=int, action="append", default=None, metavar="N",
                   help=f"run only step N (1-{len(DEMO_STEPS)}; repeatable); default every step")
    p.set_defaults(func=_demo)


def run_step(target: str, out_dir: Path) -> list[str]:
    module, func = target.split(":")
    return list(getattr(importlib.import_module(module), func)(out_dir))


def _demo(args) -> int:
    out = Path(args.out)
    chosen = args.step or list(range(1, len(DEMO_STEPS) + 1))
    bad = [n for n in chosen if not 1 <= n <= len(DEMO_STEPS)]
    if bad:
        raise InputError(f"--step {bad[0]}: the demo has steps 1 to {len(DEMO_STEPS)}")
    for i, (title, target) in enumerate(DEMO_STEPS, 1):
        if i not in chosen:
            continue
        t0 = time.perf_counter()
        print(f"[{i}/{len(DEMO_STEPS)}] {title}")
        # one folder per step (two steps may share a function name such as `demo`)
        step_dir = out / f"{i}_{target.split(':')[0].rsplit('.', 1)[-1]}"
        for line in run_step(target, step_dir):
            print(f"    {line}")
        print(f"    ({time.perf_counter() - t0:.1f} s)")
    print(f"demo outputs in {out.resolve()}")
    return 0
