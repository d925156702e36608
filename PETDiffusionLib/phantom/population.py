"""Population realism: organ volumes and SUVmean by sex over many phantoms vs TotalGen Table 1.

Measured on the phantoms' own label maps and true SUV (no acquisition), so it is fast; TotalGen
measured AutoPET PET images (with partial-volume effects), which is why the comparison asks for the
phantom means to lie within one between-patient SD of the AutoPET means, not for equality.
"""
from __future__ import annotations

import logging

import numpy as np

from PETDiffusionLib.phantom.anatomy import LABEL_ID
from PETDiffusionLib.phantom.case import generate_anatomy_and_uptake

log = logging.getLogger(__name__)

# TotalGen Table 1 (AutoPET, 18F-FDG): (mean, SD) by sex.
TOTALGEN_TABLE1 = {
    ("liver", "volume_l"): {"M": (1.76, 0.44), "F": (1.55, 0.37)},
    ("liver", "suv_mean"): {"M": (2.26, 0.42), "F": (2.34, 0.33)},
    ("heart", "volume_l"): {"M": (0.68, 0.15), "F": (0.55, 0.09)},
    ("kidneys", "volume_l"): {"M": (0.30, 0.08), "F": (0.30, 0.06)},
    ("kidneys", "suv_mean"): {"M": (2.50, 0.41), "F": (2.70, 0.45)},
}
ORGAN_GROUPS = {"liver": ("liver",), "heart": ("heart_myocardium", "heart_blood_pool"),
                "kidneys": ("kidney_left", "kidney_right")}


def measure_organs(organs: np.ndarray, suv: np.ndarray, spacing_xyz) -> dict[tuple[str, str], float]:
    voxel_l = float(np.prod(spacing_xyz)) / 1e6
    out = {}
    for group, names in ORGAN_GROUPS.items():
        m = np.isin(organs, [LABEL_ID[n] for n in names])
        out[(group, "volume_l")] = float(m.sum() * voxel_l)
        out[(group, "suv_mean")] = float(suv[m].mean()) if m.any() else float("nan")
    return out


def population_table(n: int, seed: int, cfg) -> dict:
    """Per sex: list of measurements of ``n`` phantoms (anatomy + true SUV only)."""
    rows: dict[str, list[dict]] = {"M": [], "F": []}
    for i in range(n):
        _, anat, _, suv = generate_anatomy_and_uptake(seed, i, cfg)
        rows[anat.demographics.sex].append(measure_organs(anat.organs, suv, anat.grid.spacing))
    summary = {}
    for sex, items in rows.items():
        for key in TOTALGEN_TABLE1:
            vals = np.array([r[key] for r in items], float)
            summary[(sex, key)] = (float(np.mean(vals)) if len(vals) else float("nan"),
                                   float(np.std(vals)) if len(vals) else float("nan"), len(vals))
    return summary


def within_one_sd(summary: dict) -> dict:
    ok = {}
    for (sex, key), (mean, _, _) in summary.items():
        ref, sd = TOTALGEN_TABLE1[key][sex]
        ok[(sex, key)] = bool(abs(mean - ref) <= sd)
    return ok


def format_population_table(summary: dict) -> str:
    ok = within_one_sd(summary)
    lines = [f"{'sex':<4}{'organ':<9}{'quantity':<10}{'n':>4}{'phantom':>16}{'TotalGen T1':>16}  within 1 SD"]
    for (sex, (organ, q)), (mean, sd, n) in sorted(summary.items()):
        ref, rsd = TOTALGEN_TABLE1[(organ, q)][sex]
        lines.append(f"{sex:<4}{organ:<9}{q:<10}{n:>4}{mean:>10.2f} ± {sd:<4.2f}{ref:>10.2f} ± {rsd:<4.2f}  "
                     f"{'yes' if ok[(sex, (organ, q))] else 'NO'}")
    return "\n".join(lines)
