"""Issue 3 acceptance, analytic part: MTV, SUVpeak, TLG, thresholds and connectivity on shapes whose
answers can be worked out by hand (PHYSICS.md section 2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.quant.lesions import (label_lesions, lesion_table, lesion_totals,
                                           segment_lesions)


def image(arr: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    return img


def ellipsoid(shape_zyx, spacing_xyz, semi_axes_xyz_mm, centre_zyx=None) -> np.ndarray:
    """Voxels whose centre lies inside the ellipsoid (semi-axes in mm)."""
    centre = np.array(shape_zyx) / 2.0 - 0.5 if centre_zyx is None else np.array(centre_zyx, float)
    sp, ax = np.array(spacing_xyz[::-1]), np.array(semi_axes_xyz_mm[::-1], float)
    g = np.ogrid[tuple(slice(0, s) for s in shape_zyx)]
    return sum((((gi - c) * s) / a) ** 2 for gi, c, s, a in zip(g, centre, sp, ax)) <= 1.0


@pytest.mark.parametrize("spacing, semi_axes", [
    ((1.0, 1.0, 1.0), (10.0, 10.0, 10.0)),      # sphere r = 10 mm, isotropic 1 mm
    ((2.0, 2.0, 3.27), (12.0, 12.0, 12.0)),     # sphere r = 12 mm, clinical slice spacing
    ((4.0, 4.0, 3.0), (20.0, 20.0, 20.0)),      # sphere r = 20 mm, coarse whole-body grid
    ((1.5, 1.5, 2.5), (15.0, 10.0, 12.0)),      # ellipsoid, anisotropic
])
def test_mtv_of_sphere_or_ellipsoid_is_within_3_percent_of_4_3_pi_abc(spacing, semi_axes):
    shape = tuple(int(math.ceil(2 * a / s)) + 6 for a, s in zip(semi_axes[::-1], spacing[::-1]))
    mask = ellipsoid(shape, spacing, semi_axes)
    suv = np.where(mask, 5.0, 1.0).astype(np.float32)
    rows = lesion_table(image(suv, spacing), image(mask.astype(np.uint8), spacing))
    expected_ml = 4.0 / 3.0 * math.pi * np.prod(semi_axes) / 1000.0
    assert len(rows) == 1
    assert rows[0]["volume_ml"] == pytest.approx(expected_ml, rel=0.03)
    # and exactly voxels x voxel volume
    assert rows[0]["volume_ml"] == pytest.approx(mask.sum() * np.prod(spacing) / 1000.0, rel=1e-12)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (4.0, 4.0, 3.27), (1.0, 1.0, 5.0)])
def test_suvpeak_of_uniform_hot_sphere_equals_its_value(spacing):
    # sphere of r = 25 mm at SUV 8 on SUV 1: a 1 cm3 sphere (r 6.2 mm) at its centre sees only 8
    shape = tuple(int(math.ceil(60 / s)) for s in spacing[::-1])
    mask = ellipsoid(shape, spacing, (25.0, 25.0, 25.0))
    suv = np.where(mask, 8.0, 1.0).astype(np.float32)
    rows = lesion_table(image(suv, spacing), image(mask.astype(np.uint8), spacing))
    assert rows[0]["suv_peak"] == pytest.approx(8.0, rel=1e-6)
    assert rows[0]["suv_max"] == pytest.approx(8.0)
    assert rows[0]["suv_mean"] == pytest.approx(8.0)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (4.0, 4.0, 3.27)])
def test_suvpeak_of_point_hot_spot_is_diluted_as_1_ml_average(spacing):
    # one hot voxel of SUV A on a cold (0) background: the 1 cm3 mean is A x voxel volume / 1000 mm3.
    # The lesion mask is that voxel only; the sphere extends past it, as PERCIST allows.
    shape = (21, 21, 21)
    suv = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    suv[10, 10, 10], mask[10, 10, 10] = 100.0, 1
    rows = lesion_table(image(suv, spacing), image(mask, spacing))
    voxel_mm3 = float(np.prod(spacing))
    assert rows[0]["suv_max"] == pytest.approx(100.0)
    assert rows[0]["suv_peak"] == pytest.approx(100.0 * voxel_mm3 / 1000.0, rel=0.01)


def test_tlg_is_suvmean_times_mtv_and_totals_add_up():
    spacing = (2.0, 2.0, 2.0)  # 8 mm3 voxels
    suv = np.ones((20, 20, 20), np.float32)
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:6, 2:6, 2:6] = 1                       # lesion A: 64 voxels = 0.512 mL
    suv[2:6, 2:6, 2:4], suv[2:6, 2:6, 4:6] = 4.0, 6.0  # half 4, half 6 -> SUVmean 5
    mask[12:14, 12:14, 12:14] = 1                 # lesion B: 8 voxels = 0.064 mL at SUV 3
    suv[12:14, 12:14, 12:14] = 3.0
    rows = lesion_table(image(suv, spacing), image(mask, spacing))
    assert [r["voxels"] for r in rows] == [64, 8]
    a, b = rows
    assert a["suv_mean"] == pytest.approx(5.0) and a["volume_ml"] == pytest.approx(0.512)
    assert a["tlg"] == pytest.approx(5.0 * 0.512)
    assert b["tlg"] == pytest.approx(3.0 * 0.064)
    # centroid of lesion A: voxel centres 2..5 -> 3.5 voxels x 2 mm = 7 mm on each axis
    assert (a["centroid_x_mm"], a["centroid_y_mm"], a["centroid_z_mm"]) == pytest.approx((7, 7, 7))
    totals = lesion_totals(rows)
    assert totals.lesion_count == 2
    assert totals.tmtv_ml == pytest.approx(0.576)
    assert totals.ttlg == pytest.approx(2.56 + 0.192)


def test_components_use_18_connectivity_edges_join_corners_do_not():
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[1, 2, 2] = True   # share an edge -> one lesion
    m[3, 3, 3] = m[4, 4, 4] = True   # share only a corner -> two lesions
    labels, n = label_lesions(m)
    assert n == 3
    assert labels[1, 1, 1] == labels[1, 2, 2] != labels[3, 3, 3] != labels[4, 4, 4]


def test_41_percent_threshold_selects_voxels_at_or_above_41_percent_of_lesion_max():
    # profile 10, 9, ..., 1 along x inside a region one voxel thick: 41 % of 10 = 4.1,
    # so exactly the voxels with SUV 10..5 (six voxels) are lesion.
    suv = np.zeros((3, 3, 12), np.float32)
    suv[1, 1, 1:11] = np.arange(10, 0, -1)
    region = np.zeros_like(suv, dtype=np.uint8)
    region[1, 1, 1:11] = 1
    lab, th = segment_lesions(image(suv), "41%", region=image(region))
    got = sitk.GetArrayFromImage(lab)
    assert th["threshold_suv_per_voi"] == [pytest.approx(4.1)]
    assert np.flatnonzero(got[1, 1]).tolist() == [1, 2, 3, 4, 5, 6]
    assert got.sum() == 6


def test_fixed_threshold_keeps_lesions_at_or_above_2_5():
    suv = np.ones((20, 20, 20), np.float32)
    suv[2:5, 2:5, 2:5] = 3.0     # found
    suv[10:13, 10:13, 10:13] = 2.4   # below 2.5: not found
    suv[15:17, 15:17, 15:17] = 2.5   # at 2.5: found
    lab, th = segment_lesions(image(suv), "2.5")
    rows = lesion_table(image(suv), lab)
    assert th["threshold_suv"] == 2.5 and th["lesion_count"] == 2
    assert sorted(r["voxels"] for r in rows) == [8, 27]


def _liver_case(liver_values: np.ndarray):
    shape = (40, 40, 40)
    suv = np.ones(shape, np.float32)
    organs = np.zeros(shape, np.uint8)
    organs[5:35, 5:35, 5:35] = 1   # liver: a 60 mm cube on 2 mm voxels, holds the 3 cm sphere
    suv[organs == 1] = liver_values[organs == 1]
    return suv, organs


def test_percist_threshold_from_uniform_liver_is_1_5_mean():
    suv, organs = _liver_case(np.full((40, 40, 40), 2.0, np.float32))
    suv[0:3, 0:3, 0:3] = 3.5    # above 1.5 x 2.0 + 2 x 0 = 3.0: a lesion
    suv[37:40, 37:40, 37:40] = 2.9   # below: not a lesion
    sp = (2.0, 2.0, 2.0)
    lab, th = segment_lesions(image(suv, sp), "percist", organs=image(organs, sp),
                              organ_names={1: "liver"})
    assert th["reference"] == "liver"
    assert th["reference_mean"] == pytest.approx(2.0) and th["reference_sd"] == pytest.approx(0.0)
    assert th["threshold_suv"] == pytest.approx(3.0)
    assert th["lesion_count"] == 1
    # the 3 cm sphere (r 15 mm) on 2 mm voxels holds about 4/3 pi 15^3 / 8 = 1767 voxels
    assert th["reference_voxels"] == pytest.approx(1767, rel=0.05)


def test_percist_threshold_from_checkerboard_liver_uses_mean_and_sd():
    # liver voxels alternate 1 and 3: mean 2, SD 1 -> threshold 1.5 x 2 + 2 x 1 = 5.0
    z, y, x = np.indices((40, 40, 40))
    checker = np.where((z + y + x) % 2 == 0, 1.0, 3.0).astype(np.float32)
    suv, organs = _liver_case(checker)
    sp = (2.0, 2.0, 2.0)
    _, th = segment_lesions(image(suv, sp), "percist", organs=image(organs, sp),
                            organ_names={1: "Liver"})
    # a voxelised sphere centred on a voxel holds a few % more voxels of the centre's parity, so
    # the mean lies within 0.05 of 2 (not exactly 2); the SD stays within 0.01 of 1
    assert th["reference_mean"] == pytest.approx(2.0, abs=0.05)
    assert th["reference_sd"] == pytest.approx(1.0, abs=0.01)
    assert th["threshold_suv"] == pytest.approx(1.5 * th["reference_mean"] + 2 * th["reference_sd"])
    assert th["threshold_suv"] == pytest.approx(5.0, abs=0.1)


def test_percist_without_liver_or_aorta_says_what_is_missing():
    suv = np.ones((10, 10, 10), np.float32)
    organs = np.ones((10, 10, 10), np.uint8)
    with pytest.raises(InputError, match="liver"):
        segment_lesions(image(suv), "percist", organs=image(organs), organ_names={1: "spleen"})


# ---- bad input -----------------------------------------------------------------------------
def test_mask_on_another_grid_is_refused_with_both_geometries():
    suv = image(np.ones((10, 10, 10), np.float32), (2.0, 2.0, 2.0))
    mask = image(np.ones((10, 10, 10), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match=r"not on the grid of the PET.*spacing"):
        lesion_table(suv, mask)


def test_nan_in_pet_is_refused_and_counted():
    arr = np.ones((10, 10, 10), np.float32)
    arr[0, 0, :3] = np.nan
    with pytest.raises(InputError, match="3 NaN"):
        lesion_table(image(arr), image(np.ones((10, 10, 10), np.uint8)))


def test_probability_map_as_lesion_mask_is_refused():
    mask = np.zeros((10, 10, 10), np.float32)
    mask[2:4, 2:4, 2:4] = 0.7
    with pytest.raises(InputError, match="non-integer values"):
        lesion_table(image(np.ones((10, 10, 10), np.float32)), image(mask))


def test_label_map_where_binary_region_expected_is_refused():
    region = np.zeros((10, 10, 10), np.uint8)
    region[1:3, 1:3, 1:3], region[5:7, 5:7, 5:7] = 1, 2
    with pytest.raises(InputError, match=r"expected a binary mask.*\[2\]"):
        segment_lesions(image(np.ones((10, 10, 10), np.float32)), "2.5", region=image(region))


def test_empty_lesion_mask_gives_empty_table():
    rows = lesion_table(image(np.ones((10, 10, 10), np.float32)),
                        image(np.zeros((10, 10, 10), np.uint8)))
    assert rows == []
    assert lesion_totals(rows).lesion_count == 0


def test_pet_not_in_suv_is_refused():
    pet = image(np.ones((10, 10, 10), np.float32))
    pet.SetMetaData("PETDiffusion.units", "Bq/mL")
    with pytest.raises(InputError, match="not SUV"):
        lesion_table(pet, image(np.ones((10, 10, 10), np.uint8)))


def test_percist_falls_back_to_blood_pool_in_aorta_when_no_liver():
    # aorta: a 16 mm wide vertical tube at SUV 1.5 (SD 0) -> threshold 2.0 x 1.5 + 2 x 0 = 3.0,
    # measured in a 1 cm x 2 cm cylinder of 2 mm voxels: 21 voxel centres lie within 5 mm of the
    # axis in a slice (1 + 4 at 2 mm + 4 at 2.8 mm + 4 at 4 mm + 8 at 4.5 mm), on 11 slices
    # within +-10 mm: 231 voxels, all inside the aorta
    shape = (40, 30, 30)
    organs = np.zeros(shape, np.uint8)
    z, y, x = np.indices(shape)
    organs[((y - 15) * 2.0) ** 2 + ((x - 15) * 2.0) ** 2 <= 8.0 ** 2] = 4
    suv = np.where(organs == 4, 1.5, 0.8).astype(np.float32)
    sp = (2.0, 2.0, 2.0)
    _, th = segment_lesions(image(suv, sp), "percist", organs=image(organs, sp),
                            organ_names={4: "aorta"})
    assert th["reference"] == "blood_pool"
    assert th["threshold_suv"] == pytest.approx(3.0)
    assert th["reference_voxels"] == 21 * 11
