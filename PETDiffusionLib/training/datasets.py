"""Datasets for training: phantom cohorts and folders of NIfTI studies, volumes, 2.5D slices, 3D patches.

Two folder layouts are read, both into the same *roles* (``ct``, ``pet``, ``pet_low``, ``lesions``,
``organs``, ...):

1. A simulator cohort (``petdiffusion phantom`` output)::

       COHORT/case_0000/ct.nii.gz  pet_ac.nii.gz  pet_low_<pct>.nii.gz  pet_nac.nii.gz
                        organs.nii.gz  lesions.nii.gz  case.json  ...

2. A site's own studies in the AutoPET layout (one folder per study, at any depth)::

       ROOT/<patient>/<study>/CTres.nii.gz   CT in HU resampled to the PET grid
                              SUV.nii.gz     PET in SUVbw
                              SEG.nii.gz     lesion mask (0/1)
       optional: PET_LOW.nii.gz (low-count PET, SUV), ORGANS.nii.gz (organ labels)

Every image of a study must lie on one grid (same size); arrays are [Z, Y, X] float32 tensors,
labels int64. A missing file is an InputError that names it.
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import read_image
from PETDiffusionLib.phantom.cohort import case_info, list_cases

log = logging.getLogger(__name__)

COHORT_FILES = {
    "ct": "ct.nii.gz", "pet": "pet_ac.nii.gz", "suv_true": "suv_true.nii.gz",
    "pet_nac": "pet_nac.nii.gz", "pet_delayed": "pet_delayed_ac.nii.gz",
    "pet_delayed_nac": "pet_delayed_nac.nii.gz", "mr": "mr_t1.nii.gz",
    "organs": "organs.nii.gz", "lesions": "lesions.nii.gz",
}
"""Role -> file name in a phantom case folder (PETDiffusionLib/phantom/case.py); ``pet_low`` is
``pet_low_<pct>.nii.gz`` with the percentage chosen by ``low_count_percent``."""

AUTOPET_FILES = {"ct": "CTres.nii.gz", "pet": "SUV.nii.gz", "lesions": "SEG.nii.gz",
                 "pet_low": "PET_LOW.nii.gz", "organs": "ORGANS.nii.gz"}
"""Role -> file name in an AutoPET-style study folder (AutoPET challenge names for CT/SUV/SEG)."""

LABEL_ROLES = frozenset({"organs", "lesions"})


@dataclass
class Study:
    id: str
    folder: Path
    files: dict[str, Path]
    info: dict = field(default_factory=dict)


def _low_count_file(folder: Path, percent: int | None) -> Path | None:
    if percent is not None:
        p = folder / f"pet_low_{percent}.nii.gz"
        return p if p.is_file() else None
    found = sorted(folder.glob("pet_low_*.nii.gz"),
                   key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    return found[0] if found else None  # the lowest count level present


def find_cohort_studies(root: str | Path, roles: Sequence[str],
                        low_count_percent: int | None = None) -> list[Study]:
    """Phantom cases ``root/case_XXXX`` that have every role in ``roles``."""
    studies = []
    for folder in list_cases(root):
        files = {}
        for role in roles:
            path = (_low_count_file(folder, low_count_percent) if role == "pet_low"
                    else folder / COHORT_FILES.get(role, f"{role}.nii.gz"))
            if path is None or not path.is_file():
                want = (f"pet_low_{low_count_percent or '<pct>'}.nii.gz" if role == "pet_low"
                        else COHORT_FILES.get(role, f"{role}.nii.gz"))
                raise InputError(f"case lacks {want} (needed for role {role!r})", folder)
            files[role] = path
        studies.append(Study(folder.name, folder, files, case_info(folder)))
    return studies


def find_autopet_studies(root: str | Path, roles: Sequence[str]) -> list[Study]:
    """Every folder under ``root`` holding SUV.nii.gz (AutoPET layout), with the given roles."""
    root = Path(root)
    studies = []
    for suv in sorted(root.rglob(AUTOPET_FILES["pet"])):
        folder = suv.parent
        files = {}
        for role in roles:
            if role not in AUTOPET_FILES:
                raise InputError(f"role {role!r} has no file in the AutoPET layout "
                                 f"(known: {', '.join(AUTOPET_FILES)})", root)
            path = folder / AUTOPET_FILES[role]
            if not path.is_file():
                raise InputError(f"study lacks {AUTOPET_FILES[role]} (needed for role {role!r})", folder)
            files[role] = path
        studies.append(Study(str(folder.relative_to(root)), folder, files))
    return studies


def find_studies(root: str | Path, roles: Sequence[str], low_count_percent: int | None = None
                 ) -> list[Study]:
    """Either layout, recognised by its files; InputError if the folder holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("training data folder not found", root)
    if any(root.glob("case_*")):
        studies = find_cohort_studies(root, roles, low_count_percent)
    else:
        studies = find_autopet_studies(root, roles)
    if not studies:
        raise InputError("no studies found: expected case_XXXX/ phantom folders or AutoPET-style "
                         "folders with SUV.nii.gz", root)
    return studies


