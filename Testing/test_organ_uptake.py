"""Issue 14: the literature FDG organ table, its TotalSegmentator grouping on the real label map, the
organ check, and the ct-to-pet out-of-distribution flag on phantom, real and modified real CTs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.io.images import read_image, read_label
from PETDiffusionLib.physics.organ_uptake import (NOT_PHYSIOLOGICAL_TARGETS, ORGAN_SUV_RANGES, PHANTOM_GROUPS,
                                                  TOTALSEG_GROUPS, check_organ_uptake, groups_for_names,
                                                  outside_targets)
from PETDiffusionLib.tasks.ct_to_pet.ood import ood_check
from PETDiffusionLib.tasks.runner import run_task

from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort

HELDOUT_SEED = 90000   # the held-out cohort's seed (README: --n 12 --seed 90000); case 0 made here


@pytest.fixture(scope="module")
def heldout_ct(tmp_path_factory) -> Path:
    """cohorts/heldout case 0 (git-ignored), generated the same way in a temporary folder."""
    out = tmp_path_factory.mktemp("heldout")
    generate_cohort(out, 1, HELDOUT_SEED, PhantomConfig())
    return out / "case_0000" / "ct.nii.gz"


@pytest.fixture(scope="module")
def totalseg(shared_data):
    ref = shared_data / "ct_totalseg_example" / "tests" / "reference_files"
    ct = read_image(ref / "example_ct_sm.nii.gz")
    seg = read_label(ref / "example_seg.nii.gz")
    names = {int(k): v for k, v in json.loads(
        (shared_data / "ct_totalseg_example" / "totalsegmentator_total_class_map.json").read_text()).items()}
    return ct, seg, names


def _with_array(img: sitk.Image, arr: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(arr.astype(np.float32))
    out.CopyInformation(img)
    return out


# --------------------------------------------------------------------------------------------
# the table

def test_every_organ_range_is_ordered_positive_and_names_its_source():
    wanted = {"liver", "spleen", "blood_pool", "muscle", "fat", "lung", "bone_marrow", "brain",
              "myocardium", "kidneys", "bladder"}
    assert set(ORGAN_SUV_RANGES) == wanted
    for organ, (lo, hi, source) in ORGAN_SUV_RANGES.items():
        assert 0 < lo < hi, organ
        assert len(source) > 40, organ
    assert set(TOTALSEG_GROUPS) <= set(ORGAN_SUV_RANGES) and set(PHANTOM_GROUPS) <= set(ORGAN_SUV_RANGES)
    assert NOT_PHYSIOLOGICAL_TARGETS == {"myocardium", "kidneys", "bladder"}


def test_liver_and_blood_pool_ranges_hold_the_published_reference_values():
    lo, hi, source = ORGAN_SUV_RANGES["liver"]
    assert (lo, hi) == (1.3, 3.0)  # EANM v2.0 liver QC range (Boellaard 2015)
    assert "Boellaard" in source and "Boktor" in source
    for published in (2.17, 2.29, 2.26, 2.34):  # Boktor 2013 visits 1 and 2; TotalGen Table 1 M / F
        assert lo < published < hi
    blo, bhi, _ = ORGAN_SUV_RANGES["blood_pool"]
    assert blo < 1.55 < bhi and blo < 1.58 < bhi  # Boktor 2013 aortic blood pool, visits 1 and 2
    assert bhi < hi  # the blood pool reads below the liver (PERCIST, Deauville)


# --------------------------------------------------------------------------------------------
# the TotalSegmentator grouping on the real label map

def test_totalseg_groups_name_real_classes_and_find_the_acceptance_organs(totalseg):
    ct, seg, names = totalseg
    known = set(names.values()) | {"subcutaneous_fat"}  # fat comes from the tissue_types task
    for organ, classes in TOTALSEG_GROUPS.items():
        assert set(classes) <= known, organ
    lab = sitk.GetArrayFromImage(seg)
    rows = {r["organ"]: r for r in check_organ_uptake(np.ones(lab.shape, np.float32), lab, names)}
    # voxel counts of the real map (example_seg.nii.gz; muscle = iliopsoas + autochthon, both sides)
    assert rows["liver"]["voxels"] == 38634
    assert rows["spleen"]["voxels"] == 9452
    assert rows["muscle"]["voxels"] == 7050 + 6635 + 410 + 360
    assert rows["blood_pool"]["voxels"] == 997  # no spacing given: the whole aorta
    assert groups_for_names(names) is TOTALSEG_GROUPS
    spacing_zyx = tuple(reversed(ct.GetSpacing()))
    core = {r["organ"]: r for r in check_organ_uptake(np.ones(lab.shape, np.float32), lab, names,
                                                      spacing_zyx=spacing_zyx)}
    assert 0 < core["blood_pool"]["voxels"] < 997  # the aorta's core, away from its wall


# --------------------------------------------------------------------------------------------
# the check on constructed arrays

def test_check_organ_uptake_judges_each_organ_and_spares_excretion():
    lab = np.zeros((10, 10, 10), np.int32)
    suv = np.zeros(lab.shape, np.float32)
    lab[0:3], suv[0:3] = 1, 2.0          # liver 2.0: inside 1.3-3.0
    lab[3:5], suv[3:5] = 2, 4.0          # spleen 4.0: outside 0.95-2.25
    lab[5:7], suv[5:7] = 3, 10.0         # kidney 10: outside, but excretion (not a target)
    lab[7, 0, :2] = 4                    # aorta with 2 voxels: too few to measure
    names = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "aorta", 5: "brain"}  # no brain voxels
    rows = {r["organ"]: r for r in check_organ_uptake(suv, lab, names, TOTALSEG_GROUPS)}
    assert set(rows) == {"liver", "spleen", "kidneys"}
    assert rows["liver"]["suv_mean"] == pytest.approx(2.0) and rows["liver"]["inside"]
    assert rows["liver"]["voxels"] == 300
    assert not rows["spleen"]["inside"] and rows["spleen"]["physiological_target"]
    assert not rows["kidneys"]["inside"] and not rows["kidneys"]["physiological_target"]
    assert outside_targets(list(rows.values())) == ["spleen SUVmean 4.00 outside the FDG range 0.95-2.25"]
    with pytest.raises(ValueError, match="differ in shape"):
        check_organ_uptake(suv[:5], lab, names)


def test_blood_pool_is_measured_in_the_vessel_core_not_its_wall():
    lab = np.zeros((12, 12, 12), np.int32)
    suv = np.full(lab.shape, 5.0, np.float32)   # the wall (and what spills into it) reads 5
    lab[1:11, 1:11, 1:11] = 1
    suv[2:10, 2:10, 2:10] = 1.5                 # the lumen reads 1.5
    rows = check_organ_uptake(suv, lab, {1: "aorta"}, TOTALSEG_GROUPS, spacing_zyx=(2.0, 2.0, 2.0))
    # only voxels deeper than 3 mm count: at 2 mm voxels the outer layer (2 mm deep) goes, and the
    # 1.5 SUV lumen is left
    assert rows[0]["voxels"] == 8 ** 3 and rows[0]["suv_mean"] == pytest.approx(1.5)
    whole = check_organ_uptake(suv, lab, {1: "aorta"}, TOTALSEG_GROUPS)  # no spacing: the whole label
    assert whole[0]["voxels"] == 10 ** 3 and whole[0]["suv_mean"] > 2.5


# --------------------------------------------------------------------------------------------
# the out-of-distribution flag

def test_a_held_out_phantom_ct_is_in_distribution(heldout_ct):
    verdict = ood_check(read_image(heldout_ct))
    assert verdict.reasons == [] and not verdict.out_of_distribution
    assert verdict.measured["axial_fov_mm"] == 800.0 and verdict.measured["kvp"] is None
    assert verdict.measured["hu_js_distance"] < verdict.thresholds["hu_js_max"]


def test_a_phantom_ct_cropped_to_100_mm_is_flagged_for_its_field_of_view(heldout_ct):
    ct = read_image(heldout_ct)
    verdict = ood_check(ct[:, :, 60:80])  # 20 slices of 5 mm
    assert verdict.measured["axial_fov_mm"] == 100.0
    assert any(r.startswith("axial field of view 100 mm") for r in verdict.reasons)
    assert not any("in-plane" in r for r in verdict.reasons)


def test_a_phantom_ct_at_80_kvp_is_flagged_and_at_120_is_not(heldout_ct):
    ct = read_image(heldout_ct)
    assert any(r.startswith("tube voltage 80 kVp") for r in ood_check(ct, kvp=80).reasons)
    assert ood_check(ct, kvp=120).reasons == []


def test_the_real_totalsegmentator_ct_is_flagged_for_fov_and_histogram_not_contrast(totalseg):
    ct, _, _ = totalseg
    verdict = ood_check(ct)
    kinds = [r.split(" ")[0] + " " + r.split(" ")[1] for r in verdict.reasons]
    assert kinds == ["axial field", "in-plane field", "HU histogram"]
    assert verdict.measured["axial_fov_mm"] == pytest.approx(90.0)   # 30 slices of 3 mm
    assert verdict.measured["inplane_fov_mm"] == pytest.approx(303.0)
    assert verdict.measured["contrast_ml"] == 0.0  # unenhanced: aorta median 43 HU


def test_the_real_ct_with_contrast_filled_vessels_and_kidneys_is_flagged_for_contrast(totalseg):
    ct, seg, names = totalseg
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    lab = sitk.GetArrayFromImage(seg)
    ids = {v: k for k, v in names.items()}
    rng = np.random.default_rng(0)
    vessels = np.isin(lab, [ids["aorta"], ids["inferior_vena_cava"], ids["portal_vein_and_splenic_vein"]])
    kidneys = np.isin(lab, [ids["kidney_left"], ids["kidney_right"]])
    hu[vessels] = 250.0 + rng.normal(0, 15, vessels.sum())  # portal-venous blood, CT noise 15 HU
    hu[kidneys] = 180.0 + rng.normal(0, 15, kidneys.sum())  # nephrographic kidneys
    verdict = ood_check(_with_array(ct, hu))
    assert verdict.measured["contrast_ml"] > 100.0
    assert any(r.startswith("contrast-enhanced CT suspected") for r in verdict.reasons)


def test_the_run_manifest_carries_the_ood_verdict_and_the_organ_check(tmp_path, heldout_ct):
    ct = read_image(heldout_ct)[:, :, 60:80]
    organs = read_label(heldout_ct.parent / "organs.nii.gz")[:, :, 60:80]
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    sitk.WriteImage(ct, str(case_dir / "ct.nii.gz"))
    sitk.WriteImage(organs, str(case_dir / "organs.nii.gz"))
    (case_dir / "case.json").write_text((heldout_ct.parent / "case.json").read_text())  # the label names
    manifest = run_task("ct-to-pet", {"ct": str(case_dir / "ct.nii.gz"), "organs": str(case_dir / "organs.nii.gz")},
                        {"steps": 2, "seed": 0}, tmp_path / "out")
    man = json.loads(manifest.read_text())
    assert man["ood"]["out_of_distribution"] is True
    assert any(w.startswith("out of distribution: axial field of view 100 mm") for w in man["warnings"])
    checked = {r["organ"] for r in man["organ_uptake_check"]}
    assert {"liver", "muscle", "fat"} <= checked
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "axial field of view 100 mm" in report["extra"]["OUT OF DISTRIBUTION"]
