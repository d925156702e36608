"""Warnings for a denoise-segment input the model was not made for (issue 13, "Bad input").

A PET whose voxel size is outside what the model supports, or whose count level is far outside the
model's training data, still runs, but the report and the manifest say so in a sentence a reader
can act on, instead of returning silent output.

What the model supports is read from its card:

- ``preprocessing.supported_spacing_mm = {"inplane": [lo, hi], "slice": [lo, hi]}`` (mm);
- ``inference.noise_index_range = [lo, hi]``: the noise index (:func:`PETDiffusionLib.quant.noise.
  noise_index`, in sqrt(SUV)) over the training data.

A card without a field gives no warning of that kind (see each function).
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.errors import ModelError
from PETDiffusionLib.physics.lowcount import body_outline
from PETDiffusionLib.quant.noise import noise_index

# "Far outside training" (issue 13): an index below lo / 1.5 or above hi x 1.5. The noise index
# scales as 1/sqrt(counts) (quant/noise.py), so 1.5 in the index is 2.25 in the count level: a
# study with less than ~44 % of the lowest, or over 2.25 x the highest, count level trained on.
# This project's margin (issue 13 brief H3), not a published figure.
FAR_FACTOR = 1.5


def _range(card: dict, section: str, *keys: str) -> tuple[float, float] | None:
    """``card[section][keys...]`` as (lo, hi); None when the card lacks it; ModelError if malformed."""
    value = card.get(section, {})
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    where = ".".join((section,) + keys)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"model card {card.get('id', '?')}: {where} must be [lo, hi], "
                         f"got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ModelError(f"model card {card.get('id', '?')}: {where} must be [lo, hi] with "
                         f"0 < lo <= hi, got {value!r}")
    return lo, hi


def axial_spacing(img: sitk.Image) -> tuple[float, float, float]:
    """(in-plane, in-plane, slice) spacing in mm: the slice axis is the image axis closest to the
    patient's head-feet axis (so a sagittal or coronal series is judged like the axial one it is
    reoriented to on the working grid)."""
    direction = np.abs(np.array(img.GetDirection(), float).reshape(3, 3))
    spacing = img.GetSpacing()
    slice_axis = int(np.argmax(direction[2]))          # row 2: each axis' head-feet component
    inplane = [spacing[i] for i in range(3) if i != slice_axis]
    return inplane[0], inplane[1], spacing[slice_axis]


def voxel_size_warnings(pet_img: sitk.Image, card: dict,
                        outputs: str = "the denoised PET and the lesion masks") -> list[str]:
    """One sentence per spacing (in-plane, slice) outside the card's
    ``preprocessing.supported_spacing_mm`` ranges; [] when inside.

    A card without ``supported_spacing_mm`` (the shipped cards up to amdiff-sts-2p5d) gives no
    spacing warning: its model resamples every input to its working grid
    (``preprocessing.spacing_mm``) and back, so it has no native-resolution range to leave."""
    sx, sy, sz = axial_spacing(pet_img)
    out = []
    for kind, values in (("in-plane", (sx, sy)), ("slice", (sz,))):
        rng = _range(card, "preprocessing", "supported_spacing_mm",
                     "inplane" if kind == "in-plane" else "slice")
        if rng is None:
            continue
        lo, hi = rng
        if all(lo <= v <= hi for v in values):
            continue
        shown = " x ".join(f"{v:.2f}" for v in values)
        side = "below" if min(values) < lo else "above"
        out.append(f"voxel size outside what the model supports: the PET's {kind} spacing "
                   f"{shown} mm is {side} the supported {lo:g}-{hi:g} mm (model "
                   f"{card.get('id', '?')}, card preprocessing.supported_spacing_mm); {outputs} "
                   f"may be unreliable: resample the PET to "
                   f"{'an' if kind == 'in-plane' else 'a'} {kind} spacing within "
                   f"{lo:g}-{hi:g} mm or use a model trained for it")
    return out


def count_level_warning(index: float | None, card: dict) -> str | None:
    """A sentence when the input's noise index is below lo / :data:`FAR_FACTOR` or above
    hi x :data:`FAR_FACTOR` of the card's ``inference.noise_index_range``; None otherwise.

    None also when the card has no range (the shipped cards up to amdiff-sts-2p5d) or when the index
    is None or NaN (too little signal to measure it: quant/noise.py)."""
    rng = _range(card, "inference", "noise_index_range")
    if rng is None or index is None or not math.isfinite(index):
        return None
    lo, hi = rng
    if index < lo / FAR_FACTOR:
        what = (f"below {lo:g} / {FAR_FACTOR:g} = {lo / FAR_FACTOR:.3g}: the input is much less "
                "noisy (more counts) than any study the model was trained on, and it may smooth "
                "away real detail")
    elif index > hi * FAR_FACTOR:
        what = (f"above {hi:g} x {FAR_FACTOR:g} = {hi * FAR_FACTOR:.3g}: the input is much noisier "
                "(fewer counts) than any study the model was trained on, and it may leave noise or "
                "invent structure")
    else:
        return None
    return (f"count level far outside training: the input's noise index {index:.3g} sqrt(SUV) is "
            f"{what} (model {card.get('id', '?')} trained on noise indices {lo:g}-{hi:g}, card "
            f"inference.noise_index_range); check the denoised PET against the input")


def input_noise_index(pet_img: sitk.Image, denoised_img: sitk.Image) -> float:
    """The noise index of the input PET against the model's denoised PET (same grid), over the
    body outline of the input (physics/lowcount.py body_outline)."""
    low = np.clip(sitk.GetArrayFromImage(pet_img).astype(np.float32), 0, None)
    den = sitk.GetArrayFromImage(denoised_img).astype(np.float32)
    return noise_index(low, den, body_outline(low, pet_img.GetSpacing()))


def input_warnings(pet_img: sitk.Image, denoised_img: sitk.Image, card: dict
                   ) -> tuple[list[str], float | None]:
    """Every warning for this input and model (voxel size, count level) and the noise index
    (None when too little signal to measure it; JSON has no NaN)."""
    index = input_noise_index(pet_img, denoised_img)
    index = round(index, 5) if math.isfinite(index) else None
    warnings = voxel_size_warnings(pet_img, card)
    count = count_level_warning(index, card)
    if count:
        warnings.append(count)
    return warnings, index
