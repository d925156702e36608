"""Classical PET denoisers (quant/baselines.py) and the fixed real validation split of denoise-segment
(tasks/denoise_segment/realval.py), on a Poisson-noisy piecewise-constant object and on the real
sarcoma crops / whole-body PET of ../shared/data."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.quant import baselines
from PETDiffusionLib.quant.metrics import nrmse
from PETDiffusionLib.tasks.denoise_segment import realval
from PETDiffusionLib.training import real_sts

SPACING = (4.0, 4.0, 4.0)
GAIN = 0.05        # SUV per count: a 1-SUV background holds 20 counts per voxel


def piecewise_object() -> tuple[np.ndarray, np.ndarray]:
    """A 24x40x40 cylinder body of SUV 1 in air with a 6x8x8 block of SUV 4 and one of SUV 0.3."""
    suv = np.zeros((24, 40, 40), np.float32)
    yy, xx = np.mgrid[:40, :40]
    body = (yy - 19.5) ** 2 + (xx - 19.5) ** 2 < 17 ** 2
    suv[:, body] = 1.0
    suv[9:15, 10:18, 10:18] = 4.0
    suv[9:15, 22:30, 22:30] = 0.3
    return suv, np.broadcast_to(body, suv.shape).copy()


def poisson_noisy(suv: np.ndarray, seed: int) -> np.ndarray:
    return (GAIN * np.random.default_rng(seed).poisson(suv / GAIN)).astype(np.float32)


@pytest.fixture(scope="module")
def noisy_object():
    suv, body = piecewise_object()
    return suv, poisson_noisy(suv, 1), body


def test_each_baseline_lowers_the_body_nrmse_of_a_poisson_noisy_object(noisy_object):
    suv, low, body = noisy_object
    before = nrmse(suv, low, body)
    after = {"gaussian": nrmse(suv, baselines.gaussian(low, SPACING, 5.0), body),
             "nlm": nrmse(suv, baselines.nlm(low, SPACING, 0.6), body),
             "bm4d": nrmse(suv, baselines.bm4d_vst(low, 1.0, SPACING), body)}
    assert before == pytest.approx(np.sqrt(GAIN * 1.0) / 4.0, rel=0.15)   # Poisson SD / range 4
    assert after["gaussian"] < 0.65 * before          # blurs the block edges as it smooths
    for name in ("nlm", "bm4d"):                      # edge-preserving: far better on flat regions
        assert after[name] < 0.3 * before, (name, after[name], before)


def test_the_anscombe_transform_inverts_exactly_and_gives_poisson_counts_unit_variance():
    x = np.linspace(0.0, 30.0, 301)
    assert np.allclose(baselines.inverse_vst(baselines.vst(x, 0.2), 0.2), x, atol=1e-4)
    counts = np.random.default_rng(0).poisson(20.0, 200_000)
    assert np.std(baselines.vst(counts * GAIN, GAIN)) == pytest.approx(1.0, abs=0.02)
    # Anscombe's unbiased inverse sits 1/4 count above the algebraic one
    y = baselines.vst(np.array([2.0]), GAIN)
    assert (baselines.inverse_vst(y, GAIN, unbiased=True) - baselines.inverse_vst(y, GAIN))[0] \
        == pytest.approx(0.25 * GAIN, rel=1e-4)
    with pytest.raises(Exception, match="gain"):
        baselines.vst(x, 0.0)


def test_the_noise_gain_of_a_uniform_poisson_volume_is_its_suv_per_count():
    flat = poisson_noisy(np.full((24, 40, 40), 2.0, np.float32), 3)
    assert baselines.noise_gain(flat, SPACING) == pytest.approx(GAIN, rel=0.1)


def test_tune_picks_the_grid_value_with_the_lowest_mean_body_nrmse(noisy_object):
    suv, low, body = noisy_object
    pairs = [(low, suv, body, SPACING), (poisson_noisy(suv, 2), suv, body, SPACING)]
    grid = (0.0, 4.0, 8.0, 16.0)
    by_hand = {f: np.mean([nrmse(r, baselines.gaussian(lo, sp, f), m) for lo, r, m, sp in pairs])
               for f in grid}
    scores = baselines.tune_scores("gaussian", pairs, grid)
    assert scores == pytest.approx(by_hand)
    best = baselines.tune("gaussian", pairs, grid)
    assert best == min(by_hand, key=by_hand.get)
    assert best not in (0.0, 16.0)        # neither no filter nor the widest wins on this object
    with pytest.raises(Exception, match="unknown baseline"):
        baselines.tune("median", pairs, grid)


def test_the_sarcoma_split_is_every_third_id_and_training_reads_the_same_rule(shared_data):
    assert realval.split_of("STS_015") == "validation"
    assert realval.split_of("STS_016") == "finetune"
    assert realval.split_of("STS_001") == realval.split_of("STS_002") == "excluded"
    assert real_sts.split_of is realval.split_of and real_sts.EXCLUDED == realval.EXCLUDED
    data = shared_data / "petct_sts_more"
    val = [d.name for d in realval.sts_cases(data, "validation")]
    assert val == [f"STS_{n:03d}" for n in range(15, 52, 3)]            # 13 crops
    tune = [d.name for d in realval.tuning_crops(data, 3)]
    assert tune == ["STS_019", "STS_041", "STS_035"]                   # the 3 smallest finetune crops
    assert not set(tune) & set(val)


def test_the_whole_body_validation_part_is_slices_134_and_up(shared_data):
    folder = shared_data / "petwb_sts001" / "PET" / "image"
    full = read_pet_suv(folder)[0]
    case = realval.load_petwb_validation(folder)
    assert realval.PETWB_VALIDATION_FROM_Z == 134
    assert case.suv.shape == (267 - 134, 128, 128)
    assert np.array_equal(case.suv, np.clip(sitk.GetArrayFromImage(full)[134:], 0, None))
    assert case.image.GetOrigin()[2] == pytest.approx(full.TransformIndexToPhysicalPoint((0, 0, 134))[2])
    assert case.gtv is None and case.mu_per_cm is None and 0.1 < case.body.mean() < 0.5


def test_validation_low_count_versions_are_fixed_by_case_and_level(shared_data):
    case = realval.load_crop(shared_data / "petct_sts_more" / "STS_019")
    assert case.mu_per_cm is not None and case.gtv is not None          # STS_019 has a CT
    assert realval.seed_of("STS_019", 10) == zlib.crc32(b"STS_019:10")
    a, b = realval.low_count(case, 10), realval.low_count(case, 10)
    assert np.array_equal(a, b)
    five = realval.low_count(case, 5)
    assert a.shape == five.shape == case.suv.shape
    assert nrmse(case.suv, five, case.body) > nrmse(case.suv, a, case.body)   # fewer counts, noisier
