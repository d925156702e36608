"""DICOM Segmentation (SEG) objects of lesion and organ label maps, made with highdicom.

The SEG references the source series it was drawn on (its frames follow the source instances) and
labels every segment with standard codes (SNOMED CT via pydicom's code dictionary, as highdicom
uses): lesions as Morphologically Abnormal Structure (SCT 49755003) / Neoplasm (SCT 108369006)
or Lesion (SCT 52988006); organs as Anatomical Structure (SCT 91723000) / the organ's own SCT code
when the name matches one (Liver 10200004, Spleen 78961009, ...), else Anatomical Structure.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_path
from PETDiffusionLib.io.deid import copy_deidentification_status
from PETDiffusionLib.io.images import same_grid
from PETDiffusionLib.quant.lesions import _name, label_array

log = logging.getLogger(__name__)

_LESION_WORDS = ("lesion", "tumor", "tumour", "neoplasm", "gtv", "metasta", "cancer")


def source_series(folder: str | os.PathLike) -> list[pydicom.Dataset]:
    """The DICOM image instances of one series in ``folder`` (files with pixel data)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("DICOM source folder not found", folder)
    datasets = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            try:
                ds = pydicom.dcmread(p)
            except Exception:  # not DICOM: skip (README files and the like)
                continue
            if "PixelData" in ds and "ImagePositionPatient" in ds:
                datasets.append(ds)
    if not datasets:
        raise InputError("no DICOM image instances found", folder)
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) > 1:
        raise InputError(f"holds {len(series)} series; give a folder with one", folder)
    return datasets


def check_source_geometry(datasets: list[pydicom.Dataset]) -> None:
    """Before any work: InputError when a DICOM SEG cannot reference these instances one to one
    (mixed orientations, repeated positions, irregular steps)."""
    _sorted_geometry(list(datasets))


def _sorted_geometry(datasets: list[pydicom.Dataset]) -> tuple[list[pydicom.Dataset], sitk.Image]:
    """Source instances sorted along the slice normal, and an empty image with their grid."""
    where = Path(str(getattr(datasets[0], "filename", "") or "source series")).parent \
        if getattr(datasets[0], "filename", None) else "source series"
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in datasets:
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise InputError("the source series mixes slice orientations", where)
    ordered = sorted(datasets, key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    pos = np.array([np.array(d.ImagePositionPatient, float) for d in ordered])
    steps = np.diff(pos @ normal)
    if len(steps) and np.any(steps <= 1e-3):
        raise InputError("the source series repeats a slice position: a DICOM SEG cannot reference "
                         "its slices one to one", where)
    if len(steps) and np.ptp(steps) > 1e-3 * max(1.0, abs(steps.mean())):
        raise InputError(f"the source series' slice steps are irregular ({steps.min():.3f} to "
                         f"{steps.max():.3f} mm): its PET is read onto a regular grid, so a DICOM SEG "
                         "cannot reference its slices one to one; leave out --dicom-source (the "
                         "tables, the report and the NIfTI label maps are still written)", where)
    dz = float(steps.mean()) if len(steps) else float(getattr(ordered[0], "SliceThickness", 1.0))
    ps = [float(v) for v in ordered[0].PixelSpacing]  # row spacing (y), column spacing (x)
    ref = sitk.Image(int(ordered[0].Columns), int(ordered[0].Rows), len(ordered), sitk.sitkUInt8)
    ref.SetSpacing((ps[1], ps[0], dz))
    ref.SetOrigin(tuple(pos[0]))
    ref.SetDirection(tuple(np.stack([row, col, normal], axis=1).ravel()))
    return ordered, ref


def _codes_for(name: str):
    from pydicom.sr.codedict import codes  # lazy on purpose: ~0.5 s, only the SEG export needs it
    low = name.lower()
    if any(w in low for w in _LESION_WORDS):
        kind = codes.SCT.Lesion if "lesion" in low else codes.SCT.Neoplasm
        return codes.SCT.MorphologicallyAbnormalStructure, kind
    camel = "".join(part.capitalize() for part in re.split(r"[^a-zA-Z]+", name) if part)
    for candidate in (camel, camel.rstrip("s")):
        try:
            return codes.SCT.AnatomicalStructure, getattr(codes.SCT, candidate)
        except (AttributeError, KeyError):
            continue
    return codes.SCT.AnatomicalStructure, codes.SCT.AnatomicalStructure


def write_dicom_seg(label_img: sitk.Image, source_datasets: list[pydicom.Dataset],
                    names: dict[int, str] | None, out_path: str | os.PathLike, *,
                    algorithm: str | None = "PETDiffusion", series_description: str = "PETDiffusion SEG",
                    series_number: int = 900) -> Path:
    """Write a binary DICOM SEG of ``label_img`` referencing ``source_datasets``.

    ``label_img`` must lie on the source series' grid (same size, spacing, origin, orientation).
    One segment per non-zero label present, named by ``names`` (else ``label <n>``); segment
    numbers are 1..n in label order. ``algorithm`` None marks the segments MANUAL (a clinician's
    mask), else AUTOMATIC with that algorithm name and the PETDiffusion version.
    """
    # deliberately lazy: highdicom takes ~3 s to import and only the DICOM export needs it;
    # every `petdiffusion` command (and --help) imports this module through cli/report.py
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not source_datasets:
        raise InputError("no source DICOM instances given", "source series")
    ordered, ref = _sorted_geometry(list(source_datasets))
    mask_name = _name(label_img, "label map")
    if not same_grid(ref, label_img, tol=1e-3):
        raise InputError(f"not on the grid of the source DICOM series: size {label_img.GetSize()} vs "
                         f"{ref.GetSize()}, spacing {tuple(round(s, 4) for s in label_img.GetSpacing())} "
                         f"vs {tuple(round(s, 4) for s in ref.GetSpacing())}, origin "
                         f"{tuple(round(o, 2) for o in label_img.GetOrigin())} vs "
                         f"{tuple(round(o, 2) for o in ref.GetOrigin())}", mask_name)
    arr = label_array(label_img, mask_name)
    present = [int(v) for v in np.unique(arr) if v != 0]
    if not present:
        raise InputError("label map is empty: a DICOM SEG needs at least one segment", mask_name)
    names = {int(k): str(v) for k, v in (names or {}).items()}
    seg_number = np.zeros(int(arr.max()) + 1, np.uint16)
    descriptions = []
    if algorithm:
        algo = hd.AlgorithmIdentificationSequence(name=algorithm, version=__version__,
                                                  family=codes.cid7162.ArtificialIntelligence)
    for number, lab in enumerate(present, start=1):
        seg_number[lab] = number
        label = names.get(lab, f"label {lab}")
        category, kind = _codes_for(label)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label[:64], segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type="AUTOMATIC" if algorithm else "MANUAL",
            algorithm_identification=algo if algorithm else None,
            tracking_uid=hd.UID(), tracking_id=f"{label[:50]} #{lab}"))
    pixels = seg_number[arr]  # z, y, x in the sorted source order = frames, rows, columns
    seg = hd.seg.Segmentation(
        source_images=ordered, pixel_array=pixels.astype(np.uint16 if len(present) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="PETDiffusion", manufacturer_model_name="PETDiffusionLib",
        software_versions=__version__, device_serial_number="none",
        series_description=series_description[:64],
        content_description="Research use only, not for diagnosis")
    # the SEG copies the sources' patient and study attributes (de-identified ones when the report
    # command de-identified them, io/deid.py); say so truthfully (PS3.15 E.1)
    copy_deidentification_status(list(source_datasets), seg)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM SEG with %d segment(s) to %s", len(present), out_path)
    return out_path
