"""Standardized uptake value (SUV) from DICOM PET headers, vendor-correct.

Implements PHYSICS.md §1 (QIBA FDG-PET/CT profile v1.13 appendix G and H; the IBSI SUV manual,
Vácha et al., ``../shared/data/suv_dro_ibsi/docs/``). Everything works from pydicom Datasets so
that the same code serves the DICOM reader, the CLI and tests that build headers by hand.

The factor returned multiplies the *modality value* (stored × RescaleSlope + RescaleIntercept,
applied per slice by the reader) and gives the requested SUV. When DecayCorrection is NONE the factor
differs per slice (each frame is decay corrected on its own); :attr:`SUVFactor.slice_factors` then
holds one factor per dataset, in the order given.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Iterable, Sequence

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from PETDiffusionLib.errors import InputError, MissingTagError
# body size formulas, re-exported here where callers import them from
from PETDiffusionLib.physics.body_size import (bsa_dubois_m2, ibw_kg, lbm_james_kg,
                                               lbm_janmahasatian_kg)
from PETDiffusionLib.physics.suv_rules import (DEFAULT_LIMITS, OVERRIDE_HINT, SUVLimits, at_day,
                                               check_decay_interval, check_header_value,
                                               check_override, parse_injection_override)

log = logging.getLogger(__name__)

# Vendor private tags (PHYSICS.md §1; IBSI manual, Suppl. Table 1).
# Philips "PHILIPS PET PRIVATE GROUP" (Philips Ingenuity conformance statement):
PHILIPS_SUV_SCALE_FACTOR = (0x7053, 0x1000)  # DS: SUV = (SV·m + b) · f, Units CNTS
PHILIPS_ACTIVITY_CONC_SCALE_FACTOR = (0x7053, 0x1009)  # DS: Bq/mL = (SV·m + b) · f, Units CNTS
# GE "GEMS_PETD_01" PET scan_datetime (GE conformance statements; QIBA appendix G):
GE_PET_SCAN_DATETIME = (0x0009, 0x100D)  # DT: decay-correction reference when SeriesTime was modified

# RadionuclideTotalDose (0018,1074) below this is taken as MBq, not Bq: a PET dose is ~1e8 Bq, the
# IBSI metadata analysis found two peaks at ~4e2 (MBq) and ~4e8 (Bq) (PHYSICS.md §1; IBSI DRO_3_0).
DOSE_MBQ_THRESHOLD = 1e4
# PatientWeight (0010,1030) above this was entered in grams (IBSI manual, "Patient's weight").
WEIGHT_GRAMS_THRESHOLD = 1000.0

# Half-lives in seconds when RadionuclideHalfLife (0018,1075) is absent, by radionuclide name.
# F-18 and Ga-68: PHYSICS.md §1 (6586.2 s as in headers; Ga-68 4057.7 s as in IBSI DRO_5_0).
# C-11 (20.364 min) and N-13 (9.965 min): NNDC NuDat 3 ground-state half-lives.
HALF_LIFE_S = {"F18": 6586.2, "GA68": 4057.7, "C11": 1221.84, "N13": 597.9}

SUV_TYPES = ("bw", "lbm", "bsa", "ibw")
SUV_UNITS = {"bw": "SUVbw", "lbm": "SUVlbm", "bsa": "SUVbsa", "ibw": "SUVibw"}


@dataclass
class SUVOverrides:
    """Values typed by the user when the header lacks (or has wrong) ones."""
    weight_kg: float | None = None
    dose_mbq: float | None = None
    injection_time: datetime | str | None = None  # datetime, "YYYY-MM-DD HH:MM[:SS]" or "HH:MM[:SS]"
    height_m: float | None = None
    sex: str | None = None
    # a conscious override of the decay interval injection -> scan reference (docs/PHYSICS.md §1
    # "Plausibility rules"): the header times are then not used
    force_decay_minutes: float | None = None


@dataclass
class SUVFactor:
    """SUV = modality value × factor (or × slice_factors[i] for dataset i)."""
    factor: float
    rule: str
    suv_type: str = "bw"
    units: str = "SUVbw"
    decayed_dose_bq: float | None = None
    injected_dose_bq: float | None = None
    weight_kg: float | None = None
    injection_time: datetime | None = None
    reference_time: datetime | None = None
    half_life_s: float | None = None
    pixel_units: str | None = None
    slice_factors: list[float] | None = None
    warnings: list[str] = field(default_factory=list)

    def for_slice(self, index: int) -> float:
        return self.slice_factors[index] if self.slice_factors is not None else self.factor


# ----------------------------------------------------------------------------- DICOM value parsing

def _s(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    return str(value).strip().rstrip("\x00").strip()


def parse_da(value) -> date | None:
    """DICOM DA (YYYYMMDD) -> date; ValueError saying why for a malformed value."""
    s = _s(value)
    if not s:
        return None
    if not re.fullmatch(r"\d{8}", s[:8]) or len(s) not in (8,):
        raise ValueError(f"not a DICOM date YYYYMMDD: {s!r}")
    try:
        return datetime.strptime(s, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"not a real date: {s!r}") from None


def parse_tm(value) -> timedelta | None:
    """DICOM TM (HHMMSS.FFFFFF, shorter forms allowed; also HH:MM:SS) -> time since midnight.

    ValueError for a malformed value or one that is not a real time (hours 0-23, minutes 0-59,
    seconds 0-60: DICOM PS3.5 Table 6.2-1 allows a leap second)."""
    s = _s(value).replace(":", "")
    if not s:
        return None
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", s)
    if not m:
        raise ValueError(f"not a DICOM time: {s!r}")
    h, mi, se, frac = m.groups()
    if int(h) > 23 or int(mi or 0) > 59 or int(se or 0) > 60:
        raise ValueError(f"not a real time of day: {s!r}")
    return timedelta(hours=int(h), minutes=int(mi or 0), seconds=int(se or 0) + float(frac or 0.0))


def parse_dt(value) -> datetime | None:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF[&ZZXX]); a UTC offset is ignored (all times of one study
    share it)."""
    s = re.split(r"[+-]", _s(value))[0]
    if not s:
        return None
    d = parse_da(s[:8])
    t = parse_tm(s[8:]) if len(s) > 8 else timedelta(0)
    return datetime.combine(d, datetime.min.time()) + t


