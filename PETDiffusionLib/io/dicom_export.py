"""Write a SimpleITK volume as a DICOM series (one file per slice), atomically.

PET is written with SUV-consistent headers (Units, DecayCorrection, weight, dose, injection and
series times) so that any SUV-aware viewer, and this project's own reader, recovers the same SUV.
Synthetic images are marked wherever a viewer shows them: ImageType DERIVED\\SECONDARY (PS3.3
C.7.6.1.1.2), "SYNTHETIC" in SeriesDescription and a DerivationDescription (0008,2111).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian,
                         PositronEmissionTomographyImageStorage, SecondaryCaptureImageStorage,
                         generate_uid)

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import staging_dir
from PETDiffusionLib.io.deid import UIDMap, deidentify
from PETDiffusionLib.io.images import get_units, is_synthetic
from PETDiffusionLib.physics.suv import suv_factor

log = logging.getLogger(__name__)

# F-18 half-life as written by scanners (PHYSICS.md §1).
F18_HALF_LIFE_S = 6586.2
# int16 range for stored values (BitsStored 16, PixelRepresentation 1).
INT16_MAX = 32767
SOP_CLASS = {"PT": PositronEmissionTomographyImageStorage, "CT": CTImageStorage}
SYNTHETIC_NOTE = "SYNTHETIC image computed by PETDiffusion (research use only, not for diagnosis)"


@dataclass
class PETHeader:
    """SUV-relevant facts written into a PET series (PHYSICS.md §1)."""
    weight_kg: float
    dose_bq: float
    injection_time: datetime
    series_time: datetime
    half_life_s: float = F18_HALF_LIFE_S
    radiopharmaceutical: str = "Fluorodeoxyglucose"
    sex: str | None = None
    height_m: float | None = None
    age_years: int | None = None
    decay_correction: str = "START"


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _base_dataset(modality: str, synthetic: bool, description: str, derivation: str,
                  template: Dataset | None, study_uid: str, series_uid: str, for_uid: str,
                  when: datetime) -> Dataset:
    ds = Dataset()
    if template is not None:
        for kw in ("PatientName", "PatientID", "PatientSex", "PatientAge", "PatientWeight",
                   "PatientSize", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
                   "ReferringPhysicianName", "StudyID"):
            if kw in template:
                setattr(ds, kw, getattr(template, kw))
    ds.setdefault("PatientName", "ANONYMOUS")
    ds.setdefault("PatientID", "ANONYMOUS")
    # Type 2 attributes of the Patient and General Study modules (DICOM PS3.3 C.7.1.1, C.7.2.1):
    # present, possibly empty; DICOM SEG writers (highdicom) copy them from the source series.
    for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        if kw not in ds:
            setattr(ds, kw, "")
    ds.Modality = modality
    ds.Manufacturer = "PETDiffusion"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = 1001 if synthetic else 1
    ds.StudyDate = ds.get("StudyDate") or _da(when)
    ds.StudyTime = ds.get("StudyTime") or _tm(when)
    ds.SeriesDate, ds.SeriesTime = _da(when), _tm(when)
    ds.AcquisitionDate, ds.AcquisitionTime = _da(when), _tm(when)
    if synthetic:
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesDescription = f"SYNTHETIC {description}".strip()[:64]
        ds.DerivationDescription = f"{SYNTHETIC_NOTE}. {derivation}".strip()[:1024]
        ds.BurnedInAnnotation = "NO"
    else:
        ds.ImageType = ["DERIVED", "PRIMARY"] if derivation else ["ORIGINAL", "PRIMARY"]
        ds.SeriesDescription = description[:64]
        if derivation:
            ds.DerivationDescription = derivation[:1024]
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _pet_attributes(ds: Dataset, pet: PETHeader, units: str) -> None:
    ds.Units = units
    ds.DecayCorrection = pet.decay_correction
    ds.CorrectedImage = ["ATTN", "DECY", "SCAT", "DTIM", "NORM", "RAN"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.PatientWeight = f"{pet.weight_kg:g}"
    if pet.height_m:
        ds.PatientSize = f"{pet.height_m:g}"
    if pet.sex:
        ds.PatientSex = pet.sex
    if pet.age_years is not None:
        ds.PatientAge = f"{int(pet.age_years):03d}Y"
    ds.SeriesDate, ds.SeriesTime = _da(pet.series_time), _tm(pet.series_time)
    ds.AcquisitionDate, ds.AcquisitionTime = _da(pet.series_time), _tm(pet.series_time)
    rp = Dataset()
    rp.Radiopharmaceutical = pet.radiopharmaceutical
    rp.RadiopharmaceuticalStartTime = _tm(pet.injection_time)
    rp.RadiopharmaceuticalStartDateTime = _da(pet.injection_time) + _tm(pet.injection_time)
    rp.RadionuclideTotalDose = f"{pet.dose_bq:.6g}"
    rp.RadionuclideHalfLife = f"{pet.half_life_s:g}"
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])


def write_dicom_series(img: sitk.Image, out_dir: str | os.PathLike, modality: str = "PT",
                       pet: PETHeader | None = None, units: str = "BQML",
                       synthetic: bool | None = None, description: str = "",
                       derivation: str = "", template: Dataset | None = None,
                       deidentify_output: bool = True, study_uid: str | None = None,
                       pseudo_id: str = "ANONYMOUS", uid_map: UIDMap | None = None) -> list[Path]:
    """Write ``img`` into ``out_dir`` as one DICOM file per slice; returns the paths.

    PET (``modality="PT"``) needs ``pet`` (the SUV header facts). ``units`` is what the stored values
    mean: ``BQML`` or ``GML`` (SUVbw). An image whose units metadata says SUVbw is converted to Bq/mL
    with the factor this project's own :func:`suv_factor` computes from the header written, so the
    reader gets the same SUV back. ``synthetic`` defaults to the image's PETDiffusion.synthetic flag.
    Everything is written to a staging folder and moved into ``out_dir`` only when complete.
    With ``deidentify_output`` (the default) every file is de-identified (io/deid.py, PS3.15 basic
    profile) and a StudyInstanceUID taken from ``template`` is replaced through ``uid_map`` (pass
    one map to all series of one export so they stay one study).
    """
    modality = modality.upper()
    if img.GetDimension() != 3:
        raise InputError(f"DICOM export needs a 3D image, got {img.GetDimension()}D", out_dir)
    if synthetic is None:
        synthetic = is_synthetic(img)
    if modality == "PT" and pet is None:
        raise InputError("PET DICOM export needs the SUV header facts (weight, dose, times)",
                         out_dir)
    arr = sitk.GetArrayFromImage(img).astype(np.float64)  # z, y, x
    if not np.all(np.isfinite(arr)):
        raise InputError("the image holds NaN or infinite values; cannot export to DICOM", out_dir)
    when = pet.series_time if pet else datetime.now()
    if study_uid is None and template is not None and "StudyInstanceUID" in template:
        study_uid = str(template.StudyInstanceUID)
        if deidentify_output:
            study_uid = (uid_map if uid_map is not None else UIDMap()).new(study_uid)
    study_uid = study_uid or generate_uid()
    series_uid, for_uid = generate_uid(), generate_uid()
    base = _base_dataset(modality, synthetic, description, derivation, template, study_uid,
                         series_uid, for_uid, when)
    if modality == "PT":
        units = units.upper()
        _pet_attributes(base, pet, units)
        img_units = (get_units(img) or "").lower()
        if units == "BQML" and img_units.startswith("suv"):
            f = suv_factor(base, "bw")
            arr = arr / f.factor
            log.info("SUVbw -> Bq/mL with factor %.6g (%s)", f.factor, f.rule)
        elif units == "GML":
            base.SUVType = "BW"
        elif units != "BQML":
            raise InputError(f"PET export units must be BQML or GML, not {units}", out_dir)
    sop_class = SOP_CLASS.get(modality, SecondaryCaptureImageStorage)

    d = np.array(img.GetDirection(), float).reshape(3, 3)
    origin = np.array(img.GetOrigin(), float)
    sx, sy, sz = img.GetSpacing()
    iop = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
    paths = []
    with staging_dir(out_dir) as stage:
        for k in range(arr.shape[0]):
            ds = Dataset()
            ds.update(base)
            sl = arr[k]
            if modality == "CT":
                slope, intercept = 1.0, 0.0
                stored = np.clip(np.round(sl), -32768, INT16_MAX)
            else:
                # per-slice slope keeps the full int16 range (as GE PET does; PHYSICS.md §1)
                peak = float(np.max(np.abs(sl)))
                slope = peak / INT16_MAX if peak > 0 else 1.0
                intercept = 0.0
                stored = np.round(sl / slope)
            ds.RescaleSlope = f"{slope:.10g}"
            ds.RescaleIntercept = f"{intercept:g}"
            if modality == "CT":
                ds.RescaleType = "HU"
            pos = origin + d[:, 2] * sz * k
            ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
            ds.ImageOrientationPatient = iop
            ds.PixelSpacing = [f"{sy:.6g}", f"{sx:.6g}"]
            ds.SliceThickness = f"{sz:.6g}"
            ds.SliceLocation = f"{float(pos @ d[:, 2]):.6f}"
            ds.InstanceNumber = k + 1
            if modality == "PT":
                ds.ImageIndex = k + 1
            ds.Rows, ds.Columns = sl.shape
            ds.PixelData = stored.astype("<i2").tobytes()
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = generate_uid()
            if deidentify_output:
                deidentify(ds, pseudo_id)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            name = f"{modality.lower()}_{k + 1:04d}.dcm"
            ds.save_as(stage / name, enforce_file_format=True)
            paths.append(Path(out_dir) / name)
    log.info("wrote %d DICOM files to %s", len(paths), out_dir)
    return paths
