"""`petdiffusion bench NAME`: benchmark commands that print the figures the issues name.

Benchmarks are commands, never timed tests. Each entry is "module:function"; the function takes the
parsed args and returns its figures as text (printed here) or an exit status.
"""
from __future__ import annotations

import importlib

BENCHES: dict[str, tuple[str, str]] = {
    "lesions": ("PETDiffusionLib.quant.bench:bench_lesion_table",
                "lesion table for a 256x256x300 SUV volume with 50 lesions (target < 5 s)"),
    "phantom": ("PETDiffusionLib.phantom.bench:bench_phantom_case",
                "one 128x128x160 phantom case with every derived image (target < 60 s)"),
    "samplers": ("PETDiffusionLib.diffusion.bench:bench_samplers",
                 "time per network evaluation and per sample for each sampler"),
    "windows": ("PETDiffusionLib.diffusion.bench:bench_windows",
                "peak memory of a 3D windowed step vs window and volume size"),
    "denoise-segment": ("PETDiffusionLib.tasks.denoise_segment:bench",
                        "128x128x160 low-count PET end to end (target < 3 min)"),
    "ct-to-pet": ("PETDiffusionLib.tasks.ct_to_pet:bench",
                  "128x128x160 CT to synthetic PET at default steps (target < 2 min)"),
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES))
    p.add_argument("name", choices=list(BENCHES) + ["all"])
    p.add_argument("--repeat", type=int, default=1)
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    names = list(BENCHES) if args.name == "all" else [args.name]
    rc = 0
    for name in names:
        target, what = BENCHES[name]
        mod, fn = target.split(":")
        print(f"== bench {name}: {what}")
        result = getattr(importlib.import_module(mod), fn)(args)
        if isinstance(result, str):  # library benches return their figures as text
            print(result)
            result = 0
        rc |= int(result or 0)
    return rc
