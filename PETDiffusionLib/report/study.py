"""The study header of a PET report: patient pseudonym, study date, tracer, injected activity, injection
and scan times, uptake interval, weight, height, scanner, reconstruction and SUV type.

Read from the PET's DICOM headers (the series the report's ``dicom_source`` holds) and from the
metadata :mod:`PETDiffusionLib.io.dicom` puts into an image it read (weight, height, SUV factor and
rule, units). Nothing here changes a value: a fact the headers do not hold is left out, never guessed.

Sources of the tags and rules:

- Radiopharmaceutical Information Sequence (0054,0016): Radiopharmaceutical (0018,0031), its code
  sequence (0054,0304), RadionuclideTotalDose (0018,1074) in Bq, RadiopharmaceuticalStartTime
  (0018,1072) / StartDateTime (0018,1078) (DICOM PS3.3 C.8.9.2).
- Scan start: the earliest AcquisitionDateTime/AcquisitionTime (0008,002A/0032) of the series, else
  SeriesTime (0008,0031) (PS3.3 C.7.3.1, C.8.9.4); uptake interval = scan start - injection, with
  the injection on the scan date, the day before when the time of day lies after the scan (the SUV
  rule, PHYSICS.md section 1).
- PatientID (0010,0020) is printed only when PatientIdentityRemoved (0012,0062) is YES (de-identified
  per PS3.15 Annex E): an ID of a series that was not de-identified may identify the patient.
- Doses below :data:`~PETDiffusionLib.physics.suv.DOSE_MBQ_THRESHOLD` are taken to be in MBq already
  (as the SUV computation does).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import SimpleITK as sitk
from pydicom.dataset import Dataset

from PETDiffusionLib.io.dicom import (HEIGHT_KEY, MODALITY_KEY, SUV_FACTOR_KEY, SUV_RULE_KEY,
                                      WEIGHT_KEY)
from PETDiffusionLib.io.images import UNITS_KEY
from PETDiffusionLib.physics.suv import DOSE_MBQ_THRESHOLD, parse_da, parse_dt, parse_tm

log = logging.getLogger(__name__)

#: order and labels of the header lines in the PDF (key in the study dict -> label).
HEADER_LABELS = {
    "patient_id": "Patient ID (pseudonym)", "study_date": "Study date", "tracer": "Tracer",
    "injected_mbq": "Injected activity", "injection_time": "Injection time", "scan_time": "Scan start",
    "uptake_min": "Uptake interval", "weight_kg": "Weight", "height_m": "Height",
    "scanner": "Scanner", "reconstruction": "Reconstruction", "suv_type": "SUV type",
}


def _first(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return str(value).strip()


def _radiopharmaceutical(ds: Dataset) -> Dataset | None:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else None


def _tracer(rp: Dataset) -> str | None:
    name = None
    code = rp.get("RadiopharmaceuticalCodeSequence")
    if code and code[0].get("CodeMeaning"):
        name = str(code[0].CodeMeaning).strip()
    name = name or (str(rp.get("Radiopharmaceutical", "")).strip() or None)
    nuclide = rp.get("RadionuclideCodeSequence")
    nuclide = str(nuclide[0].get("CodeMeaning", "")).strip() if nuclide else ""
    if name and nuclide and nuclide.lower() not in name.lower():
        name = f"{name} ({nuclide})"
    return name or (nuclide or None)


def _scan_start(datasets: list[Dataset]) -> datetime | None:
    first = datasets[0]
    series_date = parse_da(first.get("SeriesDate")) or parse_da(first.get("StudyDate"))
    times = []
    for ds in datasets:
        adt = parse_dt(ds.get("AcquisitionDateTime"))
        if adt is None and ds.get("AcquisitionTime"):
            day = parse_da(ds.get("AcquisitionDate")) or series_date
            t = parse_tm(ds.get("AcquisitionTime"))
            adt = datetime.combine(day, datetime.min.time()) + t if day and t is not None else None
        if adt is not None:
            times.append(adt)
    if times:
        return min(times)
    t = parse_tm(first.get("SeriesTime"))
    return datetime.combine(series_date, datetime.min.time()) + t if series_date and t is not None else None


def _injection(rp: Dataset, scan: datetime | None) -> tuple[datetime | None, str | None]:
    """Injection datetime and a note when it had to be placed (time of day only, day before)."""
    inj = parse_dt(rp.get("RadiopharmaceuticalStartDateTime"))
    if inj is not None and (scan is None or inj <= scan):
        return inj, None
    t = parse_tm(rp.get("RadiopharmaceuticalStartTime")) if rp.get("RadiopharmaceuticalStartTime") else \
        (inj - datetime.combine(inj.date(), datetime.min.time()) if inj is not None else None)
    if t is None or scan is None:
        return inj, None
    note = ("StartDateTime after the scan (date-shifted by de-identification): time of day used"
            if inj is not None else None)
    placed = datetime.combine(scan.date(), datetime.min.time()) + t
    if placed > scan:
        placed -= timedelta(days=1)
        note = "injected the day before the scan (midnight crossing)"
    return placed, note


def study_from_dicom(datasets: list[Dataset]) -> dict:
    """Study facts of a PET series (pydicom datasets of its instances) as plain values."""
    if not datasets:
        return {}
    ds = datasets[0]
    out: dict = {}
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and ds.get("PatientID"):
        out["patient_id"] = str(ds.PatientID)
    day = parse_da(ds.get("StudyDate")) or parse_da(ds.get("SeriesDate"))
    if day:
        out["study_date"] = day.isoformat()
    if ds.get("PatientWeight"):
        out["weight_kg"] = float(ds.PatientWeight)
    if ds.get("PatientSize"):
        out["height_m"] = float(ds.PatientSize)
    scanner = " ".join(s for s in (_first(ds.get("Manufacturer")), _first(ds.get("ManufacturerModelName"))) if s)
    if scanner:
        out["scanner"] = scanner
    recon = [_first(ds.get("ReconstructionMethod"))]
    if _first(ds.get("ConvolutionKernel")):
        recon.append(f"kernel {_first(ds.get('ConvolutionKernel'))}")
    if ds.get("PixelSpacing") and ds.get("SliceThickness"):
        px = [float(v) for v in ds.PixelSpacing]
        recon.append(f"voxels {px[0]:.2f} x {px[1]:.2f} x {float(ds.SliceThickness):.2f} mm")
    if _first(ds.get("AttenuationCorrectionMethod")):
        parts = [p.strip() for p in _first(ds.get("AttenuationCorrectionMethod")).split(",") if p.strip()]
        recon.append("attenuation correction " + ", ".join(parts))
    recon = [r for r in recon if r]
    if recon:
        out["reconstruction"] = ", ".join(recon)
    if ds.get("Units"):
        out["stored_units"] = str(ds.Units)
    if ds.get("DecayCorrection"):
        out["decay_correction"] = str(ds.DecayCorrection)
    scan = _scan_start(datasets)
    if scan is not None:
        out["scan_datetime"] = scan.isoformat(sep=" ", timespec="seconds")
        out["scan_time"] = scan.strftime("%H:%M:%S")
    rp = _radiopharmaceutical(ds)
    if rp is not None:
        tracer = _tracer(rp)
        if tracer:
            out["tracer"] = tracer
        dose = rp.get("RadionuclideTotalDose")
        if dose not in (None, ""):
            dose = float(dose)
            out["injected_mbq"] = dose if dose < DOSE_MBQ_THRESHOLD else dose / 1e6
        inj, note = _injection(rp, scan)
        if inj is not None:
            out["injection_datetime"] = inj.isoformat(sep=" ", timespec="seconds")
            out["injection_time"] = inj.strftime("%H:%M:%S")
            if note:
                out["injection_note"] = note
            if scan is not None:
                out["uptake_min"] = (scan - inj).total_seconds() / 60.0
    return out


def study_from_image(img: sitk.Image) -> dict:
    """What the DICOM reader (io.dicom) left in an image's metadata: weight, height, units, SUV rule."""
    def meta(key):
        return img.GetMetaData(key) if img.HasMetaDataKey(key) and img.GetMetaData(key) else None
    out: dict = {}
    for key, name in ((WEIGHT_KEY, "weight_kg"), (HEIGHT_KEY, "height_m")):
        if meta(key):
            out[name] = float(meta(key))
    if meta(UNITS_KEY):
        out["units"] = meta(UNITS_KEY)
    if meta(SUV_RULE_KEY):
        out["suv_rule"] = meta(SUV_RULE_KEY)
    if meta(SUV_FACTOR_KEY):
        out["suv_factor"] = float(meta(SUV_FACTOR_KEY))
    if meta(MODALITY_KEY):
        out["modality"] = meta(MODALITY_KEY)
    return out