_TAG_NUMBERS = {"SeriesDate": "(0008,0021)", "SeriesTime": "(0008,0031)",
                "AcquisitionDate": "(0008,0022)", "AcquisitionTime": "(0008,0032)",
                "AcquisitionDateTime": "(0008,002A)", "RadiopharmaceuticalStartTime": "(0018,1072)",
                "RadiopharmaceuticalStartDateTime": "(0018,1078)",
                "GE private scan datetime": "(0009,100D)"}


def _tag_value(ds: Dataset, keyword, parser, path, name: str | None = None):
    """``parser(ds[keyword])``, or InputError naming the file, the tag and the bad value."""
    value = ds.get(keyword)
    if isinstance(value, DataElement):  # private tags are looked up by number
        value = value.value
    try:
        return parser(value)
    except ValueError as exc:
        name = name or keyword
        raise InputError(f"{name} {_TAG_NUMBERS.get(name, '')} {_s(value)!r} is malformed ({exc}); "
                         "fix the header (the SUV needs it) or give --injection-time / "
                         "--force-decay-minutes", path) from None


def _combine(d: date | None, t: timedelta | None) -> datetime | None:
    if d is None or t is None:
        return None
    return datetime.combine(d, datetime.min.time()) + t


def _float(value) -> float | None:
    s = _s(value)
    if not s:
        return None
    try:
        return float(s.split("\\")[0])
    except ValueError:
        return None


def _private(ds: Dataset, tag: tuple[int, int]):
    elem = ds.get(tag)
    return None if elem is None else elem.value


def _radiopharm(ds: Dataset) -> Dataset:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else Dataset()


# ----------------------------------------------------------------------------- the rules

