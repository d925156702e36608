"""Image files (NIfTI, NRRD, MHA) through SimpleITK, with units and provenance kept in metadata.

Units travel with the image as SimpleITK metadata keys (``PETDiffusion.units`` = ``SUVbw``, ``HU``,
``Bq/mL``, ``1/cm``, ``label``; ``PETDiffusion.synthetic`` = ``1`` for model outputs). NRRD and MHA
store any key; NIfTI has no free-form header, so the same facts go into its 80-character
``descrip`` field as ``key=value;`` pairs, which :func:`read_image` parses back.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError, itk_reason
from PETDiffusionLib.io.atomic import atomic_path
from PETDiffusionLib.io.checks import (STORED_TYPE_KEY, check_3d_geometry, check_nifti_header,
                                       check_nifti_raw)
from PETDiffusionLib.io.dicom import read_dicom_image
# The metadata keys and their helpers live in io/metadata.py (shared with io/dicom.py); they are
# re-exported here, where the rest of the project imports them from.
from PETDiffusionLib.io.metadata import (DESCRIPTION_KEY, SYNTHETIC_KEY, UNITS_KEY, WARNINGS_KEY,
                                         add_warning, copy_metadata, get_units, get_warnings,
                                         is_synthetic, set_units)

log = logging.getLogger(__name__)

__all__ = ["UNITS_KEY", "SYNTHETIC_KEY", "DESCRIPTION_KEY", "WARNINGS_KEY", "IMAGE_SUFFIXES",
           "read_image", "read_label", "write_image", "get_units", "set_units", "is_synthetic",
           "add_warning", "get_warnings", "resample_to", "resample_to_spacing", "same_grid",
           "array_and_image", "to_working_grid"]

_NIFTI_DESCRIP = "descrip"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(".nii") or path.name.endswith(".nii.gz")


def read_image(path: str | os.PathLike, pixel_type=sitk.sitkFloat32,
               require_3d: bool = True) -> sitk.Image:
    """Read an image file, or a DICOM folder (one series; PET converted to SUVbw, CT in HU).

    Raises :class:`InputError` naming the file when it is missing or unreadable, is not a 3D scalar
    volume with positive spacing (unless ``require_3d`` is False), or, for NIfTI, holds NaN/Inf
    voxels or pixdim 0 (which ITK's reader would hide: docs/PHYSICS.md §1 "Plausibility rules").
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file or folder not found", path)
    if path.is_dir():
        img = read_dicom_image(path)
        if require_3d:
            check_3d_geometry(img, path)
        return img
    if not any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES):
        raise InputError(f"not a supported image file (expected one of {', '.join(IMAGE_SUFFIXES)} "
                         "or a DICOM folder)", path)
    if _is_nifti(path):
        check_nifti_header(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read image ({itk_reason(exc)})", path) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a scalar image, found a vector/RGB image", path)
    if _is_nifti(path):
        check_nifti_raw(path)
    if require_3d:
        check_3d_geometry(img, path)
    if _is_nifti(path) and img.HasMetaDataKey(_NIFTI_DESCRIP):
        for part in img.GetMetaData(_NIFTI_DESCRIP).split(";"):
            if "=" in part:
                key, value = part.split("=", 1)
                key = {"units": UNITS_KEY, "synthetic": SYNTHETIC_KEY}.get(key.strip())
                if key:
                    img.SetMetaData(key, value.strip())
    img.SetMetaData(STORED_TYPE_KEY, img.GetPixelIDTypeAsString())
    if pixel_type is not None and img.GetPixelID() != pixel_type:
        keys = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
        img = sitk.Cast(img, pixel_type)
        for k, v in keys.items():
            img.SetMetaData(k, v)
    return img


