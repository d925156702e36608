"""`petdiffusion suv DIR --out pet_suv.nii.gz`: convert a PET DICOM series to SUV (PHYSICS.md §1)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suv", help="convert a PET DICOM series to SUV and write it as an image file")
    p.add_argument("folder", help="folder holding one PET DICOM series")
    p.add_argument("--out", required=True, help="output image (.nii.gz, .nrrd, .mha)")
    p.add_argument("--type", dest="suv_type", choices=["bw", "lbm", "bsa", "ibw"], default="bw",
                   help="SUV normalisation: body weight (default), lean body mass (SUL, "
                        "Janmahasatian), body surface area (Du Bois), ideal body weight")
    p.add_argument("--weight-kg", type=float, help="patient weight in kg (overrides the header)")
    p.add_argument("--dose-mbq", type=float, help="injected activity in MBq (overrides the header)")
    p.add_argument("--injection-time", help="injection time, HH:MM[:SS] or 'YYYY-MM-DD HH:MM[:SS]' "
                                            "(overrides the header)")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--allow-gaps", action="store_true",
                   help="accept missing slices (filled with 0) instead of failing")
    p.set_defaults(func=_suv)


def _suv(args) -> int:
    from PETDiffusionLib.errors import InputError
    from PETDiffusionLib.io.dicom import read_pet_suv
    from PETDiffusionLib.io.images import IMAGE_SUFFIXES, write_image
    from PETDiffusionLib.physics.suv import SUVOverrides
    if not any(args.out.lower().endswith(s) for s in IMAGE_SUFFIXES):
        raise InputError(f"output must end in one of {', '.join(IMAGE_SUFFIXES)}", args.out)
    overrides = SUVOverrides(weight_kg=args.weight_kg, dose_mbq=args.dose_mbq,
                             injection_time=args.injection_time)
    img, factor = read_pet_suv(args.folder, args.suv_type, overrides, series_uid=args.series_uid,
                               allow_gaps=args.allow_gaps)
    write_image(img, args.out, units=factor.units)
    if factor.slice_factors is not None:
        print(f"{factor.units} factor: {min(factor.slice_factors):.8g} .. "
              f"{max(factor.slice_factors):.8g} (per slice)")
    else:
        print(f"{factor.units} factor: {factor.factor:.8g}")
    print(f"rule: {factor.rule}")
    for w in factor.warnings:
        print(f"warning: {w}")
    print(f"wrote {args.out}")
    return 0