def _reference_normaliser_kg(suv_type: str, weight_kg: float, height_m: float | None,
                             sex: str | None, path) -> float:
    """Mass (kg) or, for bsa, area (cm² / 1000, so that ×1000 g gives cm²) that replaces W."""
    if suv_type == "bw":
        return weight_kg
    missing = [n for n, v in (("PatientSize", height_m), ("PatientSex", sex)) if not v]
    if suv_type == "bsa":
        missing = [m for m in missing if m != "PatientSex"]
    if missing:
        raise MissingTagError(missing, path, what=SUV_UNITS[suv_type])
    if suv_type == "lbm":
        return lbm_janmahasatian_kg(weight_kg, height_m, sex)
    if suv_type == "ibw":
        return ibw_kg(height_m, sex)
    if suv_type == "bsa":
        return bsa_dubois_m2(weight_kg, height_m) * 1e4 / 1000.0  # cm², expressed per 1000
    raise ValueError(suv_type)


def _gml_stored_type_to_bw(ds: Dataset, units: str, weight_kg: float | None, height_m, sex,
                           path) -> tuple[float, str]:
    """GML/CM2ML pixels hold some SUV already: the factor that turns them back into SUVbw."""
    suv_type = _s(ds.get("SUVType")).upper() or "BW"
    if units == "CM2ML":
        suv_type = "BSA"
    if suv_type == "BW":
        return 1.0, "Units GML with SUVType BW (or empty): pixels already SUVbw, factor 1"
    missing = [n for n, v in (("PatientWeight", weight_kg), ("PatientSize", height_m)) if not v]
    if suv_type != "BSA" and not sex:
        missing.append("PatientSex")
    if missing:
        raise MissingTagError(missing, path, what=f"SUVbw from Units {units}/SUVType {suv_type}")
    if suv_type == "BSA":
        # SUVbsa = C·BSA[cm²]/D and SUVbw = C·W[g]/D  ->  SUVbw = SUVbsa · W[g] / BSA[cm²]
        bsa_cm2 = bsa_dubois_m2(weight_kg, height_m) * 1e4
        return weight_kg * 1000.0 / bsa_cm2, (
            f"Units {units} (SUVbsa, Du Bois BSA {bsa_cm2:.1f} cm²): SUVbw = value × W[g]/BSA[cm²]")
    masses = {"LBM": lambda: lbm_james_kg(weight_kg, height_m, sex, 120.0),
              "LBMJAMES128": lambda: lbm_james_kg(weight_kg, height_m, sex, 128.0),
              "LBMJANMA": lambda: lbm_janmahasatian_kg(weight_kg, height_m, sex),
              "IBW": lambda: ibw_kg(height_m, sex)}
    if suv_type not in masses:
        raise InputError(f"SUVType {suv_type!r} with Units GML is not a DICOM SUV type", path)
    mass = masses[suv_type]()
    return weight_kg / mass, (f"Units GML with SUVType {suv_type} ({mass:.2f} kg, sex {sex}): "
                              "SUVbw = value × W/mass")


def _acquisition_dt(ds: Dataset, fallback_date: date | None, path) -> datetime | None:
    adt = _tag_value(ds, "AcquisitionDateTime", parse_dt, path)
    if adt is not None:
        return adt
    return _combine(_tag_value(ds, "AcquisitionDate", parse_da, path) or fallback_date,
                    _tag_value(ds, "AcquisitionTime", parse_tm, path))


def _average_count_rate_time_s(lam: float, frame_s: float) -> float:
    """T_ave = (1/λ)·ln(λT / (1 − e^(−λT))) (IBSI manual, DC START option A.4)."""
    x = lam * frame_s
    return math.log(x / -math.expm1(-x)) / lam


