"""Read DICOM folders: find every series, sort and stack the slices, return SimpleITK images.

Geometry comes from the image plane module (DICOM PS3.3 C.7.6.2): ImagePositionPatient (0020,0032)
and ImageOrientationPatient (0020,0037). Slices are sorted by their position projected on the slice
normal (row × column direction cosines); the slice spacing is taken from those positions, never from
SliceThickness (0018,0050), which may differ (overlapping or gapped reconstructions). Modality values
are stored × RescaleSlope + RescaleIntercept (0028,1053/1052) applied per slice, because GE PET
varies the slope from slice to slice (PHYSICS.md §1). CT is returned in HU; PET, through
:func:`read_dicom_image`, in SUV (:mod:`PETDiffusionLib.physics.suv`).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.checks import SUV_MAX_PLAUSIBLE
from PETDiffusionLib.io.metadata import add_warning, set_units
from PETDiffusionLib.physics.attenuation import DEFAULT_KVP
from PETDiffusionLib.physics.suv import SUVFactor, SUVOverrides, required_tags_missing, suv_factor
from PETDiffusionLib.physics.suv_rules import DEFAULT_LIMITS, SUVLimits

log = logging.getLogger(__name__)

# Image metadata keys for patient facts later steps need (SUV variants, phantoms, attenuation).
KVP_KEY = "PETDiffusion.kvp"  # from KVP (0018,0060)
WEIGHT_KEY = "PETDiffusion.weight_kg"  # PatientWeight (0010,1030)
HEIGHT_KEY = "PETDiffusion.height_m"  # PatientSize (0010,1020)
SEX_KEY = "PETDiffusion.sex"  # PatientSex (0010,0040)
AGE_KEY = "PETDiffusion.age_years"  # PatientAge (0010,1010), "045Y"
MODALITY_KEY = "PETDiffusion.modality"
CORRECTED_KEY = "PETDiffusion.corrected_image"  # CorrectedImage (0028,0051), backslash-joined
SUV_FACTOR_KEY = "PETDiffusion.suv_factor"
SUV_RULE_KEY = "PETDiffusion.suv_rule"

# Tolerances for geometry checks, in mm / direction-cosine units. Direction cosines of one series
# written by one scanner agree to ~1e-6; 1e-4 allows for rounding in DS strings (16 characters).
ORIENTATION_TOL = 1e-4
POSITION_TOL_MM = 1e-3
# Drift of slice origins off the normal tolerated (DS rounding of ImagePositionPatient).
SHEAR_TOL_MM = 0.01
# A step larger than this multiple of the typical spacing means slices are missing.
GAP_FACTOR = 1.5
# Steps may differ by this fraction of the spacing (DS rounding, table-position jitter).
SPACING_REL_TOL = 0.02
# Steps that differ from their mean by up to this fraction are read onto a regular grid (linear
# interpolation between the neighbouring slices along the normal) with a warning; scanners write
# such series (GE Discovery ST whole-body PET: 3.19-3.29 mm steps, ../shared/data/petwb_sts001) and
# Slicer loads them with a warning. Beyond it the series is refused (issue 19, docs/PHYSICS.md §1).
IRREGULAR_REL_TOL = 0.05

# PET Units (0054,1001) -> units of the modality values (before SUV conversion).
PET_UNITS = {"BQML": "Bq/mL", "CNTS": "counts", "GML": "SUV (g/mL)", "CM2ML": "SUVbsa (cm2/mL)",
             "CPS": "counts/s"}


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder (headers only; pixels are read by :func:`read_series`)."""
    uid: str
    modality: str
    description: str
    files: list[Path]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    suv_ok: bool | None  # None for non-PET series
    suv_missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # gaps, duplicates, mixed orientations
    warnings: list[str] = field(default_factory=list)  # e.g. irregular steps read by resampling
    folder: Path | None = None
    headers: list[Dataset] = field(default_factory=list, repr=False)  # sorted like files

    @property
    def n_slices(self) -> int:
        return len(self.files)


# ----------------------------------------------------------------------------- scanning

