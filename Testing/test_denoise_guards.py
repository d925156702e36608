"""Issue 13 "Bad input": a denoise-segment input whose voxel size is outside what the model supports,
or whose count level is far outside its training, gets a clear warning in the manifest and the
report (tasks/denoise_segment/guards.py), never silent output. And the geometry of the "Speed" bench's
real input (tasks/denoise_segment/bench.py)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pypdfium2 as pdfium
import pytest
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError, ModelError
from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.models.registry import resolve_model
from PETDiffusionLib.physics.lowcount import body_outline
from PETDiffusionLib.quant.noise import noise_index
from PETDiffusionLib.tasks.denoise_segment.bench import full_count_on_bench_grid, parse_size
from PETDiffusionLib.tasks.denoise_segment.guards import (FAR_FACTOR, axial_spacing,
                                                          count_level_warning, voxel_size_warnings)
from PETDiffusionLib.tasks.denoise_segment.spec import MODEL_ID
from PETDiffusionLib.tasks.runner import run_task

# the new native-resolution card's ranges (issue 13: 1.5-5 mm in-plane; the lead's card: 1.5-6 mm)
NATIVE_CARD = {"id": "amdiff-native-test",
               "preprocessing": {"supported_spacing_mm": {"inplane": [1.5, 6.0], "slice": [1.5, 6.0]}},
               "inference": {"noise_index_range": [0.10, 0.15]}}


def pet_with_spacing(spacing, direction=None) -> sitk.Image:
    img = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_a_normal_pet_gets_no_voxel_size_warning():
    assert voxel_size_warnings(pet_with_spacing((1.95, 1.95, 3.27)), NATIVE_CARD) == []
    assert voxel_size_warnings(pet_with_spacing((1.5, 1.5, 6.0)), NATIVE_CARD) == []  # edges inside


def test_a_0_8_mm_pet_is_warned_below_the_in_plane_range():
    (w,) = voxel_size_warnings(pet_with_spacing((0.8, 0.8, 3.0)), NATIVE_CARD)
    assert w == ("voxel size outside what the model supports: the PET's in-plane spacing 0.80 x 0.80 "
                 "mm is below the supported 1.5-6 mm (model amdiff-native-test, card "
                 "preprocessing.supported_spacing_mm); the denoised PET and the lesion masks may be "
                 "unreliable: resample the PET to an in-plane spacing within 1.5-6 mm or use a model "
                 "trained for it")


def test_a_9_mm_slice_pet_is_warned_above_the_slice_range():
    (w,) = voxel_size_warnings(pet_with_spacing((2.0, 2.0, 9.0)), NATIVE_CARD)
    assert "the PET's slice spacing 9.00 mm is above the supported 1.5-6 mm" in w
    inplane, slice_ = voxel_size_warnings(pet_with_spacing((0.8, 0.8, 9.0)), NATIVE_CARD)
    assert "in-plane spacing 0.80 x 0.80 mm is below" in inplane
    assert "slice spacing 9.00 mm is above" in slice_


def test_the_slice_axis_is_the_head_feet_axis_of_a_sagittal_series():
    # a sagittal series: image axis 0 runs head-feet (its direction column is (0, 0, 1))
    sagittal = (0, 0, 1, 0, 1, 0, 1, 0, 0)
    img = pet_with_spacing((9.0, 2.0, 2.0), sagittal)
    assert axial_spacing(img) == (2.0, 2.0, 9.0)
    (w,) = voxel_size_warnings(img, NATIVE_CARD)
    assert "slice spacing 9.00 mm" in w


def test_working_grid_cards_without_a_spacing_range_give_no_spacing_warning():
    # the working-grid cards resample every input to their grid: no native range to leave
    card = {"id": "amdiff-sts-2p5d", "inference": {"steps": 2}}
    assert voxel_size_warnings(pet_with_spacing((0.8, 0.8, 9.0)), card) == []
    assert count_level_warning(5.0, card) is None


def test_the_count_level_warning_fires_only_beyond_1_5_times_the_training_range():
    lo, hi = NATIVE_CARD["inference"]["noise_index_range"]
    assert FAR_FACTOR == 1.5
    for inside in (lo, hi, lo / 1.5 + 1e-4, hi * 1.5 - 1e-4):
        assert count_level_warning(inside, NATIVE_CARD) is None, inside
    assert count_level_warning(float("nan"), NATIVE_CARD) is None       # unmeasurable: no claim
    assert count_level_warning(None, NATIVE_CARD) is None
    noisy = count_level_warning(0.30, NATIVE_CARD)
    assert noisy == ("count level far outside training: the input's noise index 0.3 sqrt(SUV) is "
                     "above 0.15 x 1.5 = 0.225: the input is much noisier (fewer counts) than any "
                     "study the model was trained on, and it may leave noise or invent structure "
                     "(model amdiff-native-test trained on noise indices 0.1-0.15, card "
                     "inference.noise_index_range); check the denoised PET against the input")
    clean = count_level_warning(0.05, NATIVE_CARD)
    assert clean.startswith("count level far outside training: the input's noise index 0.05 "
                            "sqrt(SUV) is below 0.1 / 1.5 = 0.0667: the input is much less noisy")


@pytest.mark.parametrize("bad", [[0.2], [0.3, 0.1], "0.1-0.2", [0.0, 0.2]])
def test_a_malformed_range_in_a_card_is_a_model_error_naming_the_field(bad):
    card = {"id": "broken", "inference": {"noise_index_range": bad}}
    with pytest.raises(ModelError, match="model card broken: inference.noise_index_range"):
        count_level_warning(0.1, card)


def poisson_pet(counts_per_suv: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth SUV 1-4 volume and a Poisson-noise version at ``counts_per_suv`` counts per SUV."""
    z, y, x = np.mgrid[0:24, 0:48, 0:48].astype(np.float32)
    truth = 1.0 + 3.0 * np.exp(-((x - 24) ** 2 + (y - 24) ** 2 + (z - 12) ** 2) / 200.0)
    rng = np.random.default_rng(seed)
    return rng.poisson(truth * counts_per_suv) / counts_per_suv, truth


