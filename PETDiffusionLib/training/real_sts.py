"""Low-count versions of real PET: a cohort for fine-tuning and validating on real PET texture.

The IBSI soft-tissue-sarcoma crops (``../shared/data/petct_sts_more``: real FDG PET in SUVbw with
expert GTV contours, CT for most cases) are standard-count clinical images. Low-count versions are
made the way low-count training data are made from clinical scans (AMDiff Sec. 3.1: list-mode
subsampling): the real image is taken as the activity, projected with the attenuation of its own CT,
given Poisson noise at the simulator's standard count level, thinned to each count fraction and
reconstructed by OSEM (:mod:`PETDiffusionLib.physics.acquisition`). No PSF is applied in the
forward model because the real image already carries the scanner's resolution.

Every case is written in the phantom cohort's layout (``case_XXXX/`` with ``suv_true``,
``pet_low_<f>``, ``lesions``, ``organs``, ``ct``, ``case.json``) on the model's working grid, so the
training recipe and the evaluation read it unchanged. The organ map is empty and ``case.json`` says
``"organs_annotated": false``: the organ branch is not trained or scored on these cases.

The ``split`` key in ``case.json`` is ``finetune`` or ``validation``; the split is fixed by case id
(every third case validates), so it never depends on what is on disk.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.io.images import array_and_image, to_working_grid, write_image
from PETDiffusionLib.phantom.cohort import case_info
from PETDiffusionLib.physics.acquisition import AcquisitionConfig, reconstruct, simulate_scan
from PETDiffusionLib.physics.attenuation import hu_to_mu
# the split rule lives with the task (issue 13): training imports it, never the other way
from PETDiffusionLib.tasks.denoise_segment.realval import EXCLUDED, split_of

log = logging.getLogger(__name__)

WORKING_SPACING_MM = (4.0, 4.0, 5.0)  # the denoise-segment model's working grid (its card)
SOFT_TISSUE_MU_PER_CM = 0.096         # PHYSICS.md Sec. 3: water/soft tissue at 511 keV
BODY_SUV = 0.05                       # SUV above which a voxel of a crop without CT is body
CT_AIR_HU = -1000.0                   # PHYSICS.md Sec. 3: air


def _square_pad(arrs: list[np.ndarray], values: list[float]) -> tuple[list[np.ndarray], tuple]:
    """Pad [Z,Y,X] arrays to a square, even in-plane size (the projector's image is n x n)."""
    _, ny, nx = arrs[0].shape
    n = max(ny, nx)
    n += n % 2
    py, px = n - ny, n - nx
    pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
    return [np.pad(a, pads, constant_values=v) for a, v in zip(arrs, values)], pads


def simulate_low_count(suv: np.ndarray, mu: np.ndarray, spacing_xyz, fractions, seed: int
                       ) -> dict[int, np.ndarray]:
    """OSEM reconstructions of ``suv`` at each count fraction (percent), same shape as ``suv``."""
    if abs(spacing_xyz[0] - spacing_xyz[1]) > 1e-3:
        raise InputError(f"in-plane spacing must be square, got {spacing_xyz[:2]}")
    cfg = AcquisitionConfig(psf_fwhm_mm=0.0)  # the real image already has the scanner's resolution
    (s_pad, m_pad), pads = _square_pad([suv, mu], [0.0, 0.0])
    rng = np.random.default_rng(seed)
    # 75 kg: SUV -> Bq/mL uses dose / weight, and the dose is per kg, so the count level per SUV
    # does not depend on this value (acquisition.decayed_dose_bq)
    scan = simulate_scan(s_pad, m_pad, tuple(spacing_xyz), 75.0, cfg.uptake_min, cfg, rng)
    out = {}
    sl = (slice(None), slice(pads[1][0], pads[1][0] + suv.shape[1]),
          slice(pads[2][0], pads[2][0] + suv.shape[2]))
    for f in fractions:
        vol = reconstruct(scan, f / 100.0, s_pad.shape, spacing_xyz, cfg, rng, attenuation=True)
        out[int(f)] = np.clip(vol[sl], 0, None).astype(np.float32)
    return out


def build_case(src: Path, dst: Path, index: int, fractions, seed: int) -> dict:
    pet_path, gtv_path = src / "PET_image.nii.gz", src / "PET_mask.nii.gz"
    for p in (pet_path, gtv_path):
        if not p.is_file():
            raise InputError("missing file of a sarcoma case", p)
    work = to_working_grid(sitk.ReadImage(str(pet_path), sitk.sitkFloat32), WORKING_SPACING_MM)
    suv = np.clip(sitk.GetArrayFromImage(work), 0, None).astype(np.float32)
    gtv = sitk.ReadImage(str(gtv_path))
    gtv_w = sitk.Resample(sitk.Cast(gtv, sitk.sitkUInt8), work, sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    les = (sitk.GetArrayFromImage(gtv_w) > 0).astype(np.uint8)
    ct_path = src / "CT_image.nii.gz"
    ct = None
    if ct_path.is_file():
        ct_img = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
        ct = sitk.GetArrayFromImage(sitk.Resample(ct_img, work, sitk.Transform(), sitk.sitkLinear,
                                                  CT_AIR_HU, sitk.sitkFloat32))
        mu = hu_to_mu(ct, 120.0).astype(np.float32)
    else:
        mu = np.where(suv > BODY_SUV, SOFT_TISSUE_MU_PER_CM, 0.0).astype(np.float32)
    lows = simulate_low_count(suv, mu, work.GetSpacing(), fractions, seed)
    dst.mkdir(parents=True, exist_ok=True)
    write_image(work, dst / "suv_true.nii.gz", units="SUVbw", synthetic=False,
                description=f"real PET {src.name} on the working grid")
    for f, arr in lows.items():
        write_image(array_and_image(arr, work), dst / f"pet_low_{f}.nii.gz", units="SUVbw", synthetic=True,
                    description=f"simulated {f}% counts from real PET {src.name}")
    for name, arr in (("lesions", les), ("organs", np.zeros_like(les))):
        write_image(array_and_image(arr, work), dst / f"{name}.nii.gz")
    if ct is not None:
        write_image(array_and_image(ct.astype(np.float32), work), dst / "ct.nii.gz", units="HU",
                    synthetic=False)
    info = {"synthetic": False, "source": str(src), "source_id": src.name, "index": index,
            "split": split_of(src.name), "organs_annotated": False, "organ_labels": {},
            "lesion_source": "expert GTV (PET_mask.nii.gz)", "ct": ct is not None,
            "grid": {"size_xyz": list(work.GetSize()), "spacing_mm_xyz": list(work.GetSpacing())},
            "low_count": {"fractions_percent": [int(f) for f in fractions], "seed": seed,
                          "method": "real PET as activity, attenuation from its CT (or soft tissue "
                                    "inside the body), Poisson at the simulator's standard level, "
                                    "binomial thinning, OSEM; no PSF in the forward model"},
            "gtv_ml": float(les.sum() * np.prod(work.GetSpacing()) / 1000.0),
            "suvmax": float(suv.max())}
    atomic_write_text(dst / "case.json", json.dumps(info, indent=1))
    return info


def build_cohort(data_dir: str | Path, out: str | Path, fractions=(25, 10, 5), seed: int = 7
                 ) -> list[dict]:
    """Every STS case of ``data_dir`` (minus :data:`EXCLUDED`) -> ``out/case_XXXX``."""
    data_dir, out = Path(data_dir), Path(out)
    srcs = sorted(p for p in data_dir.glob("STS_*") if p.is_dir() and p.name not in EXCLUDED)
    if not srcs:
        raise InputError("no STS_* case folders", data_dir)
    infos = []
    for src in srcs:
        n = int(src.name.split("_")[-1])
        dst = out / f"case_{n:04d}"
        if (dst / "case.json").is_file():
            infos.append(case_info(dst))
            continue
        t0 = time.monotonic()
        infos.append(build_case(src, dst, n, fractions, seed + n))
        log.info("%s -> %s (%s) in %.1f s", src.name, dst.name, infos[-1]["split"],
                 time.monotonic() - t0)
    (out / "COMPLETE").write_text("")
    return infos