def _validated_overrides(overrides, limits: SUVLimits) -> SUVOverrides:
    if isinstance(overrides, dict):
        overrides = SUVOverrides(**overrides)
    ov = overrides or SUVOverrides()
    return SUVOverrides(
        weight_kg=check_override("--weight-kg", ov.weight_kg, limits.weight_kg, "kg"),
        dose_mbq=check_override("--dose-mbq", ov.dose_mbq, limits.dose_mbq, "MBq"),
        injection_time=ov.injection_time if ov.injection_time not in (None, "") else None,
        height_m=check_override("--height-m", ov.height_m, limits.height_m, "m"),
        sex=ov.sex,
        force_decay_minutes=check_override("--force-decay-minutes", ov.force_decay_minutes,
                                           limits.force_decay_minutes, "min"))


def _header_weight(ds: Dataset, ov: SUVOverrides, limits: SUVLimits, path,
                   warnings: list[str]) -> float | None:
    if ov.weight_kg is not None:
        return ov.weight_kg
    weight = _float(ds.get("PatientWeight"))
    if not weight:  # absent, empty or 0: unknown (PatientWeight is Type 2/3)
        return None
    note = ""
    if weight > WEIGHT_GRAMS_THRESHOLD:
        warnings.append(f"PatientWeight {weight} > {WEIGHT_GRAMS_THRESHOLD:g}: taken as grams")
        note = f" (PatientWeight {weight:g} read as grams)"
        weight /= 1000.0
    check_header_value("PatientWeight (0010,1030)", weight, limits.weight_kg, "kg", path,
                       "--weight-kg", note)
    return weight


def _header_dose(rp: Dataset, ov: SUVOverrides, limits: SUVLimits, path,
                 warnings: list[str]) -> float | None:
    if ov.dose_mbq is not None:
        return ov.dose_mbq * 1e6
    dose_bq = _float(rp.get("RadionuclideTotalDose"))
    if not dose_bq:
        return None
    note = ""
    if 0 < dose_bq < DOSE_MBQ_THRESHOLD:
        warnings.append(f"RadionuclideTotalDose {dose_bq:g} is implausibly small for Bq: read as MBq")
        note = f" (RadionuclideTotalDose {dose_bq:g} read as MBq)"
        dose_bq *= 1e6
    check_header_value("RadionuclideTotalDose (0018,1074)", dose_bq / 1e6, limits.dose_mbq, "MBq",
                       path, "--dose-mbq", note)
    return dose_bq


