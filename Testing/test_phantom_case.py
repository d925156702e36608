"""Simulated cases (issue 4): the file layout the trainers read, determinism by seed, and the
quantitative behaviour of the derived PET images on a whole phantom."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from PETDiffusionLib.io.images import get_units, is_synthetic, read_image, read_label
from PETDiffusionLib.phantom import ORGAN_LABELS
from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort, simulate_case

EXPECTED_FILES = ["ct.nii.gz", "suv_true.nii.gz", "pet_ac.nii.gz", "pet_low_50.nii.gz", "pet_low_25.nii.gz",
                  "pet_low_10.nii.gz", "pet_low_5.nii.gz", "pet_nac.nii.gz", "pet_delayed_ac.nii.gz",
                  "pet_delayed_nac.nii.gz", "mr_t1.nii.gz", "organs.nii.gz", "lesions.nii.gz", "case.json"]
TINY = PhantomConfig(size=32, slices=40)


def test_organ_class_map_names_the_organs_trainers_need():
    names = set(ORGAN_LABELS.values())
    for required in ("liver", "lung_left", "lung_right", "kidney_left", "kidney_right", "spleen", "aorta",
                     "muscle", "heart_myocardium", "heart_blood_pool", "bladder", "stomach", "brain", "fat",
                     "body"):
        assert required in names
    assert any(("bone" in n) or ("vertebrae" in n) or ("pelvis" in n) or ("rib" in n) for n in names)
    assert len(set(ORGAN_LABELS)) == len(ORGAN_LABELS)


def test_cohort_writes_every_file_on_one_grid_with_units_and_a_complete_marker(tmp_path):
    (case_dir,) = generate_cohort(tmp_path / "cohort", 1, seed=11, cfg=TINY)
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(EXPECTED_FILES)
    assert (tmp_path / "cohort" / "COMPLETE").is_file()
    assert not [p for p in (tmp_path / "cohort").iterdir() if p.name.startswith(".")]
    info = json.loads((case_dir / "case.json").read_text())
    assert info["organ_labels"] == {str(k): v for k, v in ORGAN_LABELS.items()}
    assert info["seed"] == 11 and info["count_levels_percent"] == [100, 50, 25, 10, 5]
    assert {"sex", "age", "height_cm", "weight_kg"} <= set(info["demographics"])
    ct = read_image(case_dir / "ct.nii.gz")
    assert get_units(ct) == "HU" and is_synthetic(ct)
    for name in EXPECTED_FILES[1:11]:
        img = read_image(case_dir / name)
        assert img.GetSize() == ct.GetSize() and img.GetSpacing() == ct.GetSpacing()
        assert img.GetOrigin() == ct.GetOrigin()
        assert is_synthetic(img)
        if name.startswith(("pet", "suv")):
            assert get_units(img) == "SUVbw"
    organs = read_label(case_dir / "organs.nii.gz")
    lesions = np.unique(np.asarray(read_label(case_dir / "lesions.nii.gz")))
    assert set(lesions[lesions > 0].tolist()) == set(range(1, len(info["lesions"]) + 1))
    assert organs.GetSize() == ct.GetSize()


def test_same_seed_gives_the_same_case_and_another_seed_a_different_one():
    a = simulate_case(5, 0, TINY)
    b = simulate_case(5, 0, TINY)
    c = simulate_case(6, 0, TINY)
    for k in a.images:
        np.testing.assert_array_equal(a.images[k], b.images[k])
    np.testing.assert_array_equal(a.anatomy.organs, b.anatomy.organs)
    assert a.anatomy.demographics == b.anatomy.demographics
    assert not np.array_equal(a.images["suv_true"], c.images["suv_true"])


@pytest.fixture(scope="module")
def case64():
    return simulate_case(21, 0, PhantomConfig(size=64, slices=80, images=("ac", "low", "nac")))


def _liver(case):
    org, les = case.anatomy.organs, case.anatomy.lesions
    return binary_erosion((org == 6) & (les == 0), iterations=1)


def test_liver_suvmean_of_standard_ac_is_within_10_percent_of_truth(case64):
    liver = _liver(case64)
    true = case64.images["suv_true"][liver].mean()
    ac = case64.images["pet_ac"][liver].mean()
    print(f"liver SUVmean: true {true:.2f}, standard AC {ac:.2f}")
    assert abs(ac - true) / true < 0.10


def test_liver_cv_rises_as_count_fraction_falls(case64):
    liver = _liver(case64)
    cv = {100: case64.images["pet_ac"][liver].std() / case64.images["pet_ac"][liver].mean()}
    for pct in (50, 25, 10, 5):
        v = case64.images[f"pet_low_{pct}"][liver]
        cv[pct] = v.std() / v.mean()
    print("liver CV by count %:", {k: round(float(v), 3) for k, v in cv.items()})
    order = [cv[p] for p in (100, 50, 25, 10, 5)]
    assert all(a < b for a, b in zip(order, order[1:]))
    # noise adds in quadrature to the true texture, so the ratio is at most 1/sqrt(fraction)
    assert 0.5 * np.sqrt(20) < cv[5] / cv[100] < 1.1 * np.sqrt(20)


def test_nac_body_centre_is_depressed_relative_to_the_edge(case64):
    nac, org = case64.images["pet_nac"], case64.anatomy.organs
    body = org > 0
    edge = body & ~binary_erosion(body, iterations=2, axes=(1, 2))
    centre = binary_erosion(body, iterations=6, axes=(1, 2)) & np.isin(org, [3, 22])  # muscle, bowel
    ac = case64.images["pet_ac"]
    ratio_nac = nac[centre].mean() / nac[edge].mean()
    ratio_ac = ac[centre].mean() / ac[edge].mean()
    print(f"centre/edge: NAC {ratio_nac:.2f}, AC {ratio_ac:.2f}")
    assert ratio_nac < 0.7 * ratio_ac


def test_cli_writes_only_the_requested_images_and_fractions(tmp_path):
    from PETDiffusionLib.cli.main import main
    out = tmp_path / "c"
    rc = main(["phantom", "--out", str(out), "--n", "1", "--seed", "3", "--size", "32", "--slices", "40",
               "--images", "ac,low", "--fractions", "25", "--progress", "none"])
    assert rc == 0
    names = sorted(p.name for p in (out / "case_0000").iterdir())
    assert names == sorted(["ct.nii.gz", "suv_true.nii.gz", "pet_ac.nii.gz", "pet_low_25.nii.gz",
                            "organs.nii.gz", "lesions.nii.gz", "case.json"])
    assert main(["phantom", "--out", str(out), "--images", "ac,pet"]) == 2  # unknown image group


def test_demo_phantom_describes_the_case_it_wrote(tmp_path):
    from PETDiffusionLib.phantom.demo import demo_phantom
    lines = demo_phantom(tmp_path, size=32, slices=40)
    assert lines[0].startswith("phantom: ") and "synthetic" in lines[0]
    assert (tmp_path / "phantom" / "case_0000" / "pet_ac.nii.gz").is_file()


def test_delayed_time_point_raises_lesions_and_lowers_liver_and_blood_pool():
    """PHYSICS.md §5: 60 -> 150 min, lesions +15 +- 13 %, liver and blood pool -5 to -20 %."""
    from PETDiffusionLib.phantom.anatomy import LABEL_ID, Grid, build_anatomy, sample_demographics
    from PETDiffusionLib.phantom.case import case_rng, delayed_truth
    from PETDiffusionLib.phantom.tissues import draw_uptake, suv_map
    ratios, liver, blood = [], [], []
    for i in range(4):
        rng = case_rng(99, i)
        anat = build_anatomy(sample_demographics(rng), Grid(48, 60), rng, n_lesions=10)
        suv = suv_map(anat, draw_uptake(anat, rng), rng)
        later, changes = delayed_truth(anat, suv, rng)
        les = anat.lesions > 0
        ratios.append(later[les].sum() / suv[les].sum())
        m = (anat.organs == LABEL_ID["liver"]) & ~les
        liver.append(later[m].mean() / suv[m].mean())
        m = anat.organs == LABEL_ID["heart_blood_pool"]
        blood.append(later[m].mean() / suv[m].mean())
    print("lesion, liver, blood-pool ratios:", np.round(ratios, 3), np.round(liver, 3), np.round(blood, 3))
    assert 1.0 < np.mean(ratios) < 1.35
    assert all(0.79 <= r <= 0.96 for r in liver + blood)


def test_delayed_scan_records_a_small_patient_shift(tmp_path):
    (case_dir,) = generate_cohort(tmp_path, 1, seed=12, cfg=PhantomConfig(size=32, slices=40,
                                                                        images=("delayed",)))
    info = json.loads((case_dir / "case.json").read_text())
    shift = info["simulation"]["delayed"]["shift_mm_xyz"]
    assert len(shift) == 3 and all(abs(s) <= 25 for s in shift) and any(abs(s) > 0 for s in shift)  # motion.MAX_SHIFT_MM
    assert (case_dir / "pet_delayed_ac.nii.gz").is_file() and (case_dir / "pet_delayed_nac.nii.gz").is_file()
