"""`make demo` step: simulate one small case and describe it."""
from __future__ import annotations

import json
from pathlib import Path

from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort


def demo_phantom(out_dir: Path, size: int = 64, slices: int = 80, seed: int = 7) -> list[str]:
    """Simulate one small synthetic case into ``out_dir/phantom`` and return lines describing it."""
    out = Path(out_dir) / "phantom"
    cfg = PhantomConfig(size=size, slices=slices)
    (case_dir,) = generate_cohort(out, 1, seed, cfg)
    info = json.loads((case_dir / "case.json").read_text())
    d = info["demographics"]
    sp = info["grid"]["spacing_mm_xyz"]
    return [
        f"phantom: {case_dir} ({size}x{size}x{slices}, voxels {sp[0]:.1f}x{sp[1]:.1f}x{sp[2]:.1f} mm, synthetic)",
        f"  patient: {d['sex']}, {d['age']:.0f} y, {d['height_cm']:.0f} cm, {d['weight_kg']:.0f} kg; "
        f"{len(info['lesions'])} lesions; tracer {info['tracer']}",
        f"  images: {', '.join(info['images'])}",
        f"  simulated in {info['simulation']['seconds']['total']:.1f} s",
    ]
