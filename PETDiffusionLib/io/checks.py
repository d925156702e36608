"""Input checks shared by every command: geometry, finite values, SUV and HU plausibility, output paths.

Each check raises :class:`InputError` naming the file (or option) and the problem in words a user
can act on; nothing is computed or written before they pass. The tasks' own PET/CT checks, the
``quantify`` and ``report`` commands and the readers use these, so one input gets one verdict and
one message everywhere.

Value ranges (docs/PHYSICS.md §1 "Plausibility rules" and §5): FDG SUVs lie in 0 to ~50 (bladder up to
50, tumours up to ~24, "occasionally exceeding 200", AMDiff Sec. 2.2.1), so a maximum above
:data:`SUV_MAX_PLAUSIBLE` is activity concentration (1 SUV ~ 2.4 kBq/mL: Bq/mL maxima are 1e3-1e6);
reconstructions undershoot slightly below 0, never to :data:`SUV_MIN_PLAUSIBLE`; CT air is -1000 HU
and the CT range is -1024..3071 HU with metal up to ~30000 (DICOM PS3.3 C.8.2.1, 12-bit CT).
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
from nibabel.nifti1 import Nifti1Header
from nibabel.openers import ImageOpener
import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.metadata import get_units

# See the module docstring for the sources of these ranges.
SUV_MAX_PLAUSIBLE = 300.0
SUV_MIN_PLAUSIBLE = -5.0
CT_AIR_HU = -1000.0
CT_AIR_MAX_HU = -500.0      # a CT's 1st percentile (air around the body) lies below this
CT_MIN_HU, CT_MAX_HU = -3100.0, 40000.0
# Units strings that mean "already SUV" (PETDiffusion.units values written by this project, DICOM
# Units GML (PS3.3 C.8.9.1.1.4) and the names other tools use).
SUV_UNITS = ("SUVbw", "SUVlbm", "SUVbsa", "SUVibw", "SUV", "SUL", "GML", "g/ml", "g/mL")
BQML_UNITS = ("Bq/mL", "BQML", "Bq/ml", "kBq/mL", "counts", "counts/s", "CNTS")
# Direction cosines of a valid image are orthonormal to ~1e-6; DS rounding in DICOM stays < 1e-4.
ORTHONORMAL_TOL = 1e-3
NIFTI_SUFFIXES = (".nii", ".nii.gz")
STORED_TYPE_KEY = "PETDiffusion.stored_type"
# 16 GiB: a whole-body CT of 512x512x2000 float32 voxels is 2 GiB; more is a damaged header.
MAX_VOLUME_BYTES = 16 * 2**30  # pixel type in the file, before the float32 cast


def check_3d_geometry(img: sitk.Image, name: object) -> None:
    """A scalar 3D image with at least one voxel, positive finite spacing and orthonormal axes."""
    dim = img.GetDimension()
    if dim != 3:
        raise InputError(f"expected a 3D volume, found a {dim}D image (size {img.GetSize()}); "
                         + ("give the whole volume, not one slice" if dim == 2 else
                            "give one 3D frame (split the series first)"), name)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a scalar image, found a vector/RGB image", name)
    if min(img.GetSize()) < 1:
        raise InputError(f"the image is empty (size {img.GetSize()})", name)
    sp = np.array(img.GetSpacing(), float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"voxel spacing {tuple(float(s) for s in sp)} mm is not positive: the "
                         "voxel size is unknown, volumes would be wrong; fix the file's header", name)
    d = np.array(img.GetDirection(), float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=ORTHONORMAL_TOL):
        raise InputError("the image axes (direction cosines) are not orthonormal", name)
    o = np.array(img.GetOrigin(), float)
    if not np.all(np.isfinite(o)):
        raise InputError(f"the image origin {tuple(o)} is not finite", name)


def check_nifti_header(path: str | os.PathLike) -> None:
    """Before ITK reads a NIfTI file: its header as stored gives positive sizes and voxel sizes,
    and (uncompressed) the file holds the bytes the header promises. ITK would read pixdim 0 as
    1 mm and report a damaged size only as "Failed to allocate memory"."""
    path = Path(path)
    try:
        # the header as stored: nib.load "fixes" pixdim 0 to 1 (with only a log line)
        with ImageOpener(str(path)) as fh:
            hdr = Nifti1Header.from_fileobj(fh, check=False)
    except Exception as exc:  # nibabel/gzip raise many kinds on damaged files
        raise InputError(f"cannot read the NIfTI header ({type(exc).__name__}: {exc})", path) from exc
    ndim = int(hdr["dim"][0])
    dims = [int(v) for v in hdr["dim"][1:1 + max(0, min(ndim, 7))]]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims):
        raise InputError(f"the NIfTI header gives no valid size (dim = {list(hdr['dim'])}): a "
                         "damaged file", path)
    pixdim = [float(v) for v in hdr["pixdim"][1:1 + min(ndim, 3)]]
    bad = [f"pixdim[{i + 1}] = {v:g}" for i, v in enumerate(pixdim) if not np.isfinite(v) or v <= 0]
    if bad:
        raise InputError(f"the NIfTI header gives no voxel size ({', '.join(bad)}); ITK would "
                         "read it as 1 mm and every volume would be wrong: fix the header "
                         "(pixdim) or re-export the image", path)
    n_bytes = int(np.prod(dims, dtype=np.float64)) * hdr.get_data_dtype().itemsize
    offset = int(hdr["vox_offset"]) if path.name.lower().endswith(".nii") else 0
    if path.name.lower().endswith(".nii") and path.stat().st_size < offset + n_bytes:
        raise InputError(f"the file is truncated or its header damaged: the header promises "
                         f"{'x'.join(map(str, dims))} voxels ({offset + n_bytes:,} bytes), the "
                         f"file has {path.stat().st_size:,} bytes", path)
    if n_bytes > MAX_VOLUME_BYTES:
        raise InputError(f"the header claims {'x'.join(map(str, dims))} voxels "
                         f"({n_bytes / 2**30:.0f} GiB): a damaged header, or far beyond any PET/CT "
                         "volume", path)


def check_nifti_raw(path: str | os.PathLike) -> None:
    """What ITK's NIfTI reader hides: NaN/Inf voxels (read as 0); reads the raw voxel data, when
    its type can hold NaN, with nibabel."""
    path = Path(path)
    try:
        nii = nib.load(str(path))
        hdr = nii.header
        slope, inter = hdr.get_slope_inter()
        for what, v in (("scl_slope", slope), ("scl_inter", inter)):
            if v is not None and not np.isfinite(v):
                raise InputError(f"the NIfTI header's {what} is {v}: every voxel would be undefined",
                                 path)
        if np.issubdtype(hdr.get_data_dtype(), np.floating) \
                or np.issubdtype(hdr.get_data_dtype(), np.complexfloating):
            raw = np.asarray(nii.dataobj.get_unscaled())
            n_bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
            if n_bad:
                n_nan = int(np.count_nonzero(np.isnan(raw)))
                raise InputError(f"the image holds {n_bad} non-finite voxel(s) ({n_nan} NaN, "
                                 f"{n_bad - n_nan} infinite); ITK's reader would silently make them "
                                 "0. Fix or mask them in the source before using this file", path)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many kinds on damaged files
        raise InputError(f"cannot read the NIfTI file ({type(exc).__name__}: {exc})", path) from exc


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _finite(arr: np.ndarray, what: str, name: object) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        raise InputError(f"the {what} holds {int(arr.size - np.count_nonzero(finite))} NaN or "
                         "infinite voxel(s)", name)


def check_suv_image(img: sitk.Image, name: object = "--pet") -> None:
    """Refuse, naming ``name``, anything that is not a 3D PET in SUV: CT (HU), Bq/mL or counts,
    label maps, integer-coded (scaled) images, NaN/Inf, an empty PET, values outside the SUV range.
    """
    check_3d_geometry(img, name)
    units = get_units(img)
    if units == "HU":
        raise InputError("this image is marked as CT (HU), not a PET in SUV; give the PET (did you "
                         "swap the PET and the CT?)", name)
    if units in BQML_UNITS:
        raise InputError(f"this PET is in {units}, not SUV; convert it to SUVbw first "
                         "(petdiffusion suv DICOM_DIR --out pet_suv.nii.gz)", name)
    if units == "label":
        raise InputError("this image is a label map, not a PET in SUV", name)
    if units is not None and units not in SUV_UNITS:
        raise InputError(f"this image is in '{units}', not SUV; give a PET in SUV", name)
    stored = img.GetMetaData(STORED_TYPE_KEY) if img.HasMetaDataKey(STORED_TYPE_KEY) else ""
    arr = sitk.GetArrayViewFromImage(img)
    _finite(arr, "PET", name)
    lo, hi = float(arr.min()), float(arr.max())
    if lo <= -500.0 and (arr < -500.0).mean() > 0.01:
        raise InputError(f"values down to {lo:.0f} look like a CT in HU (air = {CT_AIR_HU:.0f} HU), "
                         "not a PET in SUV; did you swap the PET and the CT?", name)
    if lo < SUV_MIN_PLAUSIBLE:
        raise InputError(f"minimum {lo:.1f} is far below 0 (SUV images reach at most "
                         f"{SUV_MIN_PLAUSIBLE:g}): not a PET in SUV", name)
    if hi > SUV_MAX_PLAUSIBLE:
        raise InputError(f"maximum {hi:.4g} is implausible for SUV (> {SUV_MAX_PLAUSIBLE:.0f}); this "
                         "looks like activity concentration (Bq/mL) or scaled integers: convert it "
                         "to SUVbw first (petdiffusion suv)", name)
    if hi <= 0:
        raise InputError("the PET is empty (no voxel above 0)", name)
    if units is None and "int" in stored.lower():
        raise InputError(f"the PET is stored as whole numbers ({stored}) without units: this looks "
                         "like integer-coded values (for example SUV x 100 or a label map), not "
                         "SUV; give a floating-point PET in SUV (petdiffusion suv writes one)", name)


def check_ct_hu(img: sitk.Image, name: object = "--ct", require_air: bool = True) -> None:
    """Refuse, naming ``name``, anything that is not a 3D CT in HU. ``require_air``: the 1st
    percentile must be air (< -500 HU); without it only "no value below -300 and none above 200"
    (a PET or a scaled image) is refused, for CT crops inside the body."""
    check_3d_geometry(img, name)
    units = get_units(img)
    if units and units != "HU":
        raise InputError(f"the CT input is labelled {units!r}, not HU: is this a PET? Give a CT in "
                         "Hounsfield units", name)
    arr = sitk.GetArrayViewFromImage(img)
    _finite(arr, "CT", name)
    lo, hi = float(arr.min()), float(arr.max())
    if require_air:
        p1 = float(np.percentile(arr, 1))
        if p1 > CT_AIR_MAX_HU:
            raise InputError(f"does not look like a CT in HU: no air (1st percentile {p1:.0f}, max "
                             f"{hi:.0f}; a CT has air near {CT_AIR_HU:.0f} HU). Is this a PET or a "
                             "scaled image?", name)
    elif lo > -300.0 and hi < 200.0:
        raise InputError(f"values {lo:.1f}..{hi:.1f} do not look like a CT in HU (no air near "
                         f"{CT_AIR_HU:.0f} HU); is this a PET?", name)
    if lo < CT_MIN_HU or hi > CT_MAX_HU:
        raise InputError(f"values {lo:.0f}..{hi:.0f} are outside the CT range in HU (-1024..3071, "
                         "metal up to ~30000): check the rescale slope/intercept", name)


def _nearest_existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, option: str) -> None:
    parent = _nearest_existing_parent(path.parent)
    if not parent.is_dir():
        raise InputError(f"cannot create {option} here: {parent} is a file, not a folder", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option}: no write permission in {parent}; choose a folder "
                         "you may write to", path)


def check_output_folder(out: str | os.PathLike, option: str = "--out") -> Path:
    """Before any work: ``out`` is (or can become) a folder this process may write in."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} exists and is a file, not a folder; give a folder name (or "
                         "remove the file)", out)
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {option}: no write permission in this folder", out)
        # outputs are staged beside the folder and moved in (io/atomic.staging_dir)
        _check_creatable(out, option)
    else:
        _check_creatable(out, option)
    return out


def check_output_file(out: str | os.PathLike, suffixes: tuple[str, ...] = (),
                      option: str = "--out") -> Path:
    """Before any work: ``out`` names a file (with one of ``suffixes``) that can be written."""
    out = Path(out)
    if suffixes and not out.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InputError(f"{option} must end in one of {', '.join(suffixes)}", out)
    if out.is_dir():
        raise InputError(f"{option} is an existing folder; give a file name, e.g. "
                         f"{out / ('pet_suv' + (suffixes[0] if suffixes else '.nii.gz'))}", out)
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"cannot overwrite {option}: the file is read-only", out)
    _check_creatable(out, option)
    return out
