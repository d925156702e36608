"""Realism of the phantoms (issue 4) against real data:
- CT numbers: median HU per organ vs the real CT in shared/data/ct_totalseg_example, measured through
  its TotalSegmentator label maps (within 25 HU; lungs 60 HU);
- population: mean organ volume and SUVmean by sex over 40 phantoms within one SD of the AutoPET
  values of TotalGen Table 1."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.phantom.anatomy import LABEL_ID, Grid, build_anatomy, sample_demographics
from PETDiffusionLib.phantom.case import PhantomConfig, case_rng
from PETDiffusionLib.phantom.population import (TOTALGEN_TABLE1, format_population_table, population_table,
                                                within_one_sd)
from PETDiffusionLib.phantom.tissues import ct_map

# organ -> (phantom labels, real TotalSegmentator class names or tissue-type file, tolerance HU)
ORGANS = {
    "liver": (["liver"], ["liver"], 25.0),
    "spleen": (["spleen"], ["spleen"], 25.0),
    "kidneys": (["kidney_left", "kidney_right"], ["kidney_left", "kidney_right"], 25.0),
    "muscle": (["muscle"], "skeletal_muscle", 25.0),
    "fat": (["fat"], "subcutaneous_fat", 25.0),
    "lungs": (["lung_left", "lung_right"], ["lung_upper_lobe_left", "lung_lower_lobe_left",
                                            "lung_upper_lobe_right", "lung_middle_lobe_right",
                                            "lung_lower_lobe_right"], 60.0),
}


def _real_medians(shared_data) -> dict[str, float]:
    root = shared_data / "ct_totalseg_example"
    ref = root / "tests" / "reference_files"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "example_ct_sm.nii.gz")))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "example_seg.nii.gz")))
    names = {v: int(k) for k, v in json.loads((root / "totalsegmentator_total_class_map.json").read_text()).items()}
    out = {}
    for organ, (_, real, _) in ORGANS.items():
        if isinstance(real, str):
            m = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "example_seg_tissue_types" / f"{real}.nii.gz"))) > 0
        else:
            m = np.isin(seg, [names[n] for n in real])
        assert m.sum() > 100, f"real CT has too few {organ} voxels"
        out[organ] = float(np.median(ct[m]))
    return out


def _phantom_medians(n: int = 3) -> dict[str, float]:
    values: dict[str, list[np.ndarray]] = {o: [] for o in ORGANS}
    for i in range(n):
        rng = case_rng(777, i)
        anat = build_anatomy(sample_demographics(rng), Grid(128, 160), rng)
        ct = ct_map(anat, rng)
        for organ, (labels, _, _) in ORGANS.items():
            m = np.isin(anat.organs, [LABEL_ID[n] for n in labels]) & (anat.lesions == 0)
            values[organ].append(ct[m])
    return {o: float(np.median(np.concatenate(v))) for o, v in values.items()}


def test_simulated_ct_numbers_match_the_real_ct_organ_medians(shared_data):
    real = _real_medians(shared_data)
    sim = _phantom_medians()
    print("\norgan     real CT median HU   phantom median HU   difference   tolerance")
    for organ, (_, _, tol) in ORGANS.items():
        print(f"{organ:<10}{real[organ]:>14.0f}{sim[organ]:>20.0f}{sim[organ] - real[organ]:>14.0f}{tol:>12.0f}")
    for organ, (_, _, tol) in ORGANS.items():
        assert abs(sim[organ] - real[organ]) <= tol, organ


def test_population_of_40_phantoms_matches_totalgen_table1_within_one_sd():
    cfg = PhantomConfig(size=64, slices=80)  # same physical FOV, coarser voxels: volumes comparable
    summary = population_table(40, 2024, cfg)
    print("\n" + format_population_table(summary))
    assert sum(n for (sex, key), (_, _, n) in summary.items() if key == ("liver", "volume_l")) == 40
    ok = within_one_sd(summary)
    assert set(k for _, k in ok) == set(TOTALGEN_TABLE1)
    assert all(ok.values()), [k for k, v in ok.items() if not v]
