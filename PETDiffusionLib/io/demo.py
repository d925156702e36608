"""Demo step: a synthetic PET DICOM series with realistic SUV headers, read back and converted to SUV.

PHYSICS.md §1 worked number: 70 kg, 250 MBq, scan 60 min after injection -> decayed dose 171.1 MBq
-> SUV 1 corresponds to 2.44 kBq/mL. The phantom holds a background of SUV 1.0, a hot sphere of
SUV 4.0 and a cold sphere of SUV 0.2 (the IBSI DRO design), is written as Bq/mL (Units BQML,
DecayCorrection START), read back through :mod:`PETDiffusionLib.io.dicom` and checked.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.io.dicom import find_series, read_pet_suv
from PETDiffusionLib.io.dicom_export import PETHeader, write_dicom_series
from PETDiffusionLib.io.images import set_units, write_image

log = logging.getLogger(__name__)

# PHYSICS.md §1 worked example.
DEMO_WEIGHT_KG = 70.0
DEMO_DOSE_BQ = 250e6
DEMO_UPTAKE = timedelta(minutes=60)
# IBSI SUV DRO design (suv_dro_ibsi/docs): background 1.00, hot 4.00, cold 0.20 SUVbw.
BACKGROUND_SUV, HOT_SUV, COLD_SUV = 1.0, 4.0, 0.2


def demo_phantom(size: int = 48, slices: int = 16, spacing_mm: float = 4.0) -> sitk.Image:
    """A cylinder of SUV 1 with a hot (SUV 4) and a cold (SUV 0.2) sphere, in SUVbw."""
    z, y, x = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    arr = np.zeros((slices, size, size), np.float32)
    arr[(x - c) ** 2 + (y - c) ** 2 <= (0.42 * size) ** 2] = BACKGROUND_SUV
    zc = (slices - 1) / 2.0
    r = 0.12 * size
    arr[(x - c + 0.2 * size) ** 2 + (y - c) ** 2 + ((z - zc) * 1.0) ** 2 <= r ** 2] = HOT_SUV
    arr[(x - c - 0.2 * size) ** 2 + (y - c) ** 2 + ((z - zc) * 1.0) ** 2 <= r ** 2] = COLD_SUV
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing_mm, spacing_mm, spacing_mm))
    img.SetOrigin((-c * spacing_mm, -c * spacing_mm, 0.0))
    return set_units(img, "SUVbw", synthetic=True)


def demo_dicom_suv(out_dir: Path) -> list[str]:
    """Write the synthetic PET DICOM series, read it back, convert to SUV; lines saying what was found."""
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "pet_dicom"
    injection = datetime(2025, 1, 1, 10, 0, 0)
    header = PETHeader(weight_kg=DEMO_WEIGHT_KG, dose_bq=DEMO_DOSE_BQ, injection_time=injection,
                       series_time=injection + DEMO_UPTAKE, sex="F", height_m=1.70, age_years=55)
    phantom = demo_phantom()
    files = write_dicom_series(phantom, dicom_dir, "PT", pet=header, units="BQML", synthetic=True,
                               description="demo PET phantom",
                               derivation="procedural phantom: SUV 1 background, SUV 4 and 0.2 spheres")
    series = find_series(dicom_dir)
    info = series[0]
    suv, factor = read_pet_suv(info)
    write_image(suv, out_dir / "pet_suv.nii.gz", synthetic=True)
    arr = sitk.GetArrayFromImage(suv)
    truth = sitk.GetArrayFromImage(phantom)
    region = {name: arr[truth == v] for name, v in
              (("background", BACKGROUND_SUV), ("hot sphere", HOT_SUV), ("cold sphere", COLD_SUV))}
    bq_per_suv1 = 1.0 / factor.factor
    lines = [
        f"wrote {len(files)} synthetic PET DICOM slices to {dicom_dir} "
        f"(ImageType {'/'.join(info.headers[0].ImageType)}, '{info.description}')",
        f"read back: {info.modality} series, {info.n_slices} slices, size {info.size}, "
        f"spacing {tuple(round(s, 2) for s in info.spacing)} mm, SUV computable: {info.suv_ok}",
        f"headers: Units {info.headers[0].Units}, DecayCorrection {info.headers[0].DecayCorrection}, "
        f"weight {DEMO_WEIGHT_KG:g} kg, dose {DEMO_DOSE_BQ / 1e6:g} MBq, "
        f"uptake {DEMO_UPTAKE.total_seconds() / 60:g} min",
        f"decayed dose {factor.decayed_dose_bq / 1e6:.2f} MBq; SUV 1 = {bq_per_suv1 / 1000:.3f} kBq/mL "
        f"(PHYSICS.md §1 worked number: 171.1 MBq, 2.44 kBq/mL)",
        f"SUVbw factor {factor.factor:.6g} mL/Bq; rule: {factor.rule}",
    ]
    for name, v in region.items():
        lines.append(f"{name}: SUVbw mean {float(v.mean()):.3f} (min {float(v.min()):.3f}, "
                     f"max {float(v.max()):.3f}, {v.size} voxels)")
    lines.append(f"wrote {out_dir / 'pet_suv.nii.gz'} (units SUVbw, marked synthetic)")
    return lines