def suv_factor(ds_or_datasets: Dataset | Sequence[Dataset], suv_type: str = "bw",
               overrides: SUVOverrides | dict | None = None, path=None,
               log_warnings: bool = True, limits: SUVLimits = DEFAULT_LIMITS) -> SUVFactor:
    """The SUV factor of a PET series (PHYSICS.md §1). ``suv_type`` is bw, lbm (SUL, Janmahasatian),
    bsa (Du Bois) or ibw.

    Raises :class:`MissingTagError` listing every tag the computation needs and lacks, and
    :class:`InputError` naming the tag and its value when a fact is malformed or implausible
    (docs/PHYSICS.md §1 "Plausibility rules", :mod:`PETDiffusionLib.physics.suv_rules`).
    """
    datasets = [ds_or_datasets] if isinstance(ds_or_datasets, Dataset) else list(ds_or_datasets)
    if not datasets:
        raise InputError("no DICOM datasets given for SUV", path)
    if suv_type not in SUV_TYPES:
        raise InputError(f"unknown SUV type {suv_type!r} (choose {', '.join(SUV_TYPES)})", path)
    ov = _validated_overrides(overrides, limits)
    ds = datasets[0]
    warnings: list[str] = []

    units = _s(ds.get("Units")).upper()
    weight = _header_weight(ds, ov, limits, path, warnings)
    height = ov.height_m if ov.height_m else _float(ds.get("PatientSize"))
    if height and not ov.height_m and suv_type != "bw":
        check_header_value("PatientSize (0010,1020)", height, limits.height_m, "m", path,
                           "--height-m", " (DICOM gives metres)")
    sex = ov.sex or _s(ds.get("PatientSex")) or None
    corrected = [_s(c).upper() for c in (ds.get("CorrectedImage") or [])]
    # DecayCorrection NONE means DECY is absent on purpose.
    needed = ("ATTN",) if _s(ds.get("DecayCorrection")).upper() == "NONE" else ("ATTN", "DECY")
    for need in needed:
        if corrected and need not in corrected:
            warnings.append(f"CorrectedImage lacks {need}: SUV may be biased")

    result = SUVFactor(factor=1.0, rule="", suv_type=suv_type, units=SUV_UNITS[suv_type],
                       weight_kg=weight, pixel_units=units, warnings=warnings)

    # --- Units that already hold an SUV: no dose or time needed.
    if units in ("GML", "CM2ML"):
        to_bw, rule = _gml_stored_type_to_bw(ds, units, weight, height, sex, path)
        if suv_type != "bw":
            if not weight:
                raise MissingTagError(["PatientWeight"], path, what=SUV_UNITS[suv_type])
            norm = _reference_normaliser_kg(suv_type, weight, height, sex, path)
            to_bw *= norm / weight
            rule += f"; then × {norm:.4g}/{weight:g} for {SUV_UNITS[suv_type]}"
        result.factor, result.rule = to_bw, rule
        return _finish(result, log_warnings, path)

    # --- Philips counts with a direct SUV scale factor.
    if units == "CNTS":
        suv_sf = _float(_private(ds, PHILIPS_SUV_SCALE_FACTOR))
        acsf = _float(_private(ds, PHILIPS_ACTIVITY_CONC_SCALE_FACTOR))
        manual = any(v is not None for v in (ov.weight_kg, ov.dose_mbq, ov.injection_time,
                                              ov.force_decay_minutes))
        if suv_sf and not manual:
            result.factor = suv_sf
            result.rule = ("Units CNTS: Philips private (7053,1000) SUV Scale Factor "
                           f"{suv_sf:g} gives SUVbw directly")
            if suv_type != "bw":
                if not weight:
                    raise MissingTagError(["PatientWeight"], path, what=SUV_UNITS[suv_type])
                norm = _reference_normaliser_kg(suv_type, weight, height, sex, path)
                result.factor *= norm / weight
                result.rule += f"; × {norm:.4g}/{weight:g} for {SUV_UNITS[suv_type]}"
            return _finish(result, log_warnings, path)
        if not acsf:
            raise InputError(
                "Units CNTS (Philips counts) without the private (7053,1009) Activity "
                "Concentration Scale Factor" + ("" if suv_sf else " or (7053,1000) SUV Scale Factor")
                + ": the counts cannot be turned into Bq/mL, so no manual weight, dose or time "
                "can give an SUV. Export the series again from the scanner keeping the Philips "
                "private group 7053 (anonymisers often strip it), or as Units BQML"
                + ("; or leave out the manual options to use the SUV Scale Factor" if suv_sf else ""),
                path)
        activity_scale, units_rule = acsf, (
            f"Units CNTS: Philips private (7053,1009) Activity Concentration Scale Factor {acsf:g} "
            "× modality value gives Bq/mL; then as BQML")
    elif units == "BQML":
        activity_scale, units_rule = 1.0, "Units BQML"
    else:
        raise InputError(f"PET Units {units or '(empty)'} cannot be converted to SUV "
                         "(supported: BQML, CNTS, GML, CM2ML)", path)

    # --- Activity concentration: need weight, dose, times, half-life.
    rp = _radiopharm(ds)
    dose_bq = _header_dose(rp, ov, limits, path, warnings)
    half_life = _float(rp.get("RadionuclideHalfLife"))
    if half_life:
        check_header_value("RadionuclideHalfLife (0018,1075)", half_life, limits.half_life_s, "s",
                           path, None)
    else:
        half_life = _half_life_from_code(rp)
    decay = _s(ds.get("DecayCorrection")).upper()
    series_date = _tag_value(ds, "SeriesDate", parse_da, path)
    series_dt = _combine(series_date, _tag_value(ds, "SeriesTime", parse_tm, path))

    missing = []
    if not weight:
        missing.append("PatientWeight (0010,1030)")
    if not dose_bq:
        missing.append("RadionuclideTotalDose (0018,1074)")
    if decay != "ADMIN":
        if not half_life:
            missing.append("RadionuclideHalfLife (0018,1075)")
        if not (ov.injection_time or ov.force_decay_minutes is not None
                or rp.get("RadiopharmaceuticalStartDateTime")
                or rp.get("RadiopharmaceuticalStartTime")):
            missing.append("RadiopharmaceuticalStartDateTime (0018,1078) or "
                           "RadiopharmaceuticalStartTime (0018,1072)")
    if not decay:
        missing.append("DecayCorrection (0054,1102)")
    if missing:
        raise MissingTagError(missing, path)
    if decay not in ("START", "ADMIN", "NONE"):
        raise InputError(f"DecayCorrection {decay!r} is not START, ADMIN or NONE", path)

    result.injected_dose_bq = dose_bq
    result.half_life_s = half_life
    norm = _reference_normaliser_kg(suv_type, weight, height, sex, path)
    base = activity_scale * norm * 1000.0  # W[g] (or LBM/IBW [g], BSA [cm²])
    name = SUV_UNITS[suv_type]

    if decay == "ADMIN":
        if ov.injection_time or ov.force_decay_minutes is not None:
            warnings.append("DecayCorrection ADMIN: the pixels refer to the injection time, so "
                            "--injection-time/--force-decay-minutes do not change the SUV")
        result.decayed_dose_bq = dose_bq
        result.factor = base / dose_bq
        result.rule = (f"{units_rule}; DecayCorrection ADMIN: pixels refer to injection time, "
                       f"undecayed dose {dose_bq / 1e6:.2f} MBq; {name} = C × {norm:.4g} kg·1000 / D")
        return _finish(result, log_warnings, path)

    lam = math.log(2) / half_life
    acq_dts = [_acquisition_dt(d, series_date, path) for d in datasets]
    known_acq = [a for a in acq_dts if a is not None]
    earliest_acq = min(known_acq) if known_acq else None

    # Reference (scan) time, QIBA appendix G.
    if decay == "START":
        ref, ref_rule = _scan_reference_time(datasets, acq_dts, series_dt, earliest_acq, lam, path)
    else:  # NONE: frames are decay corrected to injection, the scan reference is irrelevant
        ref, ref_rule = earliest_acq or series_dt, "earliest acquisition"
        if ref is None:
            raise MissingTagError(["AcquisitionTime (0008,0032)"], path)

    inj, inj_rule = _injection_time(rp, ov, ref, ref_rule, path, warnings, limits, half_life)
    result.injection_time, result.reference_time = inj, ref

    if decay == "START":
        dt_s = (ref - inj).total_seconds()
        decayed = dose_bq * math.exp(-lam * dt_s)
        result.decayed_dose_bq = decayed
        result.factor = base / decayed
        result.rule = (f"{units_rule}; DecayCorrection START: dose {dose_bq / 1e6:.2f} MBq decayed "
                       f"{dt_s / 60:.2f} min (T½ {half_life:g} s) from injection ({inj_rule}) to scan "
                       f"reference ({ref_rule}) = {decayed / 1e6:.2f} MBq; "
                       f"{name} = C × {norm:.4g} kg·1000 / D")
        return _finish(result, log_warnings, path)

    # NONE: per-frame decay correction factor DCF = λΔt / (e^(−λ t1) − e^(−λ t2)), frame [t1, t2]
    # from injection (PHYSICS.md §1; IBSI manual, DC NONE), with the undecayed dose.
    factors = []
    for d, acq in zip(datasets, acq_dts):
        dur_ms = _float(d.get("ActualFrameDuration"))
        if acq is None or not dur_ms or dur_ms <= 0:
            raise MissingTagError(["AcquisitionTime (0008,0032)", "ActualFrameDuration (0018,1242)"],
                                  path, what="SUV with DecayCorrection NONE")
        check_decay_interval(inj, acq, inj_rule, "a frame's AcquisitionDate/Time", path, limits,
                             half_life)
        t1 = (acq - inj).total_seconds()
        t2 = t1 + dur_ms / 1000.0
        dcf = lam * (t2 - t1) / (math.exp(-lam * t1) - math.exp(-lam * t2))
        factors.append(base / dose_bq * dcf)
    result.decayed_dose_bq = dose_bq
    result.slice_factors = factors
    result.factor = factors[0]
    result.rule = (f"{units_rule}; DecayCorrection NONE: each frame decay corrected to injection "
                   f"({inj_rule}) with DCF = λΔt/(e^-λt1 − e^-λt2), T½ {half_life:g} s; undecayed dose "
                   f"{dose_bq / 1e6:.2f} MBq; factor varies per slice "
                   f"({min(factors):.6g}..{max(factors):.6g})")
    return _finish(result, log_warnings, path)


