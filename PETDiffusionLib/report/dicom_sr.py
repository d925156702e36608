"""DICOM SR measurement report (TID 1500) of the lesion table, referencing a lesion DICOM SEG.

One volumetric ROI group (TID 1411) per lesion, pointing at its SEG segment, with the PET-IndiC
measurements that Slicer's PET tools use: SUVbw (DCM 126401) maximum (SCT 56851009), mean
(SCT 373098007) and peak (DCM 126031 "Peak Value Within ROI"), Volume (SCT 118565006, formerly
SRT G-D705) in mL, and Total Lesion Glycolysis (DCM 126033) in g (SUV [g/mL] x mL).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pydicom

from PETDiffusionLib import __version__
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_path
from PETDiffusionLib.io.deid import copy_deidentification_status

log = logging.getLogger(__name__)


def _concepts():
    from highdicom.sr import CodedConcept  # lazy on purpose: see write_lesion_sr
    return {
        "suvbw": CodedConcept("126401", "DCM", "SUVbw"),
        "max": CodedConcept("56851009", "SCT", "Maximum"),
        "mean": CodedConcept("373098007", "SCT", "Mean"),
        "peak": CodedConcept("126031", "DCM", "Peak Value Within ROI"),
        "volume": CodedConcept("118565006", "SCT", "Volume"),
        "tlg": CodedConcept("126033", "DCM", "Total Lesion Glycolysis"),
        "u_suv": CodedConcept("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
        "u_ml": CodedConcept("ml", "UCUM", "milliliter"),
        "u_g": CodedConcept("g", "UCUM", "gram"),
        # LOINC 44139-4 "PET whole body" as the procedure reported
        "procedure": CodedConcept("44139-4", "LN", "PET whole body"),
    }


def write_lesion_sr(lesion_rows: list[dict], seg: pydicom.Dataset | str | os.PathLike,
                    source_datasets: list[pydicom.Dataset], out_path: str | os.PathLike) -> Path:
    """Write a Comprehensive 3D SR (TID 1500) of ``lesion_rows`` (from lesion_table).

    ``seg``: the lesion SEG (dataset or file) whose segments are labelled "Lesion <id>" as
    make_report writes them; each row is linked to the segment of its lesion id.
    """
    # deliberately lazy: highdicom takes ~3 s to import and only the DICOM export needs it;
    # every `petdiffusion` command (and --help) imports this module through cli/report.py
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not isinstance(seg, pydicom.Dataset):
        seg = pydicom.dcmread(seg)
    by_label = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
    c = _concepts()
    groups = []
    for row in lesion_rows:
        label = f"Lesion {row['lesion_id']}"
        if label not in by_label:
            raise InputError(f"the SEG has no segment labelled '{label}'", "lesion SEG")
        # built by hand: from_segmentation() expects per-frame segment ids, which a SEG with one
        # segment keeps in the shared functional groups
        ref = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=by_label[label],
            source_series=hd.sr.SourceSeriesForSegmentation(source_datasets[0].SeriesInstanceUID))
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label)
        m = [hd.sr.Measurement(name=c["suvbw"], value=float(row["suv_max"]), unit=c["u_suv"],
                               derivation=c["max"]),
             hd.sr.Measurement(name=c["suvbw"], value=float(row["suv_mean"]), unit=c["u_suv"],
                               derivation=c["mean"]),
             hd.sr.Measurement(name=c["suvbw"], value=float(row["suv_peak"]), unit=c["u_suv"],
                               derivation=c["peak"]),
             hd.sr.Measurement(name=c["volume"], value=float(row["volume_ml"]), unit=c["u_ml"]),
             hd.sr.Measurement(name=c["tlg"], value=float(row["tlg"]), unit=c["u_g"])]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=ref, measurements=m,
            finding_type=codes.SCT.Lesion))
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="PETDiffusion", model_name=f"PETDiffusionLib {__version__}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=c["procedure"], imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *source_datasets], content=report[0], series_instance_uid=hd.UID(),
        series_number=901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="PETDiffusion", series_description="PETDiffusion lesion measurements")
    copy_deidentification_status(list(source_datasets), sr)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sr.save_as(tmp)
    log.info("wrote DICOM SR (TID 1500) with %d lesion(s) to %s", len(groups), out_path)
    return out_path
