"""``petdiffusion evaluate denoise-segment --mode lesion-fp``: what the physiological-uptake rules
(:mod:`PETDiffusionLib.quant.physiology`) do to the lesion masks (issue 13).

For each study the task runs once (``keep_hc`` returns the mask before and after the rules) and the
autoPET volumes are scored against the truth (Gatidis et al., Sci Data 2022): false-positive volume
(predicted components touching no true lesion), false-negative volume (true lesions no predicted
component touches), and lesion Dice, without and with the suppression. Suppressed components that
overlap a true lesion are counted (the rules must not remove tumour).

- Phantom: the held-out cohort (``cohorts/heldout``), ``pet_low_<f>`` with its CT; the phantom's own
  organ labels say which organ each removed voxel lies in.
- Real: the whole-body FDG PET petwb_sts001 (no CT), a ``f`` % count version from
  :func:`PETDiffusionLib.physics.lowcount.simulate_low_count` (VALIDATION_SETTINGS, seed 0), the
  tumour from its RTSTRUCT (:data:`PETWB_TUMOUR_ROI`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.io.rtstruct import rasterise_roi, series_frame_of_reference
from PETDiffusionLib.phantom.cohort import case_info, list_cases
from PETDiffusionLib.physics.lowcount import VALIDATION_SETTINGS, simulate_low_count
from PETDiffusionLib.quant.lesions import label_lesions
from PETDiffusionLib.quant.metrics import dice, false_negative_volume_ml, false_positive_volume_ml
from PETDiffusionLib.tasks.denoise_segment.pipeline import denoise_segment_image, load_model

log = logging.getLogger(__name__)

PHANTOM_COHORT = "cohorts/heldout"
PETWB_PET = "../shared/data/petwb_sts001/PET/image"      # MANIFEST.md: the real whole-body PET
PETWB_RTSTRUCT = "../shared/data/petwb_sts001/PET/mask/1-1.dcm"
PETWB_TUMOUR_ROI = "GTV_Mass"   # the expert GTV of the sarcoma (the file's other ROI is the edema)
PETWB_SEED = 0                  # the brief's fixed seed of the low-count version


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def score_study(name: str, pet: sitk.Image, ct: sitk.Image | None, truth: np.ndarray, nets: dict,
                card: dict, truth_organs: np.ndarray | None = None,
                organ_names: dict | None = None) -> dict:
    """FP / FN volume and Dice without and with the suppression for one study on ``pet``'s grid."""
    t0 = time.monotonic()
    res = denoise_segment_image(pet, ct, nets, card, {"samples": 1, "seed": 0}, keep_hc=True)
    sp = pet.GetSpacing()
    vox_ml = float(np.prod(sp)) / 1000.0
    truth = truth > 0
    masks = {"without": _arr(res["lesions_unsuppressed"]) > 0, "with": _arr(res["lesions"]) > 0}
    row = {"study": name, "seconds": round(time.monotonic() - t0, 1),
           "truth_ml": round(float(truth.sum()) * vox_ml, 2)}
    for k, m in masks.items():
        row[k] = {"fp_ml": round(false_positive_volume_ml(m, truth, sp), 2),
                  "fn_ml": round(false_negative_volume_ml(m, truth, sp), 2),
                  "dice": dice(m, truth, empty=None), "components": label_lesions(m)[1]}
    removed = masks["without"] & ~masks["with"]
    lab, n = label_lesions(removed)
    hit = set(np.unique(lab[truth]).tolist()) - {0}
    row["dropped"] = res["_info"]["physiological_uptake_removed"]
    row["removed_components"] = n
    row["removed_components_in_true_lesions"] = len(hit)
    row["removed_ml_in_true_lesions"] = round(float((removed & truth).sum()) * vox_ml, 3)
    if truth_organs is not None:
        vals, counts = np.unique(truth_organs[removed], return_counts=True)
        row["removed_ml_by_true_organ"] = {str((organ_names or {}).get(str(int(v)), int(v))):
                                           round(float(c) * vox_ml, 2) for v, c in zip(vals, counts)}
    log.info("%s: FP %.2f -> %.2f mL, FN %.2f -> %.2f mL, %d component(s) removed, %d in true "
             "lesions", name, row["without"]["fp_ml"], row["with"]["fp_ml"], row["without"]["fn_ml"],
             row["with"]["fn_ml"], n, len(hit))
    return row


def phantom_rows(cohort: str | Path, fraction: int, nets: dict, card: dict,
                 max_cases: int = 0) -> list[dict]:
    cases = list_cases(Path(cohort))
    rows = []
    for c in cases[:max_cases] if max_cases else cases:
        info = case_info(c)
        ct = sitk.ReadImage(str(c / "ct.nii.gz"), sitk.sitkFloat32) if (c / "ct.nii.gz").is_file() \
            else None
        rows.append(score_study(c.name, sitk.ReadImage(str(c / f"pet_low_{fraction}.nii.gz")), ct,
                                _arr(sitk.ReadImage(str(c / "lesions.nii.gz"))), nets, card,
                                _arr(sitk.ReadImage(str(c / "organs.nii.gz"))),
                                info.get("organ_labels", {})))
    return rows


