"""DICOM RT Structure Set (RTSTRUCT) contours rasterised onto an image grid.

An RTSTRUCT stores each ROI as closed planar polygons in patient coordinates (mm, LPS): the ROI
Contour Module (DICOM PS3.3 C.8.8.6), ``ROIContourSequence[i].ContourSequence[j].ContourData`` =
x1, y1, z1, x2, ... with ``ContourGeometricType`` CLOSED_PLANAR; ROI names and the frame of
reference they were drawn in are in the Structure Set Module (PS3.3 C.8.8.5,
``StructureSetROISequence``: ``ROINumber``, ``ROIName``, ``ReferencedFrameOfReferenceUID``).

Rasterisation (:func:`rasterise_roi`): every polygon is mapped to the image's continuous voxel
indices (SimpleITK ``TransformPhysicalPointToContinuousIndex``, so any orientation and spacing work),
put on the slice nearest its plane and filled with ``skimage.draw.polygon`` (the voxels whose centres
lie inside). Several polygons on one slice are combined by exclusive or, so a polygon inside another
is a hole: the standard allows holes as separate contours or as "keyhole" contours (PS3.3
C.8.8.6.3), and XOR is what common converters (plastimatch, dcmrtstruct2nii) do.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon

from PETDiffusionLib.errors import InputError

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"   # RT Structure Set Storage (PS3.4 B.5)
#: a contour may sit up to this fraction of a slice away from the nearest slice centre: a slice
#: grid resampled to regular steps (io/dicom.py, irregular steps of up to 5 %) moves slice centres
#: by less than half a slice; farther off, the contour does not belong to this grid (this project's
#: choice: 0.5 = the slice's own extent).
MAX_SLICE_OFFSET = 0.5
#: a polygon's points may spread this many slices along the normal and still count as planar
#: (rounding of ContourData to 0.01 mm is far below; this project's choice).
MAX_PLANARITY_SLICES = 0.1


@dataclass(frozen=True)
class RoiInfo:
    number: int
    name: str
    frame_of_reference_uid: str
    contours: int


def _read(path: Path) -> pydicom.Dataset:
    if not path.is_file():
        raise InputError("RTSTRUCT file not found", path)
    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path) from exc
    sop = str(ds.get("SOPClassUID", ""))
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT" and sop != RTSTRUCT_SOP_CLASS:
        raise InputError(f"not an RT Structure Set: Modality {ds.get('Modality', 'missing')!r}, "
                         f"SOPClassUID {sop or 'missing'}", path)
    if "StructureSetROISequence" not in ds or "ROIContourSequence" not in ds:
        raise InputError("RTSTRUCT lacks StructureSetROISequence or ROIContourSequence "
                         "(DICOM PS3.3 C.8.8.5, C.8.8.6)", path)
    return ds


def list_rois(path: str | os.PathLike) -> list[RoiInfo]:
    """The ROIs of an RTSTRUCT file: number, name, frame of reference and number of contours."""
    path = Path(path)
    ds = _read(path)
    counts = {int(c.ReferencedROINumber): len(c.get("ContourSequence", []))
              for c in ds.ROIContourSequence}
    return [RoiInfo(int(r.ROINumber), str(r.ROIName), str(r.get("ReferencedFrameOfReferenceUID", "")),
                    counts.get(int(r.ROINumber), 0)) for r in ds.StructureSetROISequence]


def series_frame_of_reference(folder: str | os.PathLike) -> str:
    """FrameOfReferenceUID of the DICOM image series in ``folder`` (its first readable file)."""
    folder = Path(folder)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "FrameOfReferenceUID" in ds:
            return str(ds.FrameOfReferenceUID)
    raise InputError("no DICOM file with a FrameOfReferenceUID", folder)


def rasterise_roi(path: str | os.PathLike, roi_name: str, reference: sitk.Image,
                  frame_of_reference_uid: str | None = None) -> sitk.Image:
    """The ROI ``roi_name`` of the RTSTRUCT ``path`` as a uint8 mask (1 inside) on ``reference``'s grid.

    ``frame_of_reference_uid``: the image's FrameOfReferenceUID (:func:`series_frame_of_reference`
    of its DICOM folder); when given, an ROI drawn in another frame is refused. Raises InputError
    naming the file when the ROI is missing (listing those present), holds no closed planar contour,
    lies in another frame of reference, or falls outside the image or between its slices.
    """
    path = Path(path)
    ds = _read(path)
    rois = list_rois(path)
    hits = [r for r in rois if r.name == roi_name]
    if not hits:
        raise InputError(f"no ROI named {roi_name!r}; the file holds "
                         f"{', '.join(repr(r.name) for r in rois) or 'no ROI'}", path)
    roi = hits[0]
    if frame_of_reference_uid is not None and roi.frame_of_reference_uid != frame_of_reference_uid:
        raise InputError(f"ROI {roi_name!r} was drawn in frame of reference "
                         f"{roi.frame_of_reference_uid or '(none)'}, the image is in "
                         f"{frame_of_reference_uid}: they are not the same patient space", path)
    contours = []
    for c in ds.ROIContourSequence:
        if int(c.ReferencedROINumber) == roi.number:
            contours = [s for s in c.get("ContourSequence", [])
                        if str(s.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR"]
    if not contours:
        raise InputError(f"ROI {roi_name!r} holds no CLOSED_PLANAR contour", path)
    size = reference.GetSize()                     # x, y, z
    mask = np.zeros(size[::-1], bool)              # z, y, x
    for j, c in enumerate(contours):
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        idx = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in pts])
        k = idx[:, 2]
        if np.ptp(k) > MAX_PLANARITY_SLICES:
            raise InputError(f"ROI {roi_name!r} contour {j} is not parallel to the image's slices "
                             f"(spans {np.ptp(k):.2f} slices)", path)
        kz = int(round(float(k.mean())))
        if abs(k.mean() - kz) > MAX_SLICE_OFFSET or not 0 <= kz < size[2]:
            raise InputError(f"ROI {roi_name!r} contour {j} at z = {pts[0, 2]:.2f} mm lies outside "
                             f"the image's slices (index {k.mean():.2f} of 0..{size[2] - 1}): the "
                             "RTSTRUCT belongs to another image grid", path)
        if (idx[:, 0].max() < -0.5 or idx[:, 0].min() > size[0] - 0.5
                or idx[:, 1].max() < -0.5 or idx[:, 1].min() > size[1] - 0.5):
            raise InputError(f"ROI {roi_name!r} contour {j} lies outside the image in-plane", path)
        rr, cc = polygon(idx[:, 1], idx[:, 0], shape=(size[1], size[0]))
        sl = np.zeros((size[1], size[0]), bool)
        sl[rr, cc] = True
        mask[kz] ^= sl
    if not mask.any():
        raise InputError(f"ROI {roi_name!r} covers no voxel centre of the image", path)
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.CopyInformation(reference)
    log.info("%s: ROI %r rasterised, %d contours, %d voxels", path.name, roi_name, len(contours),
             int(mask.sum()))
    return out