def _is_image_sop(ds: Dataset) -> bool:
    uid = ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    uid = uid or ds.get("SOPClassUID")
    return uid is not None and "Image Storage" in getattr(uid, "name", "")


def _expected_native_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    return (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
            * int(ds.BitsAllocated) * frames + 7) // 8


def _read_header(path: Path) -> Dataset | None:
    """The dataset of a DICOM file (pixel bytes loaded, not decoded), or None for a non-DICOM file.

    Raises InputError for a file that claims to be DICOM (preamble "DICM") but is truncated.
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        log.debug("skipping %s: not a DICOM file", path)
        return None
    except Exception as exc:  # pydicom raises many kinds on damaged files
        if _has_dicm_magic(path):
            raise InputError(f"damaged or truncated DICOM file ({type(exc).__name__}: {exc})",
                             path) from exc
        log.debug("skipping %s: unreadable (%s)", path, exc)
        return None
    if "PixelData" not in ds:
        if _is_image_sop(ds) or "Rows" in ds:
            raise InputError("truncated DICOM file: an image object without its pixel data", path)
        log.debug("skipping %s: DICOM object without pixels (%s)", path, ds.get("Modality", "?"))
        return None
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not ts.is_compressed:
        expected = _expected_native_bytes(ds)
        if len(ds.PixelData) < expected:
            raise InputError(f"truncated DICOM file: pixel data has {len(ds.PixelData)} bytes, "
                             f"{expected} expected", path)
    del ds.PixelData  # keep only headers in memory; read_series reads the pixels again
    return ds


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _scan(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    folder = Path(folder)
    if not folder.exists():
        raise InputError("folder not found", folder)
    if not folder.is_dir():
        raise InputError("not a folder (expected a folder of DICOM files)", folder)
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    n_files = 0
    no_uid: set[str] = set()
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        # follow symlinked sub-folders (a folder of links to series), but each real folder once
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            n_files += 1
            ds = _read_header(path)
            if ds is None:
                continue
            uid = str(ds.get("SeriesInstanceUID") or "")
            if not uid:
                # Some anonymisers drop SeriesInstanceUID (0020,000E); fall back to the attributes
                # that identify a series within a study (PS3.3 C.7.3.1).
                uid = "no-uid:" + "/".join(str(ds.get(k, "") or "") for k in (
                    "StudyInstanceUID", "SeriesNumber", "Modality", "SeriesDescription"))
                no_uid.add(uid)
            groups.setdefault(uid, []).append((path, ds))
    for uid in no_uid:
        log.warning("%s: DICOM images without SeriesInstanceUID; grouped by study, series number, "
                    "modality and description (%s)", folder, uid)
    if not groups:
        what = "is empty" if n_files == 0 else f"holds {n_files} file(s) but no DICOM image"
        raise InputError(f"no DICOM image series found: the folder {what}", folder)
    return groups


# ----------------------------------------------------------------------------- geometry

@dataclass
class _Geometry:
    order: list[int]
    positions: np.ndarray  # projected on the normal, sorted
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    slice_index: list[int]  # output z index of each sorted slice (differs from 0..n-1 with gaps)
    problems: list[str]
    # set when the steps are irregular within IRREGULAR_REL_TOL: the sorted slice positions (mm
    # along the normal) to interpolate from onto the regular grid of `spacing`
    resample_from: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def _floats(ds: Dataset, keyword: str, path: Path, n: int | None = None) -> list[float]:
    """A multi-valued numeric tag as finite floats, or InputError naming the file and the tag."""
    value = ds.get(keyword)
    values = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") \
        else list(value)
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        out = []
    if not out or (n is not None and len(out) != n) or not all(np.isfinite(out)):
        raise InputError(f"{keyword} {value!r} is malformed (expected {n or 'some'} finite "
                         "numbers): the slice geometry is unknown", path)
    return out


def _geometry(items: list[tuple[Path, Dataset]]) -> _Geometry:
    problems: list[str] = []
    ds0 = items[0][1]
    for p, d in items:
        if int(d.get("NumberOfFrames") or 1) > 1:
            raise InputError("multi-frame DICOM images are not supported yet; export the series "
                             "as single-frame slices", p)
        if "ImageOrientationPatient" not in d or "ImagePositionPatient" not in d:
            raise InputError("DICOM image lacks ImagePositionPatient/ImageOrientationPatient "
                             "(0020,0032/0037): no geometry", p)
    iops = np.array([_floats(d, "ImageOrientationPatient", p, 6) for p, d in items])
    if np.any(np.abs(iops - iops[0]) > ORIENTATION_TOL):
        n_distinct = len({tuple(np.round(i, 3)) for i in iops})
        problems.append(f"mixed orientations: {n_distinct} different ImageOrientationPatient values")
    row, col = iops[0][:3], iops[0][3:]
    normal = np.cross(row, col)
    ipps = np.array([_floats(d, "ImagePositionPatient", p, 3) for p, d in items])
    proj = ipps @ normal
    order = list(np.argsort(proj, kind="stable"))
    pos = proj[order]
    # The slice origins must lie on one line along the normal; otherwise the stack is sheared
    # (CT gantry tilt) and a SimpleITK image (orthogonal axes) cannot hold it unresampled.
    offsets = ipps[order] - ipps[order[0]]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if len(items) > 1 and float(np.abs(in_plane).max()) > SHEAR_TOL_MM:
        problems.append(f"sheared slice stack (gantry tilt?): slice origins drift "
                        f"{float(np.abs(in_plane).max()):.2f} mm off the slice normal")
    px = _floats(ds0, "PixelSpacing", items[0][0], 2) if "PixelSpacing" in ds0 else [1.0, 1.0]
    if min(px) <= 0:
        raise InputError(f"PixelSpacing (0028,0030) {px} is not positive: the voxel size is "
                         "unknown", items[0][0])
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    for p, d in items:
        if int(d.Rows) != rows or int(d.Columns) != cols:
            problems.append(f"slices of different sizes ({cols}x{rows} and {d.Columns}x{d.Rows})")
            break
    steps = np.diff(pos)
    slice_index = list(range(len(pos)))
    resample_from, warnings = None, []
    if len(pos) == 1:
        dz = float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
    else:
        dups = int(np.sum(steps < POSITION_TOL_MM))
        if dups:
            problems.append(f"duplicate slice positions: {dups} slice(s) share a position with "
                            "another (dynamic or repeated acquisition?)")
        good = steps[steps >= POSITION_TOL_MM]
        dz = 1.0
        if good.size:
            # typical spacing: the smallest step that is common (robust to a few gaps)
            dz = float(np.min(good[good <= np.median(good) * (1 + SPACING_REL_TOL)]))
            ratios = good / dz
            gaps = ratios > GAP_FACTOR
            irregular = np.abs(ratios - np.round(ratios)) > SPACING_REL_TOL
            if np.any(gaps):
                missing = int(np.sum(np.round(ratios[gaps]) - 1))
                where = pos[:-1][steps >= POSITION_TOL_MM][gaps]
                problems.append(f"gap: about {missing} missing slice(s) after position(s) "
                                f"{', '.join(f'{w:.2f}' for w in where[:5])} mm "
                                f"(spacing {dz:.3f} mm)")
            if np.any(irregular) and not np.any(gaps) and not dups:
                mean = float((pos[-1] - pos[0]) / (len(pos) - 1))
                dev = float(np.max(np.abs(steps - mean)) / mean)
                if dev <= IRREGULAR_REL_TOL:
                    n = int(round((pos[-1] - pos[0]) / mean)) + 1
                    dz, resample_from = mean, pos.copy()
                    slice_index = list(range(n))
                    warnings.append(
                        f"irregular slice spacing: steps from {good.min():.3f} to {good.max():.3f} "
                        f"mm (up to {100 * dev:.1f} % off their mean {mean:.3f} mm, within "
                        f"{100 * IRREGULAR_REL_TOL:g} %): resampled onto a regular {mean:.3f} mm "
                        f"grid of {n} slices by linear interpolation")
                    irregular = np.zeros_like(irregular)
                else:
                    problems.append(
                        f"irregular slice spacing: steps from {good.min():.3f} to {good.max():.3f} "
                        f"mm, up to {100 * dev:.1f} % off their mean {mean:.3f} mm (at most "
                        f"{100 * IRREGULAR_REL_TOL:g} % can be resampled); check for missing or "
                        "extra slices, or resample the series in the scanner's software")
                    irregular = np.zeros_like(irregular)
            if np.any(irregular):
                problems.append(f"irregular slice spacing: steps from {good.min():.3f} to "
                                f"{good.max():.3f} mm")
            if resample_from is None:
                slice_index = [0] + list(np.cumsum(np.maximum(1, np.round(np.maximum(steps, 0) / dz))
                                                   .astype(int)))
    direction = np.column_stack([row, col, normal]).flatten()
    first = items[order[0]][1]
    return _Geometry(order=order, positions=pos,
                     origin=tuple(_floats(first, "ImagePositionPatient", items[order[0]][0])),
                     direction=tuple(float(v) for v in direction),
                     spacing=(px[1], px[0], dz), size=(cols, rows, int(slice_index[-1]) + 1),
                     slice_index=[int(i) for i in slice_index], problems=problems,
                     resample_from=resample_from, warnings=warnings)


# ----------------------------------------------------------------------------- public API

def find_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Every image series under ``folder`` (searched recursively), largest first.

    Non-DICOM files are skipped (debug log); a truncated DICOM file raises :class:`InputError`.
    """
    folder = Path(folder)
    out = []
    for uid, items in _scan(folder).items():
        geo = _geometry(items)
        items = [items[i] for i in geo.order]
        ds0 = items[0][1]
        modality = str(ds0.get("Modality", "")).upper()
        headers = [d for _, d in items]
        suv_ok, missing = None, []
        if modality == "PT":
            missing = required_tags_missing(headers)
            suv_ok = not missing
        out.append(SeriesInfo(uid=uid, modality=modality,
                              description=str(ds0.get("SeriesDescription", "") or ""),
                              files=[p for p, _ in items], size=geo.size, spacing=geo.spacing,
                              suv_ok=suv_ok, suv_missing=missing, problems=geo.problems,
                              warnings=geo.warnings,
                              folder=folder, headers=headers))
    out.sort(key=lambda s: (-s.n_slices, s.modality, s.uid))
    return out