def petwb_row(fraction: int, nets: dict, card: dict, pet_dir: str | Path = PETWB_PET,
              rtstruct: str | Path = PETWB_RTSTRUCT) -> dict:
    full, _ = read_pet_suv(pet_dir)
    low = simulate_low_count(_arr(full), full.GetSpacing(), fraction / 100.0, VALIDATION_SETTINGS,
                             seed=PETWB_SEED)
    low_img = sitk.GetImageFromArray(low)
    low_img.CopyInformation(full)
    for key in full.GetMetaDataKeys():
        low_img.SetMetaData(key, full.GetMetaData(key))
    tumour = rasterise_roi(rtstruct, PETWB_TUMOUR_ROI, full, series_frame_of_reference(pet_dir))
    return score_study(f"petwb_sts001 ({fraction} %)", low_img, None, _arr(tumour), nets, card)


def phantom_totals(rows: list[dict]) -> dict:
    """FP / FN volumes summed over the cases; Dice averaged over the cases that hold a true lesion
    (in a case without one, Dice is 0 for any prediction and undefined for none: not comparable)."""
    totals = {k: {m: round(float(sum(r[k][m] for r in rows)), 2) for m in ("fp_ml", "fn_ml")}
              for k in ("without", "with")}
    for k in ("without", "with"):
        ds = [r[k]["dice"] or 0.0 for r in rows if r["truth_ml"] > 0]
        totals[k]["mean_dice"] = round(float(np.mean(ds)), 4) if ds else None
    totals["cases_with_lesions"] = sum(r["truth_ml"] > 0 for r in rows)
    totals["removed_components"] = sum(r["removed_components"] for r in rows)
    totals["removed_components_in_true_lesions"] = sum(r["removed_components_in_true_lesions"]
                                                       for r in rows)
    return totals


def lesion_fp_study(model_path: str | Path | None = None, cohort: str | Path = PHANTOM_COHORT,
                    fraction: int = 10, max_cases: int = 0, real: bool = True) -> dict:
    """The phantom cohort's and the real whole-body study's rows and the phantom totals."""
    nets, card = load_model(model_path, "cpu")
    rows = phantom_rows(cohort, fraction, nets, card, max_cases)
    totals = phantom_totals(rows)
    out = {"model_id": card["id"], "model_version": card["version"], "fraction": fraction,
           "cohort": str(cohort), "phantom": rows, "phantom_totals": totals,
           "real": petwb_row(fraction, nets, card) if real else None}
    return out


def format_table(res: dict) -> str:
    cols = ("FP mL", "FP mL", "FN mL", "FN mL", "Dice", "Dice", "removed", "in GTV")
    head = f"{'study':26s}" + "".join(f"{c:>9s}" for c in cols)
    sub = f"{'':26s}" + "".join(f"{w:>9s}" for w in ("without", "with") * 3) \
        + f"{'comps':>9s}{'comps':>9s}"

    def dice_s(v):
        return f"{v:9.3f}" if v is not None else f"{'-':>9s}"

    def line(r, label=None):
        return (f"{label or r['study']:26s}{r['without']['fp_ml']:9.2f}{r['with']['fp_ml']:9.2f}"
                f"{r['without']['fn_ml']:9.2f}{r['with']['fn_ml']:9.2f}"
                f"{dice_s(r['without'].get('dice', r['without'].get('mean_dice')))}"
                f"{dice_s(r['with'].get('dice', r['with'].get('mean_dice')))}"
                f"{r['removed_components']:9d}{r['removed_components_in_true_lesions']:9d}")
    lines = [f"lesion-fp: autoPET FP / FN volumes and lesion Dice, without / with the physiological-"
             f"uptake rules; {res['model_id']} {res['model_version']}, {res['fraction']} % counts",
             head, sub]
    lines += [line(r) for r in res["phantom"]]
    t = res["phantom_totals"]
    lines.append(line(t, f"phantom sum ({t['cases_with_lesions']} w/ lesions)"))
    lines.append("  (Dice of the sum row: mean over the cases that hold a true lesion; '-': no lesion "
                 "predicted and none true)")
    if res.get("real"):
        lines.append(line(res["real"]))
        lines.append("real study, removed: " + "; ".join(
            f"{d['reason']} {d['volume_ml']:.1f} mL SUVmax {d['suvmax']:.1f}"
            for d in res["real"]["dropped"]))
    by_organ: dict = {}
    for r in res["phantom"]:
        for o, v in r.get("removed_ml_by_true_organ", {}).items():
            by_organ[o] = round(by_organ.get(o, 0.0) + v, 2)
    lines.append("phantom, removed mL by the phantom's true organ: "
                 + json.dumps(dict(sorted(by_organ.items(), key=lambda kv: -kv[1]))))
    return "\n".join(lines)