def _finish(result: SUVFactor, log_warnings: bool = True, path=None) -> SUVFactor:
    for w in result.warnings if log_warnings else ():
        log.warning("SUV: %s", w)
    if not (result.factor > 0 and math.isfinite(result.factor)):
        raise InputError(f"SUV factor {result.factor} is not a positive number ({result.rule})", path)
    return result


def _half_life_from_code(rp: Dataset) -> float | None:
    seq = rp.get("RadionuclideCodeSequence")
    if not seq:
        return None
    meaning = re.sub(r"[^A-Z0-9]", "", _s(seq[0].get("CodeMeaning")).upper())
    # "^18^Fluorine" -> "18FLUORINE"
    names = {"18FLUORINE": "F18", "68GALLIUM": "GA68", "11CARBON": "C11", "13NITROGEN": "N13"}
    key = names.get(meaning, meaning)
    return HALF_LIFE_S.get(key)


def _scan_reference_time(datasets, acq_dts, series_dt, earliest_acq, lam, path):
    """QIBA appendix G: SeriesDate/Time unless it is after the earliest acquisition; then the GE
    private scan datetime; then (IBSI manual option A.4) back-computation from the acquisition time,
    FrameReferenceTime and ActualFrameDuration; last, the earliest acquisition time."""
    if series_dt is not None and (earliest_acq is None or series_dt <= earliest_acq):
        return series_dt, "SeriesDate/SeriesTime"
    if series_dt is None and earliest_acq is None:
        raise MissingTagError(["SeriesTime (0008,0031) or AcquisitionTime (0008,0032)"], path)
    ge = _tag_value(datasets[0], GE_PET_SCAN_DATETIME, parse_dt, path,
                    "GE private scan datetime")
    if ge is not None:
        return ge, "GE private (0009,100D) PET scan datetime, SeriesTime is after acquisition"
    i = min((k for k, a in enumerate(acq_dts) if a is not None), key=lambda k: acq_dts[k])
    frame_ref_ms = _float(datasets[i].get("FrameReferenceTime"))
    dur_ms = _float(datasets[i].get("ActualFrameDuration"))
    if frame_ref_ms and dur_ms and frame_ref_ms > 0 and dur_ms > 0:
        t_ave = _average_count_rate_time_s(lam, dur_ms / 1000.0)
        ref = acq_dts[i] + timedelta(seconds=t_ave - frame_ref_ms / 1000.0)
        return ref, ("back-computed t_acq + T_ave − FrameReferenceTime (SeriesTime is after "
                     "acquisition)")
    return earliest_acq, "earliest AcquisitionDate/Time (SeriesTime is after acquisition)"


