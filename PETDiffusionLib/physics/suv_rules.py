"""Plausibility rules for the facts an SUV is computed from (docs/PHYSICS.md §1 "Plausibility rules").

A wrong header gives a wrong SUV without any visible sign: an injection time taken as the day before
(a 23.5 h decay: SUV x ~7000), a dose in the wrong unit, a weight in grams or pounds. Every fact is
therefore checked against a physiological or protocol range before it is used; a fact outside its
range is an :class:`InputError` naming the file, the DICOM tag and its value, and the option that
overrides it consciously. The manual options themselves are validated against the same ranges.

Ranges (each a deliberate, documented choice; :class:`SUVLimits` lets a caller change them):

- Decay interval injection -> scan reference 0-6 h: FDG whole-body imaging starts 60 min (55-75) after
  injection (QIBA FDG-PET/CT profile v1.13, Sec. 3.6), delayed or dual-time-point imaging up to ~3-4 h;
  after 6 h an F-18 dose has decayed to 10 %. Negative means the injection is after the scan.
- Injected activity 10-2500 MBq: the EANM paediatric dosage card minimum for F-18 FDG is 14 MBq
  (Lassmann et al., EJNMMI 2014, 3D mode); Rb-82 cardiac PET uses up to 2220 MBq (ASNC/SNMMI PET
  myocardial perfusion guideline 2016); adult FDG is 2-7 MBq/kg (EANM FDG guideline v2, 2015).
- Body weight 1-350 kg: a premature neonate weighs ~1 kg; PET/CT tables carry at most 227-300 kg
  (vendor specifications), so a value between 350 and 1000 is neither kg nor grams (values above
  1000 are taken as grams by the SUV code, IBSI manual "Patient's weight").
- Body height 0.3-2.6 m (PatientSize (0010,1020) is metres, DICOM PS3.3 C.7.2.2): a value such as 175
  was entered in cm.
- Half-life 60 s-4.5 days: Rb-82 has 76 s and I-124 4.18 d (NNDC NuDat 3), the extremes of PET
  radionuclides in use.
- Forced decay interval (``--force-decay-minutes``) 0-1440 min: a deliberate override may exceed the
  6 h rule but not a day.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from PETDiffusionLib.errors import InputError

OVERRIDE_HINT = ("if the header is right, override consciously with --force-decay-minutes M; "
                 "else give the right injection time with --injection-time HH:MM[:SS] or "
                 "'YYYY-MM-DD HH:MM[:SS]'")


@dataclass(frozen=True)
class SUVLimits:
    """The ranges of docs/PHYSICS.md §1 "Plausibility rules" (see the module docstring)."""
    max_decay_minutes: float = 360.0
    weight_kg: tuple[float, float] = (1.0, 350.0)
    dose_mbq: tuple[float, float] = (10.0, 2500.0)
    height_m: tuple[float, float] = (0.3, 2.6)
    half_life_s: tuple[float, float] = (60.0, 4.5 * 86400.0)
    force_decay_minutes: tuple[float, float] = (0.0, 1440.0)


DEFAULT_LIMITS = SUVLimits()


def _in(value: float, lo_hi: tuple[float, float]) -> bool:
    return math.isfinite(value) and lo_hi[0] <= value <= lo_hi[1]


def check_override(option: str, value, lo_hi: tuple[float, float], unit: str) -> float | None:
    """A manual option's value as a float, or InputError naming the option and the range."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} {value!r} is not a number") from None
    if not _in(v, lo_hi):
        raise InputError(f"{option} {v:g} is outside the plausible range {lo_hi[0]:g}-{lo_hi[1]:g} "
                         f"{unit} (docs/PHYSICS.md §1 'Plausibility rules')")
    return v


def check_header_value(what: str, value: float, lo_hi: tuple[float, float], unit: str, path,
                       option: str | None, note: str = "") -> None:
    """InputError naming the file, the tag and its value when ``value`` is outside ``lo_hi``;
    ``option`` is the manual option that overrides it (None: only a corrected header helps)."""
    if not _in(value, lo_hi):
        fix = f"check the header, or give the right value with {option}" if option else \
            "correct the header"
        raise InputError(f"{what} {value:g} {unit}{note} is implausible (outside "
                         f"{lo_hi[0]:g}-{lo_hi[1]:g} {unit}): the SUV would be wrong; {fix}", path)


def parse_clock_time(value: str) -> timedelta:
    """A manual time of day ``HH:MM`` or ``HH:MM:SS`` (24 h clock, real times only)."""
    s = str(value).strip()
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?", s)
    if not m:
        raise InputError(f"--injection-time {s!r} is not HH:MM[:SS] or 'YYYY-MM-DD HH:MM[:SS]'")
    h, mi, se = int(m.group(1)), int(m.group(2)), float(m.group(3) or 0.0)
    if h > 23 or mi > 59 or se >= 60:
        raise InputError(f"--injection-time {s!r} is not a real time of day (hours 0-23, "
                         "minutes and seconds 0-59)")
    return timedelta(hours=h, minutes=mi, seconds=se)


_FULL_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M",
                 "%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f")


def parse_injection_override(value) -> tuple[datetime | None, timedelta | None]:
    """``--injection-time``: (full datetime, None) or (None, time of day). Raises InputError."""
    if isinstance(value, datetime):
        return value, None
    s = str(value).strip()
    for fmt in _FULL_FORMATS:
        try:
            return datetime.strptime(s, fmt), None
        except ValueError:
            pass
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[ T].*", s):
        raise InputError(f"--injection-time {s!r} is not a real date and time "
                         "(YYYY-MM-DD HH:MM[:SS])")
    return None, parse_clock_time(s)


def at_day(d: date, t: timedelta) -> datetime:
    return datetime.combine(d, datetime.min.time()) + t


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def check_decay_interval(inj: datetime, ref: datetime, inj_what: str, ref_what: str, path,
                         limits: SUVLimits = DEFAULT_LIMITS, half_life_s: float = 6586.2) -> float:
    """Seconds from injection to the scan reference; InputError when outside 0..max."""
    dt = (ref - inj).total_seconds()
    max_s = limits.max_decay_minutes * 60.0
    if dt < 0:
        raise InputError(f"the injection ({inj_what} = {inj}) is {fmt_minutes(-dt)} after the scan "
                         f"reference ({ref_what} = {ref}): the decay interval would be negative and "
                         f"the SUV wrong; {OVERRIDE_HINT}", path)
    if dt > max_s:
        raise InputError(f"the decay interval from injection ({inj_what} = {inj}) to the scan "
                         f"reference ({ref_what} = {ref}) is {fmt_minutes(dt)}, outside the plausible "
                         f"0-{limits.max_decay_minutes:g} min (after that long the dose has decayed to "
                         f"{100 * math.exp(-math.log(2) / half_life_s * dt):.2g} %)"
                         f"; {OVERRIDE_HINT}", path)
    return dt
