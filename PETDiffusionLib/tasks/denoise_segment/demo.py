"""``petdiffusion demo`` step of denoise-segment: one small simulated low-count phantom, end to end."""
from __future__ import annotations

import json
import time
from pathlib import Path

from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
from PETDiffusionLib.progress import Progress
from PETDiffusionLib.tasks.denoise_segment.spec import SPEC
from PETDiffusionLib.tasks.runner import run_task

TITLE = "Low-count PET -> denoised PET, lesions, organs, TLG/MTV report (denoise-segment, AMDiff)"
DEMO_SEED = 424242   # a seed no training or held-out cohort uses (train 1000, held-out 90000)


def demo(out_dir: str | Path) -> list[str]:
    """Simulate one small low-count (10 %) phantom and run the task on it, ending with the report."""
    out_dir = Path(out_dir)
    case = simulate_demo_case(out_dir / "phantom")
    t0 = time.monotonic()
    manifest = run_task(SPEC.id, {"pet": str(case / "pet_low_10.nii.gz"),
                                  "ct": str(case / "ct.nii.gz")},
                        {}, out_dir / "denoise_segment", Progress("none"))
    dt = time.monotonic() - t0
    summary = json.loads((manifest.parent / "summary.json").read_text())
    return [f"phantom case: {case} (10 % counts, seed {DEMO_SEED})",
            f"denoise-segment ran in {dt:.0f} s: {summary.get('lesion_count')} lesion(s) found, "
            f"TMTV {summary.get('tmtv_ml') or 0:.1f} mL, "
            f"TTLG {summary.get('ttlg') or 0:.1f} (SUVbw x mL)",
            f"manifest: {manifest}", f"report: {manifest.parent / 'report.pdf'}"]


def simulate_demo_case(folder: Path) -> Path:
    # a coarse 64 x 64 x 80 simulation (8 mm x 10 mm voxels) keeps the demo quick; the task
    # resamples it to the model's working spacing
    paths = generate_cohort(folder, 1, DEMO_SEED, PhantomConfig(size=64, slices=80, images=("low",)))
    return paths[0]