def _within(inj: datetime, ref: datetime, limits: SUVLimits) -> bool:
    return 0.0 <= (ref - inj).total_seconds() <= limits.max_decay_minutes * 60.0


def _injection_time(rp: Dataset, ov: SUVOverrides, ref: datetime, ref_rule: str, path,
                    warnings: list[str], limits: SUVLimits,
                    half_life: float) -> tuple[datetime, str]:
    """The injection datetime and how it was found; every choice is checked against the decay
    interval rule (docs/PHYSICS.md §1 "Plausibility rules")."""
    if ov.force_decay_minutes is not None:
        if ov.force_decay_minutes > limits.max_decay_minutes:
            warnings.append(f"--force-decay-minutes {ov.force_decay_minutes:g} is beyond the "
                            f"plausible {limits.max_decay_minutes:g} min; used as given")
        return (ref - timedelta(minutes=ov.force_decay_minutes),
                f"decay interval forced to {ov.force_decay_minutes:g} min by hand")
    if ov.injection_time:
        full, tod = parse_injection_override(ov.injection_time)
        if full is not None:
            check_decay_interval(full, ref, "--injection-time", ref_rule, path, limits, half_life)
            return full, "injection time given by hand"
        inj = at_day(ref.date(), tod)
        rule = "injection time of day given by hand"
        if inj > ref and _within(inj - timedelta(days=1), ref, limits):
            inj -= timedelta(days=1)
            rule += " (the day before: after the scan time, midnight crossing)"
        check_decay_interval(inj, ref, "--injection-time on the scan date", ref_rule, path, limits,
                             half_life)
        return inj, rule
    inj_dt = _tag_value(rp, "RadiopharmaceuticalStartDateTime", parse_dt, path)
    t = _tag_value(rp, "RadiopharmaceuticalStartTime", parse_tm, path)
    if inj_dt is not None:
        if _within(inj_dt, ref, limits):
            return inj_dt, "RadiopharmaceuticalStartDateTime"
        if t is None:
            t = inj_dt - datetime.combine(inj_dt.date(), datetime.min.time())
        # A date-shifting anonymiser (TCIA STS_002: one day after the series date) moves the date
        # but keeps the time of day: accept the time of day only when it gives a plausible interval.
        candidates = [at_day(ref.date(), t), at_day(ref.date(), t) - timedelta(days=1)]
        good = [c for c in candidates if _within(c, ref, limits)]
        if not good:
            check_decay_interval(inj_dt, ref, "RadiopharmaceuticalStartDateTime (0018,1078)",
                                 ref_rule, path, limits, half_life)
        warnings.append(f"RadiopharmaceuticalStartDateTime {inj_dt} is "
                        f"{'after' if inj_dt > ref else 'long before'} the scan reference {ref} "
                        "(date-shifting anonymiser?); using its time of day only")
        return good[0], "time of day of RadiopharmaceuticalStartDateTime/StartTime on the scan date"
    if t is None:
        raise MissingTagError(["RadiopharmaceuticalStartTime (0018,1072)"], path)
    inj = at_day(ref.date(), t)
    rule = "RadiopharmaceuticalStartTime on the scan date"
    if inj > ref:  # midnight crossing: injected the day before (PHYSICS.md §1; IBSI DRO_4_2)
        if not _within(inj - timedelta(days=1), ref, limits):
            raise InputError(
                f"RadiopharmaceuticalStartTime (0018,1072) {inj.time()} is "
                f"{(inj - ref).total_seconds() / 60:.1f} min after the scan reference ({ref_rule} = "
                f"{ref}); taken as the day before (a midnight crossing) the decay interval would be "
                f"{(ref - inj + timedelta(days=1)).total_seconds() / 60:.1f} min, beyond the plausible "
                f"0-{limits.max_decay_minutes:g} min: the times are wrong; {OVERRIDE_HINT}", path)
        inj -= timedelta(days=1)
        rule += ", the day before (after the scan time: midnight crossing)"
    check_decay_interval(inj, ref, "RadiopharmaceuticalStartTime (0018,1072)", ref_rule, path,
                         limits, half_life)
    return inj, rule


def required_tags_missing(datasets: Iterable[Dataset]) -> list[str]:
    """Tags a series lacks for SUVbw; [] when SUV can be computed (used by ``inspect``)."""
    try:
        suv_factor(list(datasets), "bw", log_warnings=False)
    except MissingTagError as exc:
        return exc.missing
    except InputError as exc:
        return [str(exc)]
    return []