def read_label(path: str | os.PathLike) -> sitk.Image:
    """Read a label map as unsigned integers; refuses non-integer values."""
    img = read_image(path, pixel_type=None)
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("label map holds non-integer values", path)
    if arr.size and arr.min() < 0:
        raise InputError("label map holds negative values", path)
    return _copy_meta(img, sitk.Cast(img, sitk.sitkUInt16))


def _copy_meta(src: sitk.Image, dst: sitk.Image) -> sitk.Image:
    return copy_metadata(src, dst)


def write_image(img: sitk.Image, path: str | os.PathLike, units: str | None = None,
                synthetic: bool | None = None, description: str | None = None,
                compress: bool = True) -> Path:
    """Write atomically; units/synthetic flags go into the header (see module docstring)."""
    path = Path(path)
    src, img = img, sitk.Image(img)  # shallow copy so metadata edits stay local
    # SimpleITK 2.5: the first SetMetaData on a copy drops the metadata it shared; copy it back
    for key in src.GetMetaDataKeys():
        if key != STORED_TYPE_KEY:  # a reading fact of the input file, not of this output
            img.SetMetaData(key, src.GetMetaData(key))
    set_units(img, units, synthetic, description)
    if _is_nifti(path):
        parts = []
        if img.HasMetaDataKey(UNITS_KEY):
            parts.append(f"units={img.GetMetaData(UNITS_KEY)}")
        if img.HasMetaDataKey(SYNTHETIC_KEY):
            parts.append(f"synthetic={img.GetMetaData(SYNTHETIC_KEY)}")
        if is_synthetic(img):
            parts.append("SYNTHETIC research image")
        img.SetMetaData(_NIFTI_DESCRIP, ";".join(parts)[:79])
        # ITK's NIfTI writer fills the header's descrip from this key (not from "descrip")
        img.SetMetaData("ITK_FileNotes", ";".join(parts)[:79])
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)
    return path


def resample_to(img: sitk.Image, reference: sitk.Image, is_label: bool = False,
                default_value: float = 0.0) -> sitk.Image:
    """Resample ``img`` onto ``reference``'s grid: linear for images, nearest neighbour for labels."""
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out = sitk.Resample(img, reference, sitk.Transform(), interp, default_value, img.GetPixelID())
    return _copy_meta(img, out)


def resample_to_spacing(img: sitk.Image, spacing: tuple[float, float, float],
                        is_label: bool = False, default_value: float = 0.0) -> sitk.Image:
    """Resample onto a grid with the same origin and direction covering the same extent."""
    old_sp = np.array(img.GetSpacing(), float)
    old_sz = np.array(img.GetSize(), int)
    new_sp = np.array(spacing, float)
    new_sz = np.maximum(1, np.round(old_sz * old_sp / new_sp)).astype(int)
    ref = sitk.Image([int(s) for s in new_sz], img.GetPixelID())
    ref.SetSpacing(tuple(float(s) for s in new_sp))
    ref.SetDirection(img.GetDirection())
    # keep the physical centre of the field of view fixed
    d = np.array(img.GetDirection()).reshape(3, 3)
    centre = np.array(img.GetOrigin()) + d @ ((old_sz - 1) * old_sp / 2)
    ref.SetOrigin(tuple(centre - d @ ((new_sz - 1) * new_sp / 2)))
    return resample_to(img, ref, is_label, default_value)


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 10)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def array_and_image(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A SimpleITK image from a z,y,x numpy array with ``reference``'s geometry."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def to_working_grid(img: sitk.Image, spacing_mm, is_label: bool = False,
                    default_value: float = 0.0) -> sitk.Image:
    """The one working grid of the 2.5D models: reoriented to LPS (so axial slices are array
    slices, z from feet to head), then resampled to ``spacing_mm`` (x, y, z) over the same extent.
    Labels use nearest neighbour; voxels outside the input take ``default_value`` (e.g. -1000 HU)."""
    oriented = sitk.DICOMOrient(img, "LPS")
    return resample_to_spacing(oriented, tuple(float(s) for s in spacing_mm), is_label,
                               default_value)