def _select(info_or_folder, series_uid: str | None) -> SeriesInfo:
    if isinstance(info_or_folder, SeriesInfo):
        return info_or_folder
    folder = Path(info_or_folder)
    series = find_series(folder)
    if series_uid is not None:
        hits = [s for s in series if s.uid == series_uid]
        if not hits:
            raise InputError(f"no series with SeriesInstanceUID {series_uid}", folder)
        return hits[0]
    if len(series) > 1:
        listing = "; ".join(f"{s.modality} '{s.description}' {s.n_slices} slices uid {s.uid}"
                            for s in series)
        raise InputError(f"{len(series)} series found, expected one: {listing}. Put one series per "
                         "folder or choose one by its SeriesInstanceUID", folder)
    return series[0]


def read_series(info_or_folder: SeriesInfo | str | os.PathLike, series_uid: str | None = None,
                allow_gaps: bool = False, slice_factors: list[float] | float | None = None
                ) -> sitk.Image:
    """The modality values of one series as a float32 SimpleITK image (CT in HU, PET in its Units).

    Raises :class:`InputError` on duplicate positions, mixed orientations, irregular spacing beyond
    :data:`IRREGULAR_REL_TOL`, and on gaps unless ``allow_gaps`` (missing slices are then filled
    with 0 and a warning is logged). Steps irregular within the tolerance are interpolated onto a
    regular grid; the warning goes to the log and into the image (``PETDiffusion.warnings``).
    ``slice_factors`` (one per sorted slice, or one for all) multiply the values before that.
    """
    info = _select(info_or_folder, series_uid)
    where = info.files[0].parent
    blocking = [p for p in info.problems if not (allow_gaps and p.startswith("gap"))]
    if blocking:
        raise InputError(f"series {info.modality} '{info.description}' cannot be stacked into a "
                         f"volume: {'; '.join(blocking)}", where)
    for p in info.problems:
        log.warning("%s: %s (filled with 0)", where, p)
    items = list(zip(info.files, info.headers))
    geo = _geometry(items)  # headers are sorted already; order is the identity
    if not isinstance(slice_factors, (list, tuple)):
        slice_factors = [slice_factors] * len(items)
    arr = np.zeros(geo.size[::-1], dtype=np.float32)
    if geo.resample_from is None:
        for z, (path, ds), f in zip(geo.slice_index, items, slice_factors):
            arr[z] = _slice_values(path, ds)
            if f is not None:
                arr[z] *= np.float32(f)
    else:
        _interpolate_slices(arr, items, slice_factors, geo)
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(geo.origin)
    img.SetSpacing(geo.spacing)
    img.SetDirection(geo.direction)
    _put_patient_metadata(img, info.headers[0], info.modality)
    for w in geo.warnings:
        log.warning("%s: %s", where, w)
        add_warning(img, w)
    return img


