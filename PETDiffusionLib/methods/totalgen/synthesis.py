"""TotalGen's cascade at inference: demographics -> LR PET/CT + organ channels -> HR PET/CT + labels.

1. Global stage: Heun sampling (Karras et al. 2022 Alg. 1/2) of the LR volume (CT, PET, organ-group
   indicators) conditioned on the demographic channels (TotalGen eq. 3).
2. Super-resolution: residual diffusion ``I_SR = upsample(I_LR) + R`` (TotalGen eq. 4) of CT and PET,
   the network run over overlapping z-chunks of the whole volume with Gaussian blending
   (diffusion/windows.py; TotalGen concatenated 224x224x96 partial volumes along z).
3. Organ labels: the LR organ channels upsampled to the HR grid, each voxel given the organ whose
   channel is highest where it exceeds one half: indicators (models of 0.1-0.3) upsampled linearly,
   signed distances (``organ_encoding: sdf``, data.organ_sdf_unit) by cubic B-splines, the
   organ's surface at 0 mm; fat and bone from the HR CT.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.diffusion.edm import EDM, ResidualSuperResolution
from PETDiffusionLib.diffusion.windows import WindowedNet
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.totalgen.data import (FACTOR, HR_SHAPE, HR_SPACING_MM, LR_SHAPE,
                                                   ORGAN_CHANNELS, ORGAN_ENCODINGS)
from PETDiffusionLib.methods.totalgen.intensities import (demographic_channels, demographic_vector,
                                                          position_channels, unit_to_ct, unit_to_pet)
from PETDiffusionLib.methods.totalgen.splines import bspline_upsample

log = logging.getLogger(__name__)

ORGAN_THRESHOLD = 0.5
"""An organ channel (0..1) above one half marks the organ: the mid-point of an indicator's two
classes, the 0 mm surface of a signed distance (data.organ_sdf_unit)."""
FAT_HU = (-190.0, -30.0)
"""Adipose tissue HU window of CT body-composition analysis (Kvist et al. 1988; PHYSICS.md §5 puts
fat at -50..-100 HU)."""
BONE_HU = 200.0
"""Bone above 200 HU (PHYSICS.md §5: cancellous bone about 300 HU, cortical 700-3000 HU)."""
SYNTHETIC_BODY_HU = FAT_HU[0]
"""Body outline of a synthetic CT: tissue is at least fat (FAT_HU, -190 HU). Not BODY_HU (-500 HU,
physics.attenuation): TotalGen's CT window clips at -500 HU (CT_HU_MIN, seed §2.2), so the air and
the empty rows below the sacrum come out a few HU above -500 (median -495 HU, 99.9th percentile
-395 HU in the demo subject of 0.3.0) and '> -500 HU' called the whole box body: organs.nii.gz
labelled the air 'other_soft_tissue', every subject measured about 200 L of body and 768 mm of
trunk. Lungs and bowel gas are not body by this threshold; the lungs are an organ channel."""

OUTPUT_LABELS: dict[int, str] = {
    **{k + 1: name for k, (name, _) in enumerate(ORGAN_CHANNELS)},
    len(ORGAN_CHANNELS) + 1: "fat",
    len(ORGAN_CHANNELS) + 2: "bone",
    len(ORGAN_CHANNELS) + 3: "other_soft_tissue",
}
"""organs.nii.gz classes (the manifest's ``organ_labels``)."""

SR_WINDOW = (64, HR_SHAPE[1], HR_SHAPE[2])
"""Stage-2 chunks: 64 slices by the whole transaxial plane (TotalGen: 96-slice partial volumes)."""
SR_OVERLAP = 0.25


@dataclass
class Synthesis:
    ct_hu: np.ndarray      # [z, y, x] top-first, HR
    suv: np.ndarray
    organs: np.ndarray     # uint8, OUTPUT_LABELS
    lr_unit: np.ndarray    # [C, z, y, x] the stage-1 sample in [0, 1]


def _device(net) -> torch.device:
    return next(net.parameters()).device


def sample_global(net, demo: list[float], steps: int, seed: int, s_churn: float = 0.0,
                  progress=None) -> torch.Tensor:
    """[C, *LR_SHAPE] in network units (2u - 1), on the network's device."""
    cond = demographic_channels(torch.tensor([demo], dtype=torch.float32), LR_SHAPE).to(_device(net))
    n = 2 + len(ORGAN_CHANNELS)
    res = EDM().sample(net, shape=(1, n, *LR_SHAPE), cond=cond, steps=steps, seed=seed,
                       s_churn=s_churn, progress=progress)
    return _from_standard(net, res.samples[0])[0].clamp(-1.0, 1.0)


def _from_standard(net, z: torch.Tensor) -> torch.Tensor:
    """A stage-1 sample back to network units (a standardised network's per-channel statistics,
    networks.EDMUNet3d.to_standard; identity for the 0.x networks without them)."""
    inverse = getattr(net, "from_standard", None)
    return inverse(z) if inverse is not None else z


def sr_condition(demo: list[float]) -> torch.Tensor:
    """[1, 7, *HR_SHAPE]: position z, y, x over the whole HR box, then the demographics."""
    pos = position_channels(HR_SHAPE)[None]
    return torch.cat([pos, demographic_channels(torch.tensor([demo], dtype=torch.float32), HR_SHAPE)], 1)


BOX_MARGIN = 8
"""HR voxels (32 mm) of context kept around the body for stage 2; beyond it the residual is zero."""
BODY_UNIT = 0.25
"""Upsampled CT unit above which stage 2 sees body: -250 HU on TotalGen's [-500, 500] window."""


def body_box(ct_unit: torch.Tensor, margin: int = BOX_MARGIN, multiple: int = 4
             ) -> tuple[slice, slice, slice]:
    """Bounding box (z, y, x slices, sizes multiples of ``multiple``) of ct_unit > BODY_UNIT plus
    ``margin``; the whole volume when there is no body."""
    idx = torch.nonzero(ct_unit > BODY_UNIT)
    shape = ct_unit.shape
    if len(idx) == 0:
        return tuple(slice(0, n) for n in shape)
    out = []
    for d, n in enumerate(shape):
        lo = max(0, int(idx[:, d].min()) - margin)
        hi = min(n, int(idx[:, d].max()) + 1 + margin)
        size = min(n, -(-(hi - lo) // multiple) * multiple)
        lo = max(0, min(lo, n - size))
        out.append(slice(lo, lo + size))
    return tuple(out)


def super_resolve(net, low: torch.Tensor, demo: list[float], steps: int, seed: int,
                  window: tuple[int, int, int] | None = SR_WINDOW, overlap: float = SR_OVERLAP,
                  progress=None) -> torch.Tensor:
    """low [1, 2, *LR_SHAPE] (2u - 1) -> [1, 2, *HR_SHAPE]; ``steps`` 0 = linear upsampling only.

    I_SR = I_LU + R (TotalGen eq. 4, diffusion/edm.py ResidualSuperResolution): R is sampled over
    the body's bounding box (position channels of the whole box, so a crop sees the coordinates it
    was trained with), the network run over z-chunks of ``window`` (transaxial size clipped to the
    box) with Gaussian blending; outside the box R = 0 (air).
    """
    rsr = ResidualSuperResolution(EDM())
    up = rsr.upsample(low, HR_SHAPE)
    if steps <= 0:
        return up
    box = body_box((up[0, 0] + 1) / 2)
    sl = (slice(None), slice(None)) + box
    cond = torch.cat([up, sr_condition(demo).to(up.device)], 1)[sl]
    size = tuple(s.stop - s.start for s in box)
    wnet = net
    if window is not None:
        wnet = WindowedNet(net, tuple(min(w, n) for w, n in zip(window, size)), overlap=overlap)
    res = rsr.edm.sample(wnet, shape=(1, low.shape[1], *size), cond=cond, steps=steps, seed=seed,
                         progress=progress)
    out = up.clone()
    out[sl] = out[sl] + res.samples[0]
    return out.clamp(-1.0, 1.0)


def organ_encoding(card: dict) -> str:
    """A card's organ-channel encoding (``preprocessing.organ_encoding``; "indicator" for the cards
    of 0.1-0.3, written before it existed)."""
    enc = card.get("preprocessing", {}).get("organ_encoding", "indicator")
    if enc not in ORGAN_ENCODINGS:
        raise InputError(f"model {card.get('id')}: preprocessing.organ_encoding {enc!r} is not one "
                         f"of {', '.join(ORGAN_ENCODINGS)}")
    return enc


def upsample_organs(lr_organs_unit: torch.Tensor, encoding: str = "indicator") -> np.ndarray:
    """[n_organs, *LR_SHAPE] channels in [0, 1] -> [n_organs, *HR_SHAPE] on the HR grid.

    Indicators: trilinear (the 0.1-0.3 decoding). Signed distances: cubic B-spline (splines.py; a distance
    field is smooth, and linear interpolation cuts the corners of a thin organ: on 8 held-out
    phantom subjects at three sub-sampling offsets, the exact LR signed distances decode to 85 % of
    the kidneys' volume linearly and 99 % by cubic splines, indicators 90 %)."""
    if encoding == "sdf":
        return bspline_upsample(lr_organs_unit.float().cpu(), FACTOR).numpy()
    return ResidualSuperResolution().upsample(lr_organs_unit[None].float().cpu(), HR_SHAPE)[0].numpy()


def organ_map(lr_organs_unit: torch.Tensor, ct_hu: np.ndarray, encoding: str = "indicator"
              ) -> np.ndarray:
    """[n_organs, *LR_SHAPE] organ channels in [0, 1] -> HR label map (OUTPUT_LABELS)."""
    up = upsample_organs(lr_organs_unit, encoding)
    best = up.argmax(0)
    labels = np.where(up.max(0) > ORGAN_THRESHOLD, best + 1, 0).astype(np.uint8)
    n = len(ORGAN_CHANNELS)
    free = labels == 0
    body = ct_hu >= SYNTHETIC_BODY_HU
    labels[free & body] = n + 3
    labels[free & (ct_hu >= FAT_HU[0]) & (ct_hu <= FAT_HU[1])] = n + 1
    labels[free & (ct_hu > BONE_HU)] = n + 2
    return labels


@torch.no_grad()
def sample_global_batch(net, demos: list[list[float]], steps: int, seed: int, s_churn: float = 0.0
                        ) -> torch.Tensor:
    """Stage 1 for many subjects in one batch ([B, C, *LR_SHAPE], 2u - 1): the noise of all of
    them comes from one generator seeded with ``seed`` (evaluation; a single run uses
    :func:`sample_global`); ``s_churn`` as in :func:`sample_global`."""
    cond = demographic_channels(torch.tensor(demos, dtype=torch.float32), LR_SHAPE).to(_device(net))
    n = 2 + len(ORGAN_CHANNELS)
    res = EDM().sample(net, shape=(len(demos), n, *LR_SHAPE), cond=cond, steps=steps, seed=seed,
                       s_churn=s_churn)
    return _from_standard(net, res.samples[0]).clamp(-1.0, 1.0)


@torch.no_grad()
def finish(networks: dict, lr: torch.Tensor, demo: list[float], sr_steps: int, seed: int,
           window: tuple[int, int, int] | None = SR_WINDOW, progress=None,
           encoding: str = "indicator") -> Synthesis:
    """Stage 2 and the organ labels from one stage-1 sample ``lr`` [C, *LR_SHAPE] (2u - 1)."""
    hr = super_resolve(networks["sr"], lr[None, :2], demo, sr_steps, seed, window,
                       progress=progress)
    unit = ((hr[0] + 1) / 2).cpu().numpy()
    lr_unit = ((lr + 1) / 2).cpu().numpy()
    ct_hu = unit_to_ct(unit[0]).astype(np.float32)
    suv = unit_to_pet(unit[1]).astype(np.float32)
    organs = organ_map(torch.from_numpy(lr_unit[2:]), ct_hu, encoding)
    return Synthesis(ct_hu=ct_hu, suv=suv, organs=organs, lr_unit=lr_unit)


@torch.no_grad()
def synthesize(networks: dict, age: float, sex: str, height_cm: float, weight_kg: float,
               steps: int, sr_steps: int, seed: int, s_churn: float = 0.0,
               window: tuple[int, int, int] | None = SR_WINDOW, progress=None,
               encoding: str = "indicator") -> Synthesis:
    """The whole cascade for one subject (top-first HR arrays on the 4 mm box); ``encoding``: the
    model's organ channels (:func:`organ_encoding` of its card)."""
    report = progress or (lambda f, m="": None)
    demo = demographic_vector(age, sex, height_cm, weight_kg)
    report(0.0, "stage 1: global low-resolution PET/CT")
    lr = sample_global(networks["global"], demo, steps, seed, s_churn,
                       progress=lambda f, m="": report(0.4 * f, "stage 1"))
    report(0.4, "stage 2: super-resolution")
    out = finish(networks, lr, demo, sr_steps, seed + 1, window,
                 progress=lambda f, m="": report(0.4 + 0.55 * f, "stage 2"), encoding=encoding)
    report(1.0, "done")
    return out


def box_image(arr: np.ndarray, pixel_type=None) -> sitk.Image:
    """A top-first HR box -> a SimpleITK image (LPS, identity direction, z superior, 4 mm; the top
    slice, the clavicle level, at z = 0 mm; transaxial centre at x = y = 0)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr[::-1]))
    if pixel_type is not None:
        img = sitk.Cast(img, pixel_type)
    img.SetSpacing((HR_SPACING_MM,) * 3)
    nz, ny, nx = arr.shape
    img.SetOrigin((-(nx - 1) / 2 * HR_SPACING_MM, -(ny - 1) / 2 * HR_SPACING_MM,
                   -(nz - 1) * HR_SPACING_MM))
    return img


def measure(organs: np.ndarray, suv: np.ndarray, ct_hu: np.ndarray) -> dict[str, dict]:
    """Volume (L), SUVmean, SUVmax and CT mean (HU) of each organ of OUTPUT_LABELS."""
    voxel_l = HR_SPACING_MM ** 3 / 1e6
    out = {}
    for lab, name in OUTPUT_LABELS.items():
        m = organs == lab
        out[name] = {"volume_l": float(m.sum() * voxel_l),
                     "suv_mean": float(suv[m].mean()) if m.any() else float("nan"),
                     "suv_max": float(suv[m].max()) if m.any() else float("nan"),
                     "ct_mean_hu": float(ct_hu[m].mean()) if m.any() else float("nan")}
    return out


def body_figures(ct_hu: np.ndarray) -> dict[str, float]:
    """Demographic-response figures: subcutaneous-and-visceral fat volume (L, FAT_HU inside the
    body) and trunk length (mm: slices holding body from the top of the box down)."""
    body = ct_hu >= SYNTHETIC_BODY_HU
    fat = (ct_hu >= FAT_HU[0]) & (ct_hu <= FAT_HU[1])
    rows = np.where(body.sum((1, 2)) > 50)[0]  # slices with > 50 body voxels (3.2 mL at 4 mm)
    return {"fat_l": float(fat.sum() * HR_SPACING_MM ** 3 / 1e6),
            "body_l": float(body.sum() * HR_SPACING_MM ** 3 / 1e6),
            "trunk_length_mm": float((rows.max() + 1) * HR_SPACING_MM) if len(rows) else 0.0}
