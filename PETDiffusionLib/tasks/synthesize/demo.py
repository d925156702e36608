"""`petdiffusion demo` step for synthesize: one synthetic subject from the paper's male test-cohort
demographics with the shipped model (few steps, to keep `make demo` short)."""
from __future__ import annotations

import json
from pathlib import Path

from PETDiffusionLib.tasks.runner import run_task

TITLE = "demographics -> synthetic PET/CT with organs (synthesize, TotalGen cascaded 3D EDM)"
DEMO_PARAMS = {"age": 58.0, "sex": "M", "height": 177.0, "weight": 83.0, "seed": 0,
               "steps": 8, "sr_steps": 6}
"""TotalGen Table 1's male test-cohort means; 8 + 6 steps (spec.py: the defaults, and MIN_SR_STEPS)."""


def demo(out_dir) -> list[str]:
    out = Path(out_dir) / "result"
    manifest = json.loads(run_task("synthesize", {}, DEMO_PARAMS, out).read_text())
    rows = {r.split(",")[0]: r.split(",") for r in (out / "organs.csv").read_text().splitlines()[1:]}
    liver = rows.get("liver", ["liver", "", "", "nan", "nan"])
    return [f"model {manifest['model_id']} {manifest['model_version']}: {DEMO_PARAMS}, "
            f"{manifest['seconds']} s",
            f"SYNTHETIC CT / PET / organs written: {out / 'ct.nii.gz'}, {out / 'pet.nii.gz'}, "
            f"{out / 'organs.nii.gz'}",
            f"synthetic liver: {float(liver[3]) / 1000:.2f} L, SUVmean {float(liver[4]):.2f} "
            "(TotalGen Table 1, AutoPET men: 1.76 L, 2.26)",
            f"organ table and report: {out / 'organs.csv'}, {out / 'report.pdf'}"]