def _interpolate_slices(arr: np.ndarray, items, slice_factors, geo: _Geometry) -> None:
    """Fill ``arr`` (regular grid) by linear interpolation between the two source slices that
    bracket each regular position; reads every source slice once, in order."""
    pos = geo.positions - geo.positions[0]
    targets = np.arange(arr.shape[0]) * geo.spacing[2]
    upper = np.clip(np.searchsorted(pos, targets, side="left"), 1, len(pos) - 1)
    cache: dict[int, np.ndarray] = {}

    def values(i: int) -> np.ndarray:
        if i not in cache:
            path, ds = items[i]
            v = _slice_values(path, ds)
            if slice_factors[i] is not None:
                v *= np.float32(slice_factors[i])
            cache[i] = v
            for k in [k for k in cache if k < i - 1]:
                del cache[k]
        return cache[i]

    for z, (t, j) in enumerate(zip(targets, upper)):
        w = float(np.clip((t - pos[j - 1]) / (pos[j] - pos[j - 1]), 0.0, 1.0))
        arr[z] = (1.0 - w) * values(j - 1) + w * values(j)


def _slice_values(path: Path, ds: Dataset) -> np.ndarray:
    try:
        pixels = pydicom.dcmread(path).pixel_array
    except Exception as exc:
        raise InputError(f"cannot decode pixel data ({type(exc).__name__}: {exc}); transfer syntax "
                         f"{ds.file_meta.get('TransferSyntaxUID', '?')}", path) from exc
    slope = _number(ds, "RescaleSlope", path, 1.0)
    intercept = _number(ds, "RescaleIntercept", path, 0.0)
    if slope == 0:
        raise InputError("RescaleSlope (0028,1053) is 0: every value would be the intercept", path)
    with np.errstate(over="ignore", invalid="ignore"):
        values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if not np.all(np.isfinite(values)):
        raise InputError(f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g} (0028,1053/1052) "
                         "give values beyond the float32 range", path)
    return values


