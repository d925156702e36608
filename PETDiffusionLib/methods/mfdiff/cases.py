"""Training cases of the restore task in memory, and the 2.5D patch sampler of both stages.

A case is a cohort folder in the phantom layout (:mod:`PETDiffusionLib.phantom.cohort`) on the
4 x 4 x 5 mm working grid: the standard-dose target (``pet_ac`` for the simulator's cohorts: the
full-count OSEM image; ``suv_true`` for the real sarcoma cohort of
:mod:`PETDiffusionLib.training.real_sts`, where it is the real clinical PET), the low-dose images
``pet_low_<f>`` and the guides ``mr_t1`` / ``ct`` that exist. Everything is held in network units
(:func:`~PETDiffusionLib.methods.mfdiff.networks.pet_to_x`, ``guide_to_x``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.mfdiff.networks import GUIDES, guide_to_x, pet_to_x

GUIDE_FILES = {"mr": "mr_t1.nii.gz", "ct": "ct.nii.gz"}
TARGET_FILES = ("pet_ac.nii.gz", "suv_true.nii.gz")   # first found is the standard-dose target
BODY_SUV = 0.05
"""SUV above which a voxel counts as body when choosing training slices (real_sts.BODY_SUV)."""


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))


@dataclass
class RestoreCase:
    name: str
    target: np.ndarray                 # [Z, Y, X] x units
    lows: dict[int, np.ndarray]        # count percent -> [Z, Y, X] x units
    guides: dict[str, np.ndarray]      # "mr" / "ct" -> [Z, Y, X] guide units
    body_slices: np.ndarray            # z indices with body


def load_case(case_dir: Path, fractions, guides=GUIDES, pad_to: int = 0) -> RestoreCase:
    """One case; in-plane padded to at least ``pad_to`` (PET 0 SUV, guide -1 = air)."""
    case_dir = Path(case_dir)
    tgt = next((case_dir / f for f in TARGET_FILES if (case_dir / f).is_file()), None)
    if tgt is None:
        raise InputError(f"no standard-dose image ({' or '.join(TARGET_FILES)})", case_dir)
    suv = _read(tgt)
    lows = {}
    for f in fractions:
        p = case_dir / f"pet_low_{int(f)}.nii.gz"
        if not p.is_file():
            raise InputError(f"missing {p.name}", case_dir)
        lows[int(f)] = pet_to_x(torch.from_numpy(_read(p))).numpy()
    gds = {g: guide_to_x(_read(case_dir / GUIDE_FILES[g]), g) for g in guides
           if (case_dir / GUIDE_FILES[g]).is_file()}
    if not gds:
        raise InputError(f"no guide image ({', '.join(GUIDE_FILES[g] for g in guides)})", case_dir)
    target = pet_to_x(torch.from_numpy(suv)).numpy()
    z, y, x = suv.shape
    py, px = max(0, pad_to - y), max(0, pad_to - x)
    if py or px:
        pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
        target = np.pad(target, pads, constant_values=-1.0)
        lows = {k: np.pad(v, pads, constant_values=-1.0) for k, v in lows.items()}
        gds = {k: np.pad(v, pads, constant_values=-1.0) for k, v in gds.items()}
    body = np.nonzero((suv > BODY_SUV).reshape(z, -1).mean(1) > 0.02)[0]
    return RestoreCase(case_dir.name, target, lows, gds, body if body.size else np.arange(z))


class PatchSampler:
    """Random 2.5D patches: a case, a count fraction, a guide the case has, a body slice, a patch
    whose centre lies inside the body. ``batch(n, rng)`` -> dict of tensors:
    ``target`` [n,1,P,P], ``low`` [n,2k+1,P,P], ``guide`` [n,2k+1,P,P], ``modality`` [n]."""

    def __init__(self, cases: list[RestoreCase], patch: int, context: int,
                 ct_probability: float = 0.5, weights: list[float] | None = None):
        if not cases:
            raise InputError("no training cases")
        self.cases, self.patch, self.k = cases, int(patch), int(context)
        self.ct_p = float(ct_probability)
        w = np.ones(len(cases)) if weights is None else np.asarray(weights, float)
        self.p = w / w.sum()    # case probabilities (single-stage mixed training weighs cohorts)

    def _stack(self, vol: np.ndarray, z: int, ys: slice, xs: slice) -> np.ndarray:
        idx = np.clip(np.arange(z - self.k, z + self.k + 1), 0, vol.shape[0] - 1)
        return vol[idx][:, ys, xs]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        case = self.cases[int(rng.choice(len(self.cases), p=self.p))]
        frac = list(case.lows)[int(rng.integers(len(case.lows)))]
        have = list(case.guides)
        g = ("ct" if rng.random() < self.ct_p else "mr") if len(have) == 2 else have[0]
        z = int(case.body_slices[int(rng.integers(len(case.body_slices)))])
        _, h, w = case.target.shape
        p = self.patch
        body = np.argwhere(case.target[z] > -0.98)
        if len(body):
            cy, cx = body[int(rng.integers(len(body)))]
        else:
            cy, cx = h // 2, w // 2
        y0 = int(np.clip(cy - p // 2, 0, h - p))
        x0 = int(np.clip(cx - p // 2, 0, w - p))
        ys, xs = slice(y0, y0 + p), slice(x0, x0 + p)
        return (case.target[z, ys, xs][None], self._stack(case.lows[frac], z, ys, xs),
                self._stack(case.guides[g], z, ys, xs), GUIDES.index(g))

    def batch(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        items = [self.sample(rng) for _ in range(n)]
        return {"target": torch.from_numpy(np.stack([i[0] for i in items])),
                "low": torch.from_numpy(np.stack([i[1] for i in items])),
                "guide": torch.from_numpy(np.stack([i[2] for i in items])),
                "modality": torch.tensor([i[3] for i in items], dtype=torch.long)}
