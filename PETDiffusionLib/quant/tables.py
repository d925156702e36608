"""Quantification outputs on disk: lesions.csv, organs.csv, summary.json (each written atomically).

Files are written only for what was measured: ``lesions.csv`` when a lesion mask is given,
``organs.csv`` when an organ label map is given; ``summary.json`` always (its ``lesion_count`` is
null when no lesion mask was given, never a made-up 0).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.quant.lesions import (LESION_COLUMNS, SUVPEAK_RADIUS_MM, _check_grid,
                                           _lesion_labels, _name, check_suv_image, label_array,
                                           lesion_table, lesion_totals, percist_threshold)
from PETDiffusionLib.quant.organs import ORGAN_COLUMNS, liver_reference_check, organ_table

log = logging.getLogger(__name__)

#: how each quantity is defined, written into summary.json and report.json.
DEFINITIONS = {
    "suv_max": "maximum voxel SUV in the lesion",
    "suv_mean": "mean voxel SUV in the lesion",
    "suv_peak": (f"highest mean SUV in a 1 cm3 sphere (r = {SUVPEAK_RADIUS_MM:.2f} mm, physical "
                 "units, voxels weighted by the fraction inside) centred on a lesion voxel; the "
                 "sphere may extend past the lesion (PERCIST, Wahl 2009; Lodge 2012; DCM 126031)"),
    "volume_ml": "MTV = voxels x voxel volume [mm3] / 1000 (SRT G-D705)",
    "tlg": "TLG = SUVmean x MTV [mL] (DCM 126033)",
    "lesions": "18-connected components of the lesion mask (autoPET evaluation)",
    "suv_sd": "sample standard deviation (ddof = 1)",
}

#: columns lesions.csv carries after LESION_COLUMNS when they were measured: the centroid in RAS
#: (what Slicer shows: R = -x, A = -y, S = z of the LPS centroid), the organ or region holding most
#: of the lesion's voxels (organ map given), and the measured input PET's SUVmax and SUVpeak in the
#: same lesion (denoise-segment: the low-count PET beside the denoised one).
LESION_EXTRA_COLUMNS = ["centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "organ",
                        "input_suv_max", "input_suv_peak"]
#: a lesion none of whose voxels lies in a labelled organ.
OUTSIDE_ORGANS = "outside organs"
#: units of every table column, as the report prints them (PHYSICS.md section 2: SUV body weight;
#: MTV in mL; TLG = SUVmean x MTV, so SUVbw*mL).
COLUMN_UNITS = {"suv_max": "SUVbw", "suv_mean": "SUVbw", "suv_peak": "SUVbw", "suv_sd": "SUVbw",
                "suv_median": "SUVbw", "input_suv_max": "SUVbw", "input_suv_peak": "SUVbw",
                "volume_ml": "mL", "tmtv_ml": "mL", "tlg": "SUVbw*mL", "ttlg": "SUVbw*mL",
                "centroid_x_mm": "mm", "centroid_y_mm": "mm", "centroid_z_mm": "mm",
                "centroid_r_mm": "mm", "centroid_a_mm": "mm", "centroid_s_mm": "mm",
                "voxels": "voxels"}


@dataclass
class QuantResult:
    """Everything measured on one PET: tables, totals, thresholds and grid facts."""
    lesions: list[dict] | None
    organs: list[dict] | None
    thresholds: dict | None
    spacing_mm: tuple[float, float, float]
    size: tuple[int, int, int]
    units: str | None
    extra: dict = field(default_factory=dict)
    #: PERCIST reference regions (liver, mediastinal blood pool) when the organ map names them; in
    #: report.json and the PDF, not in summary.json (whose keys stay as they were).
    references: dict = field(default_factory=dict)

    def summary(self) -> dict:
        totals = lesion_totals(self.lesions).as_dict() if self.lesions is not None else \
            {"tmtv_ml": None, "ttlg": None, "lesion_count": None}
        return {**totals, "thresholds": self.thresholds,
                "lesion_mask_given": self.lesions is not None,
                "organ_map_given": self.organs is not None,
                "voxel_spacing_mm": list(self.spacing_mm), "grid_size": list(self.size),
                "voxel_volume_ml": self.spacing_mm[0] * self.spacing_mm[1] * self.spacing_mm[2] / 1000,
                "suv_units": self.units or "assumed SUV (no units in the file)",
                "definitions": DEFINITIONS, "software": f"PETDiffusion {__version__}",
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "research_use_only": True, **self.extra}


def quantify(suv_img: sitk.Image, lesion_img: sitk.Image | None = None,
             organ_img: sitk.Image | None = None, organ_names: dict[int, str] | None = None,
             thresholds: dict | None = None, *, input_pet: sitk.Image | None = None) -> QuantResult:
    """Measure lesions and organs of one PET image (see lesion_table, organ_table).

    Each lesion row also gets its RAS centroid, with an organ map the organ holding most of its voxels
    (:func:`lesion_sites`) and, with ``input_pet`` (the measured PET a model output was made from, on
    the same grid), that PET's SUVmax and SUVpeak in the same lesion (:func:`input_suvs`).
    """
    check_suv_image(suv_img)
    lesions = lesion_table(suv_img, lesion_img) if lesion_img is not None else None
    organs = organ_table(suv_img, organ_img, organ_names) if organ_img is not None else None
    units = suv_img.GetMetaData("PETDiffusion.units") if suv_img.HasMetaDataKey("PETDiffusion.units") else None
    extra, references = {}, {}
    if organ_img is not None:
        liver = liver_reference_check(suv_img, organ_img, organ_names)
        if liver is not None:
            extra["liver_reference"] = liver
        references = reference_regions(suv_img, organ_img, organ_names)
    if lesions:
        for row in lesions:
            row["centroid_r_mm"], row["centroid_a_mm"], row["centroid_s_mm"] = lps_to_ras(
                row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"])
        if organ_img is not None:
            lesion_sites(lesions, lesion_img, organ_img, organ_names)
        if input_pet is not None:
            input_suvs(lesions, input_pet, lesion_img)
    return QuantResult(lesions=lesions, organs=organs, thresholds=thresholds,
                       spacing_mm=tuple(suv_img.GetSpacing()), size=tuple(suv_img.GetSize()),
                       units=units, extra=extra, references=references)


def lps_to_ras(x: float, y: float, z: float) -> tuple[float, float, float]:
    """A point in ITK/DICOM patient coordinates (LPS) as Slicer shows it (RAS): x and y change sign."""
    return -float(x), -float(y), float(z)


def lesion_sites(rows: list[dict], lesion_img: sitk.Image, organ_img: sitk.Image,
                 organ_names: dict[int, str] | None) -> list[dict]:
    """Set each row's ``organ``: the organ label holding most of the lesion's voxels (ties: the lower
    label), or :data:`OUTSIDE_ORGANS` when none of its voxels is labelled. Rows are changed in place."""
    _check_grid(lesion_img, organ_img, _name(lesion_img, "lesion mask"), _name(organ_img, "organ label map"))
    labels = _lesion_labels(lesion_img, _name(lesion_img, "lesion mask"))
    org = label_array(organ_img, _name(organ_img, "organ label map"))
    names = {int(k): str(v) for k, v in (organ_names or {}).items()}
    inside = (labels > 0) & (org > 0)
    pairs = np.stack([labels[inside], org[inside]], axis=1) if inside.any() else np.zeros((0, 2), int)
    for row in rows:
        hits = pairs[pairs[:, 0] == row["lesion_id"], 1]
        if hits.size == 0:
            row["organ"] = OUTSIDE_ORGANS
            continue
        values, counts = np.unique(hits, return_counts=True)
        best = int(values[np.argmax(counts)])
        row["organ"] = names.get(best, f"label_{best}")
    return rows


def input_suvs(rows: list[dict], input_pet: sitk.Image, lesion_img: sitk.Image) -> list[dict]:
    """Set each row's ``input_suv_max`` and ``input_suv_peak``: the same lesion (same ids) measured on
    ``input_pet``, which must lie on the lesion mask's grid. Rows are changed in place."""
    _check_grid(lesion_img, input_pet, _name(lesion_img, "lesion mask"), _name(input_pet, "input PET"))
    measured = {r["lesion_id"]: r for r in lesion_table(input_pet, lesion_img)}
    for row in rows:
        m = measured.get(row["lesion_id"])
        row["input_suv_max"] = m["suv_max"] if m else None
        row["input_suv_peak"] = m["suv_peak"] if m else None
    return rows