def _number(ds: Dataset, keyword: str, path: Path, default: float) -> float:
    """A single numeric tag as a finite float (``default`` when absent or empty)."""
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise InputError(f"{keyword} {str(value)!r} is not a finite number", path)
    return v


def _meta_number(ds: Dataset, keyword: str) -> str | None:
    """A patient fact for the image metadata, or None (with a debug line) when malformed."""
    try:
        v = float(ds.get(keyword))
    except (TypeError, ValueError):
        log.debug("ignoring malformed %s %r", keyword, ds.get(keyword))
        return None
    return f"{v:g}" if math.isfinite(v) else None


def _age_years(value) -> float | None:
    m = re.fullmatch(r"(\d{1,3})([DWMY])", str(value or "").strip().upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return n / {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[unit]


def corrections(img: sitk.Image) -> list[str] | None:
    """The CorrectedImage (0028,0051) values a DICOM PET series was read with (e.g. ATTN, SCAT,
    DECY), or None when the image did not come from DICOM or the header lists none."""
    if not img.HasMetaDataKey(CORRECTED_KEY):
        return None
    return [v for v in img.GetMetaData(CORRECTED_KEY).split("\\") if v]


def resolve_kvp(ct: sitk.Image, kvp: float | None) -> tuple[float, str]:
    """The tube voltage for HU -> mu and where it came from: the parameter, the DICOM header, or
    the default (the caller warns)."""
    if kvp is not None:
        return float(kvp), "parameter"
    if ct.HasMetaDataKey(KVP_KEY):
        try:
            return float(ct.GetMetaData(KVP_KEY)), "DICOM (0018,0060) KVP"
        except ValueError:
            pass
    return float(DEFAULT_KVP), f"default {DEFAULT_KVP} (the CT records none)"


def _put_patient_metadata(img: sitk.Image, ds: Dataset, modality: str) -> None:
    img.SetMetaData(MODALITY_KEY, modality)
    for key, keyword in ((KVP_KEY, "KVP"), (WEIGHT_KEY, "PatientWeight"),
                         (HEIGHT_KEY, "PatientSize")):
        value = _meta_number(ds, keyword) if ds.get(keyword) else None
        if value is not None:
            img.SetMetaData(key, value)
    if ds.get("PatientSex"):
        img.SetMetaData(SEX_KEY, str(ds.PatientSex))
    corrected = ds.get("CorrectedImage")
    if corrected:
        values = [corrected] if isinstance(corrected, str) else list(corrected)
        img.SetMetaData(CORRECTED_KEY, "\\".join(str(v).strip().upper() for v in values))
    age = _age_years(ds.get("PatientAge"))
    if age is not None:
        img.SetMetaData(AGE_KEY, f"{age:g}")
    if modality == "CT":
        set_units(img, "HU")
    elif modality == "PT":
        set_units(img, PET_UNITS.get(str(ds.get("Units", "")).upper(), str(ds.get("Units", ""))))


def read_pet_suv(info_or_folder: SeriesInfo | str | os.PathLike, suv_type: str = "bw",
                 overrides: SUVOverrides | dict | None = None, series_uid: str | None = None,
                 allow_gaps: bool = False, limits: SUVLimits = DEFAULT_LIMITS
                 ) -> tuple[sitk.Image, SUVFactor]:
    """A PET series in SUV (``suv_type`` bw, lbm, bsa, ibw) and the factor with its rule.

    The factor's facts are checked against ``limits`` (docs/PHYSICS.md §1 "Plausibility rules")
    before any pixel is read; the SUV image must stay below :data:`SUV_MAX_PLAUSIBLE`."""
    info = _select(info_or_folder, series_uid)
    if info.modality != "PT":
        raise InputError(f"series '{info.description}' is {info.modality or 'of unknown modality'}, "
                         "not PET (PT): no SUV", info.files[0].parent)
    factor = suv_factor(info.headers, suv_type, overrides, path=info.files[0].parent,
                        limits=limits)
    img = read_series(info, allow_gaps=allow_gaps,
                      slice_factors=factor.slice_factors if factor.slice_factors is not None
                      else factor.factor)
    out = set_units(img, factor.units)
    out.SetMetaData(SUV_FACTOR_KEY, f"{factor.factor:.10g}")
    out.SetMetaData(SUV_RULE_KEY, factor.rule)
    hi = float(np.max(sitk.GetArrayViewFromImage(out)))
    if not hi <= SUV_MAX_PLAUSIBLE:  # also NaN
        raise InputError(f"the SUV would reach {hi:.4g}, beyond the plausible {SUV_MAX_PLAUSIBLE:g} "
                         f"(docs/PHYSICS.md §1 'Plausibility rules'): the header's dose, weight or "
                         f"units are wrong (factor {factor.factor:.6g} from {factor.rule}); check "
                         "them or give --weight-kg / --dose-mbq", info.files[0].parent)
    return out, factor


def read_dicom_image(folder: str | os.PathLike, suv_type: str = "bw",
                     overrides: SUVOverrides | dict | None = None,
                     allow_gaps: bool = False) -> sitk.Image:
    """The one series in ``folder``: PET converted to SUV (SUVbw by default), CT in HU, others as
    modality values. Several series raise :class:`InputError` listing them."""
    info = _select(folder, None)
    if info.modality == "PT":
        return read_pet_suv(info, suv_type, overrides, allow_gaps=allow_gaps)[0]
    return read_series(info, allow_gaps=allow_gaps)