def test_the_noise_index_grows_by_sqrt_2_when_the_counts_halve():
    full, truth = poisson_pet(50.0, seed=1)
    half, _ = poisson_pet(25.0, seed=2)
    i_full, i_half = noise_index(full, truth), noise_index(half, truth)
    assert i_full == pytest.approx(1 / math.sqrt(50.0), rel=0.03)   # Poisson: SD/sqrt(mean) = 1/sqrt(c)
    assert i_half / i_full == pytest.approx(math.sqrt(2.0), rel=0.03)


def test_a_quarter_of_the_counts_below_the_trained_range_is_far_outside_it():
    # training range 0.10-0.15 is about 44-100 counts per SUV; 25 counts (index ~0.2) is still
    # within the 1.5x margin, 10 counts (index ~0.32) is not
    assert count_level_warning(noise_index(*poisson_pet(25.0, seed=3)), NATIVE_CARD) is None
    assert "much noisier" in count_level_warning(noise_index(*poisson_pet(10.0, seed=4)), NATIVE_CARD)


@pytest.fixture(scope="module")
def small_pet(tmp_path_factory):
    """A 10 % count-like body-shaped PET, 48x48x16 at 4x4x5 mm (the shipped model's working grid)."""
    noisy, _ = poisson_pet(8.0, seed=5)
    z, y, x = np.mgrid[0:noisy.shape[0], 0:48, 0:48]
    body = ((y - 24) / 20.0) ** 2 + ((x - 24) / 22.0) ** 2 < 1
    img = sitk.GetImageFromArray(np.where(body, noisy, 0.0).astype(np.float32)[4:20])
    img.SetSpacing((4.0, 4.0, 5.0))
    path = tmp_path_factory.mktemp("pet") / "pet.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def test_a_count_level_far_outside_the_cards_range_is_in_the_manifest_and_the_report(
        small_pet, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL_ID), model)     # the shipped folder, its card edited here
    card = json.loads((model / "card.json").read_text())
    assert card["inference"]["noise_index_range"]           # the default card's training range,
    card["inference"]["noise_index_range"] = [0.01, 0.02]   # replaced: far less noise than this input
    (model / "card.json").write_text(json.dumps(card))
    manifest = json.loads(run_task("denoise-segment", {"pet": str(small_pet)}, {},
                                   tmp_path / "out", device="cpu", model_path=str(model)).read_text())
    index = manifest["inference"]["noise_index"]
    assert index > 0.02 * FAR_FACTOR
    (warning,) = manifest["warnings"]
    assert warning.startswith(f"count level far outside training: the input's noise index "
                              f"{index:.3g} sqrt(SUV) is above 0.02 x 1.5 = 0.03")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["extra"]["warnings"] == [warning]
    doc = pdfium.PdfDocument(str(tmp_path / "out" / "report.pdf"))
    try:
        text = " ".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()
    assert "count level far outside training" in " ".join(text.split())


