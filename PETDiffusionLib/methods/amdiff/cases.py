"""AMDiff's view of a cohort case: the arrays its training and its evaluation read.

A case is a ``case_XXXX/`` folder of the cohort layout (:mod:`PETDiffusionLib.phantom.cohort`):
``suv_true``, ``pet_low_<f>``, ``organs``, ``lesions``, optional ``ct`` and ``case.json``. The
simulator's organ names are mapped onto the organ branch's classes
(:data:`~PETDiffusionLib.methods.amdiff.networks.ORGAN_CLASSES`) by :func:`organ_class_lut`.

:class:`SliceSampler` draws the 2.5D training samples: one axial slice of the full-count reference,
the low-count slice with its neighbours (count fraction drawn from the given ones), labels and CT,
a random square crop, and a share of the samples centred on lesion slices (the "adaptive patch
sampling ... to balance lesion-present and lesion-absent samples", AMDiff Sec. 3.2). Every draw
comes from the numpy Generator it is given, so a batch is fixed by the caller's seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.amdiff.networks import ORGAN_CLASSES
from PETDiffusionLib.phantom.cohort import case_index, case_info, list_cases

CT_AIR_HU = -1000.0   # PHYSICS.md Sec. 3: air; the CT value of padding

# Simulator organ names -> organ-branch class (substring match, first hit wins). Lungs and kidneys
# are single classes as in the paper's evaluation (Sec. 3.1).
ORGAN_NAME_MAP: tuple[tuple[str, str], ...] = (
    ("liver", "liver"), ("lung", "lung"), ("kidney", "kidney"), ("spleen", "spleen"),
    ("aorta", "aorta"), ("bone", "bone"), ("skelet", "bone"), ("spine", "bone"),
    ("vertebra", "bone"), ("rib", "bone"), ("pelvi", "bone"), ("femur", "bone"),
    ("marrow", "bone"), ("skull", "bone"), ("muscle", "muscle"),
)


def organ_class_lut(organ_labels: dict) -> np.ndarray:
    """A lookup table simulator label id -> organ-branch class index (0 for unmapped organs)."""
    ids = [int(k) for k in organ_labels]
    lut = np.zeros(max(ids + [0]) + 1, dtype=np.uint8)
    for k, name in organ_labels.items():
        low = str(name).lower()
        for key, cls in ORGAN_NAME_MAP:
            if key in low:
                lut[int(k)] = ORGAN_CLASSES.index(cls)
                break
    return lut


def organ_classes(organs_raw: np.ndarray, organ_labels: dict) -> np.ndarray:
    """A simulator organ label map -> organ-branch classes (uint8)."""
    lut = organ_class_lut(organ_labels)
    return lut[np.clip(organs_raw.astype(np.int64), 0, len(lut) - 1)]


@dataclass
class CaseArrays:
    name: str
    suv: np.ndarray                   # full-count reference, float32 [Z,Y,X]
    low: dict[int, np.ndarray]        # fraction -> low-count SUV, float16
    organs: np.ndarray                # organ-branch classes, uint8
    lesions: np.ndarray               # binary, uint8
    ct: np.ndarray | None             # HU, float16
    lesion_slices: np.ndarray
    organs_annotated: bool = True     # False: the organ map is empty, not a label map (real PET)


def read_array(path: Path) -> np.ndarray:
    """The voxel array of one cohort file; InputError naming it when it is missing."""
    if not path.is_file():
        raise InputError("cohort file missing", path)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def load_case(case_dir: Path, fractions: list[int]) -> CaseArrays:
    info = case_info(case_dir)
    organs = organ_classes(read_array(case_dir / "organs.nii.gz"), info.get("organ_labels", {}))
    lesions = (read_array(case_dir / "lesions.nii.gz") > 0).astype(np.uint8)
    ct = read_array(case_dir / "ct.nii.gz").astype(np.float16) \
        if (case_dir / "ct.nii.gz").is_file() else None
    return CaseArrays(
        name=case_dir.name, suv=read_array(case_dir / "suv_true.nii.gz").astype(np.float32),
        low={f: read_array(case_dir / f"pet_low_{f}.nii.gz").astype(np.float16) for f in fractions},
        organs=organs, lesions=lesions, ct=ct,
        lesion_slices=np.nonzero(lesions.reshape(lesions.shape[0], -1).any(1))[0],
        organs_annotated=bool(info.get("organs_annotated", True)))


def pad_case(c: CaseArrays, size: int) -> CaseArrays:
    """Pad a case in-plane to at least ``size`` x ``size`` (SUV 0, air in the CT, no labels), so
    that crops of small real volumes stack with the phantom's."""
    _, ny, nx = c.suv.shape
    py, px = max(0, size - ny), max(0, size - nx)
    if not py and not px:
        return c
    pads = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))

    def pad(a: np.ndarray, value: float = 0) -> np.ndarray:
        return np.pad(a, pads, constant_values=value)
    return CaseArrays(c.name, pad(c.suv), {f: pad(v) for f, v in c.low.items()}, pad(c.organs),
                      pad(c.lesions), None if c.ct is None else pad(c.ct, CT_AIR_HU),
                      c.lesion_slices, c.organs_annotated)


