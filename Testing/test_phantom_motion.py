"""Patient motion between the two scans of a dual-time-point study (issue 16, PHYSICS.md §4.1):
the rigid transform moves anatomy where it says, and the retrieval ground truth follows it."""
from __future__ import annotations

import json

import numpy as np

from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
from PETDiffusionLib.phantom.motion import (MAX_ROTATION_DEG, MAX_SHIFT_MM, RigidMotion, apply_motion,
                                            draw_motion, first_scan_point, matching_first_slices)

SPACING = (4.0, 4.0, 5.0)


def _point_volume(shape=(40, 64, 64), at=(20, 32, 40)):
    v = np.zeros(shape, np.float32)
    v[at] = 1.0
    return v


def test_a_pure_shift_moves_a_point_by_the_shift_in_voxels():
    motion = RigidMotion((8.0, -12.0, 10.0), (0.0, 0.0, 0.0))
    moved = apply_motion(_point_volume(), motion, SPACING, order=1)
    z, y, x = np.unravel_index(int(moved.argmax()), moved.shape)
    assert (z, y, x) == (20 + 2, 32 - 3, 40 + 2)


def test_a_rotation_about_the_long_axis_turns_an_off_centre_point_by_that_angle():
    motion = RigidMotion((0.0, 0.0, 0.0), (0.0, 0.0, 90.0))
    vol = _point_volume(at=(20, 31, 47))  # centre index 31.5: the point sits 15.5 px right of it
    moved = apply_motion(vol, motion, SPACING, order=1)
    z, y, x = np.unravel_index(int(moved.argmax()), moved.shape)
    # x -> y for +90 degrees about z (R = Rz): (15.5, -0.5) -> (0.5, 15.5)
    assert z == 20 and abs(x - (31.5 + 0.5)) <= 0.5 and abs(y - (31.5 + 15.5)) <= 0.5


def test_first_scan_point_inverts_the_motion():
    motion = RigidMotion((11.0, -7.0, 23.0), (1.0, -1.5, 3.0))
    p = np.array([[30.0, -40.0, 100.0]])
    from PETDiffusionLib.phantom.motion import rotation_matrix_xyz
    moved = p @ rotation_matrix_xyz(motion.rotation_deg_xyz).T + np.array(motion.shift_mm_xyz)
    np.testing.assert_allclose(first_scan_point(motion, moved), p, atol=1e-9)


def test_the_true_matching_slice_of_a_couch_shift_is_the_slice_shifted_back():
    motion = RigidMotion((0.0, 0.0, 20.0), (0.0, 0.0, 0.0))  # patient 20 mm (4 slices) headwards
    truth = matching_first_slices(motion, 40, SPACING)
    assert list(truth[10:13]) == [6, 7, 8]


def test_drawn_motions_stay_within_centimetres_and_a_few_degrees():
    rng = np.random.default_rng(0)
    ms = [draw_motion(rng) for _ in range(200)]
    shifts = np.array([m.shift_mm_xyz for m in ms])
    rots = np.array([m.rotation_deg_xyz for m in ms])
    assert np.all(np.abs(shifts) <= MAX_SHIFT_MM) and np.all(np.abs(rots) <= MAX_ROTATION_DEG)
    assert np.abs(shifts[:, 2]).max() > 20.0 and np.abs(rots[:, 2]).max() > 2.5


def test_a_simulated_case_records_its_motion_and_the_delayed_nac_is_calibrated_like_the_ac(tmp_path):
    import SimpleITK as sitk
    (case_dir,) = generate_cohort(tmp_path, 1, seed=12, cfg=PhantomConfig(size=32, slices=40,
                                                                        images=("delayed",)))
    info = json.loads((case_dir / "case.json").read_text())
    motion = info["simulation"]["delayed"]["motion"]
    assert set(motion) == {"shift_mm_xyz", "rotation_deg_xyz"}
    ac = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "pet_delayed_ac.nii.gz")))
    nac = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "pet_delayed_nac.nii.gz")))
    body = ac > 0.3
    ratio = float(nac[body].mean() / ac[body].mean())
    print(f"delayed NAC / AC body mean {ratio:.3f}")
    assert 0.05 < ratio < 0.4  # never rescaled to the AC or true mean (which would give 1)