def test_todays_shipped_card_runs_with_no_warning_and_records_the_noise_index(small_pet, tmp_path):
    manifest = json.loads(run_task("denoise-segment", {"pet": str(small_pet)}, {}, tmp_path / "out",
                                   device="cpu").read_text())
    assert manifest["warnings"] == []
    assert 0.05 < manifest["inference"]["noise_index"] < 1.0   # a noisy Poisson input: measured
    assert "warnings" not in json.loads((tmp_path / "out" / "report.json").read_text())["extra"]


def test_the_bench_size_is_three_voxel_counts():
    assert parse_size(None) == (256, 256, 250) == parse_size("256,256,250")
    for bad in ("256x256x250", "256,256", "0,256,250"):
        with pytest.raises(InputError, match="--size"):
            parse_size(bad)


def test_the_bench_input_is_the_real_study_at_1_95_mm_its_central_slices_around_the_body(
        shared_data):
    source = shared_data / "petwb_sts001" / "PET" / "image"
    pet = read_pet_suv(source)[0]                       # 128x128x267 at 4.69 x 4.69 x 3.27 mm
    img = full_count_on_bench_grid((64, 64, 20), source)
    assert img.GetSize() == (64, 64, 20)
    assert img.GetSpacing() == pytest.approx((1.95, 1.95, pet.GetSpacing()[2]))
    first_slice = (267 - 20) // 2                        # the central 20 of the study's 267 slices
    assert img.GetOrigin()[2] == pytest.approx(pet.GetOrigin()[2] + first_slice * pet.GetSpacing()[2])
    # the same physical point has the same SUV: bilinear in-plane on the study's slice 133
    point = img.TransformIndexToPhysicalPoint((32, 32, 10))
    ci, cj, ck = pet.TransformPhysicalPointToContinuousIndex(point)
    assert ck == pytest.approx(first_slice + 10, abs=1e-6)
    i, j, fi, fj = int(ci), int(cj), ci - int(ci), cj - int(cj)
    a = sitk.GetArrayFromImage(pet)[first_slice + 10]
    expected = ((1 - fj) * ((1 - fi) * a[j, i] + fi * a[j, i + 1])
                + fj * ((1 - fi) * a[j + 1, i] + fi * a[j + 1, i + 1]))
    assert expected > 0.1 and img[32, 32, 10] == pytest.approx(expected, rel=1e-4)
    # centred on the body: its outline's in-plane box centre is the grid's centre
    ys, xs = np.nonzero(body_outline(sitk.GetArrayFromImage(pet), pet.GetSpacing()).any(0))
    body_centre = pet.TransformContinuousIndexToPhysicalPoint(
        ((xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0, 0.0))
    grid_centre = img.TransformContinuousIndexToPhysicalPoint((31.5, 31.5, 0.0))
    assert grid_centre[:2] == pytest.approx(body_centre[:2], abs=1e-3)
    with pytest.raises(InputError, match="the study has 267"):
        full_count_on_bench_grid((64, 64, 300), source)
