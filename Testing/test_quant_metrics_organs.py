"""Organ statistics and evaluation metrics on arrays whose answers are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.quant import metrics
from PETDiffusionLib.quant.organs import organ_table


def image(arr, spacing=(2.0, 2.0, 2.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


def test_organ_table_mean_sd_median_max_and_volume():
    suv = np.ones((6, 6, 6), np.float32)
    organs = np.zeros((6, 6, 6), np.uint8)
    organs[0:2, 0:2, 0:2] = 1                      # liver: 8 voxels, four at 1 and four at 3
    suv[0:2, 0:2, 0:1], suv[0:2, 0:2, 1:2] = 1.0, 3.0
    organs[4:6, 4:6, 4:5] = 2                      # spleen: 4 voxels at 2.5
    suv[4:6, 4:6, 4:5] = 2.5
    rows = organ_table(image(suv), image(organs), {1: "liver", 2: "spleen", 3: "kidney"})
    liver, spleen, kidney = rows
    assert liver["organ"] == "liver" and liver["voxels"] == 8
    assert liver["volume_ml"] == pytest.approx(8 * 8 / 1000)
    assert liver["suv_mean"] == pytest.approx(2.0) and liver["suv_median"] == pytest.approx(2.0)
    assert liver["suv_sd"] == pytest.approx(math.sqrt(8 / 7))   # sample SD: 8 deviations of 1, n-1 = 7
    assert liver["suv_max"] == pytest.approx(3.0)
    assert spleen["suv_mean"] == pytest.approx(2.5) and spleen["suv_sd"] == pytest.approx(0.0)
    # a named organ absent from the map is listed with no statistics, not silently dropped
    assert kidney["voxels"] == 0 and kidney["suv_mean"] is None


def test_psnr_rmse_mae_nrmse_nmse_for_a_constant_offset():
    ref = np.zeros((8, 8, 8))
    ref[:, :, 4:] = 10.0        # data range 10
    test = ref + 1.0            # every voxel off by 1
    assert metrics.mae(ref, test) == pytest.approx(1.0)
    assert metrics.rmse(ref, test) == pytest.approx(1.0)
    assert metrics.nrmse(ref, test) == pytest.approx(0.1)          # 1 / range 10 (AMDiff)
    assert metrics.psnr(ref, test) == pytest.approx(20.0)          # 10 log10(10^2 / 1)
    assert metrics.psnr(ref, test, data_range=100.0) == pytest.approx(40.0)
    assert metrics.nmse(ref, test) == pytest.approx(512 / (256 * 100.0))  # sum(1) / sum(ref^2)
    assert metrics.psnr(ref, ref) == math.inf


def test_masked_metrics_only_see_voxels_inside_the_mask():
    ref = np.linspace(0, 4, 4 ** 3).reshape(4, 4, 4)
    test = ref.copy()
    test[0] += 2.0                            # error only in the first slice
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:] = 1
    assert metrics.rmse(ref, test, mask=mask) == 0.0
    assert metrics.mae(ref, test, mask=1 - mask) == pytest.approx(2.0)
    # NRMSE inside a mask is normalised by the reference's range inside that mask
    inside = ref[0]
    assert metrics.nrmse(ref, test, mask=1 - mask) == pytest.approx(2.0 / (inside.max() - inside.min()))


def test_ssim3d_is_one_for_identical_images_and_lower_for_noisy():
    rng = np.random.default_rng(1)
    ref = np.zeros((16, 16, 16))
    ref[4:12, 4:12, 4:12] = 5.0
    assert metrics.ssim3d(ref, ref) == pytest.approx(1.0)
    noisy = ref + rng.normal(0, 1.0, ref.shape)
    assert metrics.ssim3d(ref, noisy, data_range=5.0) < 0.9


def test_dice_of_two_overlapping_cubes():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[0:4, 0:4, 0:4] = True        # 64 voxels
    b[2:6, 0:4, 0:4] = True        # 64 voxels, 32 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 32 / 128)
    assert metrics.dice(np.zeros_like(a), np.zeros_like(b)) == 1.0


def test_autopet_false_positive_and_false_negative_volumes():
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros((20, 20, 20), np.uint8)
    gt[1:4, 1:4, 1:4] = 1            # gt lesion A (27 voxels), touched by the prediction
    pred[2:5, 2:5, 2:5] = 1          # prediction overlapping A: neither FP nor FN
    gt[10:12, 10:12, 10:12] = 1      # gt lesion B (8 voxels), missed -> FN 8 voxels
    pred[15:19, 15:17, 15:17] = 1    # prediction touching nothing -> FP 16 voxels
    fp, fn = metrics.autopet_fp_fn_volumes(pred, gt, spacing_xyz=(2.0, 2.0, 2.0))
    assert fp == pytest.approx(16 * 8 / 1000)
    assert fn == pytest.approx(8 * 8 / 1000)
    fp_img, fn_img = metrics.autopet_fp_fn_volumes(image(pred), image(gt))
    assert (fp_img, fn_img) == pytest.approx((fp, fn))


def test_metrics_refuse_mismatched_shapes_nan_and_non_binary_masks():
    with pytest.raises(InputError, match="differs"):
        metrics.rmse(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    bad = np.zeros((4, 4, 4))
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.psnr(np.ones((4, 4, 4)), bad)
    with pytest.raises(InputError, match="binary"):
        metrics.dice(np.full((4, 4, 4), 2), np.ones((4, 4, 4)))


def test_liver_reference_check_flags_liver_outside_eanm_range(tmp_path):
    from PETDiffusionLib.quant.organs import liver_reference_check
    from PETDiffusionLib.quant.tables import write_quant_outputs
    import json
    organs = np.zeros((30, 30, 30), np.uint8)
    organs[2:28, 2:28, 2:28] = 1          # 52 mm cube on 2 mm voxels holds the 3 cm sphere
    for liver_suv, inside in ((2.0, True), (3.4, False), (1.2, False)):
        suv = np.where(organs == 1, liver_suv, 0.5).astype(np.float32)
        check = liver_reference_check(image(suv), image(organs), {1: "liver"})
        assert check["suv_mean"] == pytest.approx(liver_suv)
        assert check["within_eanm_range"] is inside
    paths = write_quant_outputs(tmp_path, image(suv), organ_img=image(organs), organ_names={1: "liver"})
    summary = json.loads(paths["summary_json"].read_text())
    assert summary["liver_reference"]["within_eanm_range"] is False
    assert liver_reference_check(image(suv), image(organs), {1: "spleen"}) is None
