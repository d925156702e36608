"""`petdiffusion suv DIR --out pet_suv.nii.gz`: convert a PET DICOM series to SUV (PHYSICS.md §1)."""
from __future__ import annotations

import argparse
import dataclasses

from PETDiffusionLib.io.checks import check_output_file
from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.io.images import IMAGE_SUFFIXES, get_warnings, write_image
from PETDiffusionLib.physics.suv import SUVOverrides
from PETDiffusionLib.physics.suv_rules import DEFAULT_LIMITS, check_override


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suv", help="convert a PET DICOM series to SUV and write it as an image file",
                       description="Convert a PET DICOM series to SUV. The header's weight, dose and "
                                   "times are checked against plausible ranges (docs/PHYSICS.md §1 "
                                   "'Plausibility rules'); the options below override them, each "
                                   "validated.")
    p.add_argument("folder", help="folder holding one PET DICOM series")
    p.add_argument("--out", required=True, help="output image (.nii.gz, .nrrd, .mha)")
    p.add_argument("--type", dest="suv_type", choices=["bw", "lbm", "bsa", "ibw"], default="bw",
                   help="SUV normalisation: body weight (default), lean body mass (SUL, "
                        "Janmahasatian), body surface area (Du Bois), ideal body weight")
    p.add_argument("--weight-kg", type=float, help="patient weight in kg (overrides the header; "
                                                   f"{DEFAULT_LIMITS.weight_kg[0]:g}-"
                                                   f"{DEFAULT_LIMITS.weight_kg[1]:g})")
    p.add_argument("--dose-mbq", type=float, help="injected activity in MBq (overrides the header; "
                                                  f"{DEFAULT_LIMITS.dose_mbq[0]:g}-"
                                                  f"{DEFAULT_LIMITS.dose_mbq[1]:g})")
    p.add_argument("--height-m", type=float, help="patient height in m, for --type lbm/bsa/ibw "
                                                  "(overrides the header; "
                                                  f"{DEFAULT_LIMITS.height_m[0]:g}-"
                                                  f"{DEFAULT_LIMITS.height_m[1]:g})")
    p.add_argument("--injection-time", help="injection time, HH:MM[:SS] or 'YYYY-MM-DD HH:MM[:SS]' "
                                            "(overrides the header)")
    p.add_argument("--force-decay-minutes", type=float, metavar="MIN",
                   help="use this decay interval from injection to the scan reference instead of the "
                        "header times (a conscious override of the 0-6 h rule; 0-1440)")
    p.add_argument("--max-decay-hours", type=float, default=DEFAULT_LIMITS.max_decay_minutes / 60,
                   help="longest plausible interval from injection to scan (default %(default)g h)")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--allow-gaps", action="store_true",
                   help="accept missing slices (filled with 0) instead of failing")
    p.set_defaults(func=_suv)


def _suv(args) -> int:
    check_output_file(args.out, IMAGE_SUFFIXES)
    hours = check_override("--max-decay-hours", args.max_decay_hours, (0.1, 24.0), "h")
    limits = dataclasses.replace(DEFAULT_LIMITS, max_decay_minutes=hours * 60.0)
    overrides = SUVOverrides(weight_kg=args.weight_kg, dose_mbq=args.dose_mbq,
                             injection_time=args.injection_time, height_m=args.height_m,
                             force_decay_minutes=args.force_decay_minutes)
    img, factor = read_pet_suv(args.folder, args.suv_type, overrides, series_uid=args.series_uid,
                               allow_gaps=args.allow_gaps, limits=limits)
    write_image(img, args.out, units=factor.units)
    if factor.slice_factors is not None:
        print(f"{factor.units} factor: {min(factor.slice_factors):.8g} .. "
              f"{max(factor.slice_factors):.8g} (per slice)")
    else:
        print(f"{factor.units} factor: {factor.factor:.8g}")
    print(f"rule: {factor.rule}")
    for w in [*factor.warnings, *get_warnings(img)]:
        print(f"warning: {w}")
    print(f"wrote {args.out}")
    return 0
