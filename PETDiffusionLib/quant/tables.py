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

import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.quant.lesions import (LESION_COLUMNS, SUVPEAK_RADIUS_MM, check_suv_image,
                                           lesion_table, lesion_totals)
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
             thresholds: dict | None = None) -> QuantResult:
    """Measure lesions and organs of one PET image (see lesion_table, organ_table)."""
    check_suv_image(suv_img)
    lesions = lesion_table(suv_img, lesion_img) if lesion_img is not None else None
    organs = organ_table(suv_img, organ_img, organ_names) if organ_img is not None else None
    units = suv_img.GetMetaData("PETDiffusion.units") if suv_img.HasMetaDataKey("PETDiffusion.units") else None
    extra = {}
    if organ_img is not None:
        liver = liver_reference_check(suv_img, organ_img, organ_names)
        if liver is not None:
            extra["liver_reference"] = liver
    return QuantResult(lesions=lesions, organs=organs, thresholds=thresholds,
                       spacing_mm=tuple(suv_img.GetSpacing()), size=tuple(suv_img.GetSize()),
                       units=units, extra=extra)


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
        paths["lesions_csv"] = atomic_write_text(out_dir / "lesions.csv",
                                                 rows_to_csv(result.lesions, LESION_COLUMNS))
    if result.organs is not None:
        paths["organs_csv"] = atomic_write_text(out_dir / "organs.csv",
                                                rows_to_csv(result.organs, ORGAN_COLUMNS))
    paths["summary_json"] = atomic_write_text(out_dir / "summary.json", to_json(result.summary()))
    log.info("wrote %s", ", ".join(p.name for p in paths.values()))
    return paths


def write_quant_outputs(out_dir: str | os.PathLike, suv_img: sitk.Image,
                        lesion_img: sitk.Image | None = None, organ_img: sitk.Image | None = None,
                        organ_names: dict[int, str] | None = None,
                        thresholds: dict | None = None) -> dict[str, Path]:
    """Quantify and write ``lesions.csv`` (if lesions), ``organs.csv`` (if organs), ``summary.json``.

    Returns {"lesions_csv", "organs_csv", "summary_json"} -> paths, for the files written.
    Everything is measured before anything is written, so bad input leaves no file behind.
    """
    return write_result(out_dir, quantify(suv_img, lesion_img, organ_img, organ_names, thresholds))
