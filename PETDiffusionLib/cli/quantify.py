"""`petdiffusion quantify`: lesion and organ tables (CSV) and summary.json for one PET in SUV.

With ``--lesions`` the mask's 18-connected components are the lesions; without it the lesions are
segmented by ``--threshold`` (2.5, 41% or percist) and the label map is saved as lesions.nii.gz.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import math

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import staging_dir
from PETDiffusionLib.io.checks import SUV_MAX_PLAUSIBLE, check_output_folder, check_suv_image
from PETDiffusionLib.io.images import read_image, read_label, write_image
from PETDiffusionLib.quant.lesions import SOURCE_KEY, label_array, segment_lesions
from PETDiffusionLib.quant.tables import quantify, write_result


def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pet", required=True, metavar="FILE|DICOM_DIR", help="PET image in SUV")
    p.add_argument("--lesions", metavar="FILE", help="lesion mask (binary) or lesion label map, on the PET grid")
    p.add_argument("--organs", metavar="FILE", help="organ label map on the PET grid")
    p.add_argument("--organ-names", metavar="JSON", help='label names, e.g. {"1": "liver", "2": "spleen"}')
    p.add_argument("--region", metavar="FILE", help="binary mask limiting threshold segmentation")
    p.add_argument("--threshold", default="2.5",
                   help="rule without --lesions: SUV value (2.5; 4.0 in lymphoma), NN%% of each "
                        "lesion's SUVmax (41%%), or percist (needs --organs with a liver)")
    p.add_argument("--out", required=True, help="output folder")


def read_organ_names(path: str | None) -> dict[int, str] | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError("organ names file not found", p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", p) from exc
    if isinstance(data, list):
        data = {i + 1: n for i, n in enumerate(data)}
    if not isinstance(data, dict):
        raise InputError('expected a JSON object {"label": "name"}', p)
    try:
        return {int(k): str(v) for k, v in data.items()}
    except ValueError as exc:
        raise InputError(f'keys must be integer labels ({exc})', p) from exc


def check_threshold(rule: str) -> None:
    """``--threshold``: a positive SUV (at most the SUV range), NN% with 0 < NN < 100, or percist."""
    s = str(rule).strip().lower()
    if s == "percist":
        return
    try:
        value = float(s[:-1]) if s.endswith("%") else float(s)
    except ValueError:
        raise InputError(f"bad threshold {rule!r} (use an SUV such as 2.5, a percentage of each "
                         "lesion's SUVmax such as 41%, or percist)", "--threshold") from None
    if s.endswith("%"):
        if not 0.0 < value < 100.0:
            raise InputError(f"relative threshold {rule!r} must lie between 0 and 100 %",
                             "--threshold")
    elif not (math.isfinite(value) and 0.0 < value <= SUV_MAX_PLAUSIBLE):
        raise InputError(f"SUV threshold {rule!r} must be a positive SUV (at most "
                         f"{SUV_MAX_PLAUSIBLE:g}); 2.5 is usual, 4.0 in lymphoma", "--threshold")


def load_inputs(args) -> dict:
    """Check the options and the output folder, then read the PET and masks named on the command
    line (each image remembers its file name) and check the PET is in SUV (io/checks.py: the same
    rules and messages as the tasks)."""
    if not getattr(args, "lesions", None):
        check_threshold(args.threshold)
    check_output_folder(args.out)

    def tag(img: sitk.Image, path: str) -> sitk.Image:
        img.SetMetaData(SOURCE_KEY, str(path))
        return img

    pet = tag(read_image(args.pet), args.pet)
    check_suv_image(pet, args.pet)
    out = {"pet": pet, "lesions": None, "organs": None, "region": None,
           "organ_names": read_organ_names(getattr(args, "organ_names", None))}
    for key in ("lesions", "organs", "region"):
        path = getattr(args, key, None)
        if path:
            out[key] = tag(read_label(path), path)
    if out["lesions"] is not None and not label_array(out["lesions"]).any():
        raise InputError("lesion mask is empty (no voxel > 0): nothing to quantify; check the file, "
                         "or leave out --lesions to segment by --threshold", args.lesions)
    if out["organs"] is not None and out["organ_names"] is None:
        labels = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(out["organs"])) if v]
        out["organ_names"] = {v: f"label_{v}" for v in labels}
    return out


def lesions_and_thresholds(inputs: dict, threshold: str) -> tuple[sitk.Image | None, dict, bool]:
    """The lesion image (given or segmented by rule), the thresholds used, and whether segmented."""
    if inputs["lesions"] is not None:
        return inputs["lesions"], {"rule": "lesion mask given",
                                   "mask": inputs["lesions"].GetMetaData("PETDiffusion.source")}, False
    img, th = segment_lesions(inputs["pet"], threshold, region=inputs["region"],
                              organs=inputs["organs"], organ_names=inputs["organ_names"])
    return img, th, True


def register(sub) -> None:
    p = sub.add_parser("quantify", help="lesion (SUVmax/mean/peak, MTV, TLG) and organ tables",
                       description="Write lesions.csv, organs.csv and summary.json for a PET in SUV. "
                                   "Research use only, not for diagnosis.")
    add_input_args(p)
    p.set_defaults(func=_quantify)


def _quantify(args) -> int:
    inputs = load_inputs(args)
    lesions, thresholds, segmented = lesions_and_thresholds(inputs, args.threshold)
    result = quantify(inputs["pet"], lesions, inputs["organs"], inputs["organ_names"], thresholds)
    with staging_dir(args.out) as stage:
        names = [p.name for p in write_result(stage, result).values()]
        if segmented:
            write_image(lesions, stage / "lesions.nii.gz", units="label")
            names.append("lesions.nii.gz")
    s = result.summary()
    if s["lesion_count"] is not None:
        print(f"{s['lesion_count']} lesion(s), TMTV {s['tmtv_ml']:.2f} mL, TTLG {s['ttlg']:.2f}")
    print(f"wrote {', '.join(sorted(names))} in {args.out}")
    return 0
