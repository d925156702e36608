"""The metadata keys that travel with every image, and the helpers that set and read them.

A module of its own so that both the image-file layer (:mod:`PETDiffusionLib.io.images`) and the
DICOM reader (:mod:`PETDiffusionLib.io.dicom`) use one definition without importing each other.

Keys (ARCHITECTURE.md, "Contracts"): ``PETDiffusion.units`` = ``SUVbw``, ``HU``, ``Bq/mL``,
``1/cm``, ``label``; ``PETDiffusion.synthetic`` = ``1`` for model outputs;
``PETDiffusion.warnings`` = the reader's warnings about the input (for example irregular DICOM slice
steps resampled onto a regular grid), joined by ``" | "``, so that a task's manifest can carry them.
"""
from __future__ import annotations

import SimpleITK as sitk

UNITS_KEY = "PETDiffusion.units"
SYNTHETIC_KEY = "PETDiffusion.synthetic"
DESCRIPTION_KEY = "PETDiffusion.description"
WARNINGS_KEY = "PETDiffusion.warnings"
_WARNINGS_SEP = " | "


def get_units(img: sitk.Image) -> str | None:
    return img.GetMetaData(UNITS_KEY) if img.HasMetaDataKey(UNITS_KEY) else None


def set_units(img: sitk.Image, units: str | None, synthetic: bool | None = None,
              description: str | None = None) -> sitk.Image:
    if units is not None:
        img.SetMetaData(UNITS_KEY, units)
    if synthetic is not None:
        img.SetMetaData(SYNTHETIC_KEY, "1" if synthetic else "0")
    if description is not None:
        img.SetMetaData(DESCRIPTION_KEY, description)
    return img


def is_synthetic(img: sitk.Image) -> bool:
    return img.HasMetaDataKey(SYNTHETIC_KEY) and img.GetMetaData(SYNTHETIC_KEY) == "1"


def copy_metadata(src: sitk.Image, dst: sitk.Image) -> sitk.Image:
    """Copy every metadata key of ``src`` onto ``dst`` (SimpleITK filters drop them)."""
    for k in src.GetMetaDataKeys():
        dst.SetMetaData(k, src.GetMetaData(k))
    return dst


def add_warning(img: sitk.Image, message: str) -> sitk.Image:
    """Record a reader warning in the image (see the module docstring)."""
    old = get_warnings(img)
    if message not in old:
        img.SetMetaData(WARNINGS_KEY, _WARNINGS_SEP.join([*old, message]))
    return img


def get_warnings(img: sitk.Image) -> list[str]:
    """The reader warnings recorded in ``img`` by :func:`add_warning` ([] when none)."""
    if not img.HasMetaDataKey(WARNINGS_KEY):
        return []
    return [w for w in img.GetMetaData(WARNINGS_KEY).split(_WARNINGS_SEP) if w]