def reference_regions(suv_img: sitk.Image, organ_img: sitk.Image,
                      organ_names: dict[int, str] | None) -> dict:
    """PERCIST 1.0 reference regions (Wahl 2009) found in the organ map: ``liver`` (mean and SD in a
    3 cm sphere, threshold 1.5 x mean + 2 x SD) and ``blood_pool`` (the mediastinal blood pool: a
    1 cm x 2 cm cylinder in the aorta, threshold 2.0 x mean + 2 x SD), each as
    :func:`~PETDiffusionLib.quant.lesions.percist_threshold` returns it. A region that is not named,
    absent or too small is left out, with the reason under ``"notes"``."""
    names = {int(k): str(v) for k, v in (organ_names or {}).items()}
    out: dict = {}
    notes = []
    for key, word in (("liver", "liver"), ("blood_pool", "aorta")):
        only = {k: v for k, v in names.items() if word in v.lower()}
        if not only:
            continue
        try:
            out[key] = percist_threshold(suv_img, organ_img, only)
        except InputError as exc:
            notes.append(f"{key}: {exc}")
    if notes:
        out["notes"] = notes
    return out


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    return str(v)


def rows_to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    return obj


def to_json(obj) -> str:
    return json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_result(out_dir: str | os.PathLike, result: QuantResult) -> dict[str, Path]:
    """Write the CSV tables and summary.json of a QuantResult; returns {name: path}."""
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    if result.lesions is not None:
        extra = [c for c in LESION_EXTRA_COLUMNS if any(c in r for r in result.lesions)]
        paths["lesions_csv"] = atomic_write_text(out_dir / "lesions.csv",
                                                 rows_to_csv(result.lesions, LESION_COLUMNS + extra))
    if result.organs is not None:
        paths["organs_csv"] = atomic_write_text(out_dir / "organs.csv",
                                                rows_to_csv(result.organs, ORGAN_COLUMNS))
    paths["summary_json"] = atomic_write_text(out_dir / "summary.json", to_json(result.summary()))
    log.info("wrote %s", ", ".join(p.name for p in paths.values()))
    return paths


def write_quant_outputs(out_dir: str | os.PathLike, suv_img: sitk.Image,
                        lesion_img: sitk.Image | None = None, organ_img: sitk.Image | None = None,
                        organ_names: dict[int, str] | None = None,
                        thresholds: dict | None = None, *,
                        input_pet: sitk.Image | None = None) -> dict[str, Path]:
    """Quantify and write ``lesions.csv`` (if lesions), ``organs.csv`` (if organs), ``summary.json``.

    Returns {"lesions_csv", "organs_csv", "summary_json"} -> paths, for the files written.
    Everything is measured before anything is written, so bad input leaves no file behind.
    """
    return write_result(out_dir, quantify(suv_img, lesion_img, organ_img, organ_names, thresholds,
                                          input_pet=input_pet))