def load_study(study: Study) -> dict[str, torch.Tensor]:
    """Arrays of one study: {role: [Z, Y, X]} (float32, labels int64) plus "spacing" (x, y, z)."""
    out: dict[str, torch.Tensor] = {}
    shape = spacing = None
    for role, path in study.files.items():
        img = read_image(path, pixel_type=None if role in LABEL_ROLES else sitk.sitkFloat32)
        arr = sitk.GetArrayFromImage(img)
        if shape is None:
            shape, spacing = arr.shape, img.GetSpacing()
        elif arr.shape != shape:
            raise InputError(f"size {arr.shape[::-1]} differs from the study's other images "
                             f"{shape[::-1]}; resample them onto one grid", path)
        out[role] = torch.from_numpy(arr.astype(np.int64 if role in LABEL_ROLES else np.float32))
    out["spacing"] = torch.tensor(spacing, dtype=torch.float64)
    return out


class VolumeDataset(Dataset):
    """Whole volumes, one study per item: {"id", role: [Z, Y, X], "spacing"}.

    ``cache``: keep loaded studies in memory (small cohorts, many epochs).
    """

    def __init__(self, root: str | Path, roles: Sequence[str], low_count_percent: int | None = None,
                 cache: bool = True, transform: Callable[[dict], dict] | None = None):
        self.roles = list(roles)
        self.studies = find_studies(root, self.roles, low_count_percent)
        self.cache = {} if cache else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None and i in self.cache:
            item = self.cache[i]
        else:
            item = load_study(self.studies[i])
            if self.cache is not None:
                self.cache[i] = item
        item = {"id": self.studies[i].id, **item}
        return self.transform(item) if self.transform else item


class SliceDataset25D(Dataset):
    """Axial 2.5D samples over a VolumeDataset, one item per (study, slice).

    ``context_roles`` come with ``context`` neighbouring slices on each side as channels
    ([2k+1, Y, X], edges replicated, the same stacking as diffusion.windows.slices_25d);
    ``target_roles`` come as the centre slice only ([1, Y, X]). ``slice_filter(volume_item, z)``
    can drop slices (for example those without body). ``transform`` is applied to each sample.
    """

    def __init__(self, volumes: VolumeDataset, context_roles: Sequence[str],
                 target_roles: Sequence[str], context: int = 1,
                 slice_filter: Callable[[dict, int], bool] | None = None,
                 transform: Callable[[dict], dict] | None = None):
        self.volumes, self.context = volumes, int(context)
        self.context_roles, self.target_roles = list(context_roles), list(target_roles)
        self.transform = transform
        self.index: list[tuple[int, int]] = []
        for i in range(len(volumes)):
            item = volumes[i]
            z = item[self.context_roles[0] if self.context_roles else self.target_roles[0]].shape[0]
            self.index += [(i, k) for k in range(z) if slice_filter is None or slice_filter(item, k)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> dict:
        i, z = self.index[j]
        item = self.volumes[i]
        n = item[(self.context_roles or self.target_roles)[0]].shape[0]
        idx = [min(max(z + o, 0), n - 1) for o in range(-self.context, self.context + 1)]
        out: dict = {"id": item["id"], "z": z}
        for role in self.context_roles:
            out[role] = item[role][idx].float()
        for role in self.target_roles:
            v = item[role][z:z + 1]
            out[role] = v if role in LABEL_ROLES else v.float()
        return self.transform(out) if self.transform else out


class RandomPatchDataset3D(Dataset):
    """Random 3D patches, ``patches_per_volume`` per study per epoch, a fraction centred on lesion
    voxels (AMDiff §3.4 balances lesion-present and lesion-absent patches, after Xia et al. 2024).

    Items: {role: [1, pz, py, px]}; volumes smaller than the patch are zero-padded.
    """

    def __init__(self, volumes: VolumeDataset, roles: Sequence[str], patch_size: Sequence[int],
                 patches_per_volume: int = 4, lesion_fraction: float = 0.5, seed: int = 0,
                 transform: Callable[[dict], dict] | None = None):
        self.volumes, self.roles = volumes, list(roles)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patches_per_volume, self.lesion_fraction = int(patches_per_volume), float(lesion_fraction)
        self.rng = random.Random(seed)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.volumes) * self.patches_per_volume

    def __getitem__(self, j: int) -> dict:
        item = self.volumes[j // self.patches_per_volume]
        shape = item[self.roles[0]].shape
        centre = None
        if "lesions" in item and self.rng.random() < self.lesion_fraction:
            fg = torch.nonzero(item["lesions"] > 0)
            if len(fg):
                centre = fg[self.rng.randrange(len(fg))].tolist()
        starts = []
        for a, (n, p) in enumerate(zip(shape, self.patch_size)):
            hi = max(n - p, 0)
            s = (min(max(centre[a] - p // 2, 0), hi) if centre is not None
                 else self.rng.randint(0, hi))
            starts.append(s)
        out: dict = {"id": item["id"], "start": torch.tensor(starts)}
        for role in self.roles:
            v = item[role][tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))]
            pad = []
            for n, p in reversed(list(zip(v.shape, self.patch_size))):
                pad += [0, p - n]
            if any(pad):
                v = torch.nn.functional.pad(v, pad)
            out[role] = v[None] if role in LABEL_ROLES else v[None].float()
        return self.transform(out) if self.transform else out