class SliceSampler:
    """Random 2.5D training samples (see the module docstring).

    ``extra``: a second set of cases (e.g. real PET), drawn with probability ``extra_fraction``.
    """

    def __init__(self, cases: list[CaseArrays], fractions: list[int], patch: int, context: int = 1,
                 lesion_slice_fraction: float = 0.5, ct_dropout: float = 0.5,
                 extra: list[CaseArrays] | None = None, extra_fraction: float = 0.0):
        if not cases:
            raise InputError("no training cases to sample from")
        self.cases, self.extra = cases, extra or []
        self.fractions, self.patch, self.k = list(fractions), int(patch), int(context)
        self.lesion_slice_fraction, self.ct_dropout = lesion_slice_fraction, ct_dropout
        self.extra_fraction = extra_fraction

    def _one(self, rng: np.random.Generator):
        k = self.k
        pool = self.extra if self.extra and rng.random() < self.extra_fraction else self.cases
        c = pool[rng.integers(len(pool))]
        frac = self.fractions[rng.integers(len(self.fractions))]
        z_n, y_n, x_n = c.suv.shape
        on_lesion = len(c.lesion_slices) and rng.random() < self.lesion_slice_fraction
        z = int(rng.choice(c.lesion_slices)) if on_lesion else int(rng.integers(z_n))
        p = min(self.patch, y_n, x_n)
        if on_lesion:
            ys, xs = np.nonzero(c.lesions[z])
            i = rng.integers(len(ys))
            y0 = int(np.clip(ys[i] - rng.integers(p), 0, y_n - p))
            x0 = int(np.clip(xs[i] - rng.integers(p), 0, x_n - p))
        else:
            y0, x0 = int(rng.integers(y_n - p + 1)), int(rng.integers(x_n - p + 1))
        zs = np.clip(np.arange(z - k, z + k + 1), 0, z_n - 1)
        sl = (slice(y0, y0 + p), slice(x0, x0 + p))
        low = c.low[frac][zs][(slice(None),) + sl].astype(np.float32)
        ct_ok = c.ct is not None and rng.random() >= self.ct_dropout
        ct = c.ct[z][sl].astype(np.float32) if ct_ok else None
        out = [low, c.suv[z][sl][None], c.organs[z][sl][None], c.lesions[z][sl][None]]
        if rng.random() < 0.5:  # left-right flip
            out = [a[..., ::-1] for a in out]
            ct = None if ct is None else ct[..., ::-1]
        return out, ct, c.organs_annotated

    def batch(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        items = [self._one(rng) for _ in range(n)]
        low = torch.from_numpy(np.stack([it[0][0] for it in items]).copy())
        suv = torch.from_numpy(np.stack([it[0][1] for it in items]).copy())
        organs = torch.from_numpy(np.stack([it[0][2] for it in items]).astype(np.int64))
        lesions = torch.from_numpy(np.stack([it[0][3] for it in items]).astype(np.int64))
        ct = torch.zeros_like(suv)
        has_ct = torch.zeros(n)
        for i, (_, c, _) in enumerate(items):
            if c is not None:
                ct[i, 0] = torch.from_numpy(c.copy())
                has_ct[i] = 1
        annotated = torch.tensor([it[2] for it in items], dtype=torch.bool)
        return {"low": low, "suv": suv, "organs": organs, "lesions": lesions, "ct": ct,
                "has_ct": has_ct, "organs_annotated": annotated}


def split_cases(cohort: str | Path, val_case_indices=(), val_cases: int = 0
                ) -> tuple[list[Path], list[Path]]:
    """(training, validation) case folders of a cohort: the cases with the given indices validate
    (every other case trains), else the last ``val_cases`` cases (at least one case trains)."""
    dirs = list_cases(cohort)
    if val_case_indices:
        wanted = {int(i) for i in val_case_indices}
        return ([d for d in dirs if case_index(d) not in wanted],
                [d for d in dirs if case_index(d) in wanted])
    n_val = min(int(val_cases), max(0, len(dirs) - 1))
    return dirs[:len(dirs) - n_val], dirs[len(dirs) - n_val:]