def study_header(suv_img: sitk.Image, dicom_source: list[Dataset] | None = None,
                 given: dict | None = None, input_img: sitk.Image | None = None) -> dict:
    """All study facts known for a report: ``given`` (the caller's, e.g. from Slicer node attributes)
    over the image's metadata over the measured input's (``input_img``: the PET a model output was
    made from, as io.dicom read it, with its SUV rule) over the DICOM headers. ``suv_type`` is always
    set: the image's SUV units, with the SUV rule when one is known; "SUV (type not recorded in the
    image)" for an image without units."""
    study: dict = {}
    if dicom_source:
        study.update(study_from_dicom(dicom_source))
    if input_img is not None:
        study.update(study_from_image(input_img))
    study.update(study_from_image(suv_img))
    study.update({k: v for k, v in (given or {}).items() if v is not None})
    units = study.get("units")
    study["suv_type"] = units if units and units.upper().startswith(("SUV", "SUL")) else \
        "SUV (type not recorded in the image)"
    if "suv_rule" not in study and dicom_source and study.get("stored_units"):
        study["suv_rule"] = (f"DICOM Units {study['stored_units']}"
                             + (f", DecayCorrection {study['decay_correction']}"
                                if study.get("decay_correction") else "")
                             + " (the PET file's own conversion is not recorded)")
    return study


def _fmt_number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def header_lines(study: dict) -> dict[str, str]:
    """The study facts as the PDF prints them (label -> text), in :data:`HEADER_LABELS` order."""
    text = {}
    for key, label in HEADER_LABELS.items():
        value = study.get(key)
        if value is None:
            continue
        if key == "injected_mbq":
            value = f"{_fmt_number(value, 1)} MBq"
        elif key == "uptake_min":
            value = f"{_fmt_number(value, 1)} min"
        elif key == "weight_kg":
            value = f"{_fmt_number(value, 1)} kg"
        elif key == "height_m":
            value = f"{_fmt_number(value * 100.0, 0)} cm"
        elif key == "injection_time" and study.get("injection_note"):
            value = f"{value} ({study['injection_note']})"
        elif key == "suv_type" and study.get("suv_rule"):
            value = f"{value} - {study['suv_rule']}"
        text[label] = str(value)
    return text
