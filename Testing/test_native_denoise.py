"""Issue 13: low-count versions of a real PET at its own grid, the native-resolution denoise path,
and the training bank's pairs (real data from ../shared/data; tiny random networks, no training)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.methods.amdiff import networks as amdiff_networks
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import save_model_folder
from PETDiffusionLib.physics.lowcount import (ReconSettings, VALIDATION_SETTINGS, body_outline,
                                              simulate_low_count)
from PETDiffusionLib.quant.noise import noise_index
from PETDiffusionLib.tasks.denoise_segment import pipeline
from PETDiffusionLib.training import native_denoise

STS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "petct_sts_more"
CASE = STS / "STS_015"   # a "validation" crop (every third id): never in the bank


def _real_crop():
    img = sitk.ReadImage(str(CASE / "PET_image.nii.gz"), sitk.sitkFloat32)
    return img, np.clip(sitk.GetArrayFromImage(img), 0, None)


def test_low_count_versions_are_deterministic_keep_the_grid_and_get_noisier_with_fewer_counts():
    img, suv = _real_crop()
    sp = img.GetSpacing()
    a = simulate_low_count(suv, sp, 0.10, VALIDATION_SETTINGS, seed=3)
    b = simulate_low_count(suv, sp, 0.10, VALIDATION_SETTINGS, seed=3)
    assert a.shape == suv.shape and a.dtype == np.float32 and a.min() >= 0
    np.testing.assert_array_equal(a, b)
    body = body_outline(suv, sp)
    hi = simulate_low_count(suv, sp, 0.40, VALIDATION_SETTINGS, seed=4)
    ratio = noise_index(a, suv, body) / noise_index(hi, suv, body)
    # 4x fewer counts: the Poisson-unit index grows by about sqrt(4) = 2
    assert 1.5 < ratio < 2.6, ratio
    # the count-weighted body mean is kept (OSEM is unbiased in the mean, PHYSICS.md §4.2)
    assert abs(a[body].mean() / suv[body].mean() - 1) < 0.05


def test_mlem_with_psf_modelling_runs_and_bad_requests_are_refused():
    img, suv = _real_crop()
    sp = img.GetSpacing()
    out = simulate_low_count(suv[:8], sp, 0.05, ReconSettings(12, 1, 4.0, True, 0.0), seed=0)
    assert out.shape == suv[:8].shape and np.isfinite(out).all() and out.max() > 0
    with pytest.raises(InputError, match="count fraction"):
        simulate_low_count(suv, sp, 1.5, VALIDATION_SETTINGS, seed=0)
    with pytest.raises(InputError, match="square"):
        simulate_low_count(suv, (4.0, 5.0, 3.0), 0.1, VALIDATION_SETTINGS, seed=0)


def test_regridding_gives_square_voxels_near_the_asked_spacing():
    arr = np.random.default_rng(0).random((3, 31, 29)).astype(np.float32)
    out, sp = native_denoise._regrid(arr, (5.47, 5.47, 3.27), 2.2)
    assert sp[0] == sp[1] and abs(sp[0] - 2.2) < 0.1 and sp[2] == 3.27
    assert out.shape[0] == 3 and abs(out.shape[1] * sp[1] - 31 * 5.47) < sp[1]


def test_a_bank_pair_of_a_fine_grid_is_square_in_range_and_reused_when_present(tmp_path):
    cfg = native_denoise.NativeConfig()
    job = {"kind": "crop", "path": str(STS / "STS_013"), "fine": True, "seed": 5,
           "source": "crop:STS_013", "out": str(tmp_path / "pair_0000.npz"), "cfg": cfg.__dict__}
    meta = native_denoise.make_pair(job)
    sx, sy, _ = meta["spacing_mm_xyz"]
    assert sx == pytest.approx(sy) and 1.7 < sx < 3.3
    assert cfg.fraction_range[0] <= meta["fraction"] <= cfg.fraction_range[1]
    z = np.load(job["out"])
    assert z["low"].shape == z["ref"].shape == z["body"].shape
    again = native_denoise.make_pair(job)     # the file is there: same draws, no new simulation
    for key in ("fraction", "settings", "reference", "shape_zyx", "source"):
        assert json.dumps(again[key]) == json.dumps(meta[key])
    # read back from the stored float16/float32 arrays
    assert again["spacing_mm_xyz"] == pytest.approx(meta["spacing_mm_xyz"], rel=1e-6)
    assert again["noise_index"] == pytest.approx(meta["noise_index"], rel=0.01)


def _tiny_native_model(folder: Path) -> Path:
    torch.manual_seed(0)
    specs = amdiff_networks.network_specs({"context": 2, "channels": [8, 16, 16, 16]},
                                          {"hidden": 8, "layers": 2},
                                          {"channels": [8, 8, 8, 8], "encoder": "conv", "use_ct": True})
    nets = {k: build_network(v) for k, v in specs.items()}
    card = {"id": "tiny-native", "version": "0.0.0", "task": "denoise-segment", "networks": specs,
            "preprocessing": {"suv_cutoff": 20.0, "context_slices": 2, "grid": "native",
                              "spacing_mm": [4.0, 4.0, 5.0],
                              "supported_spacing_mm": {"inplane": [1.5, 6.0], "slice": [1.5, 6.0]}},
            "diffusion": {"schedule": "cosine", "prediction": "sample", "num_train_timesteps": 250},
            "inference": {"steps": 1, "sampler": "ddim", "start_fraction": 1.0},
            "classes": {"organs": list(amdiff_networks.ORGAN_CLASSES),
                        "lesions": list(amdiff_networks.LESION_CLASSES)}}
    return save_model_folder(folder, nets, card)


def test_a_native_card_denoises_on_the_input_voxels_and_segments_on_the_working_grid(tmp_path):
    img, suv = _real_crop()
    low = sitk.GetImageFromArray(simulate_low_count(suv, img.GetSpacing(), 0.1, VALIDATION_SETTINGS, 1))
    low.CopyInformation(img)
    nets, card = pipeline.load_model(_tiny_native_model(tmp_path / "m"), "cpu")
    out = pipeline.denoise_segment_image(low, None, nets, card, {"samples": 2, "steps": 2})
    den = out["pet_denoised"]
    assert den.GetSize() == img.GetSize() and den.GetSpacing() == img.GetSpacing()
    assert out["_info"]["denoise_grid"].startswith("native")
    assert out["_info"]["working_spacing_mm"] == pytest.approx([4.0, 4.0, 5.0])
    d = sitk.GetArrayFromImage(den)
    assert np.isfinite(d).all() and d.min() >= 0
    sd = sitk.GetArrayFromImage(out["uncertainty"])
    assert sd.min() >= 0 and sd.max() > 0          # two samples of a random net differ
    assert out["lesions"].GetSize() == img.GetSize()
    # one DDIM step from t = T - 1 is the deterministic posterior-mean estimate, on the input grid
    nat = pipeline.denoise_native_arrays(np.clip(sitk.GetArrayFromImage(low), 0, None), nets, card,
                                         1, "ddim", 1, 0, 1.0)
    np.testing.assert_allclose(nat["suv"], pipeline.denoise_native_arrays(
        np.clip(sitk.GetArrayFromImage(low), 0, None), nets, card, 1, "ddim", 1, 0, 1.0)["suv"])
    assert nat["suv"].shape == suv.shape and nat["std"] is None


def test_the_real_steps_curve_scores_every_point_chooses_the_fewest_good_steps_and_measures_the_sd(
        tmp_path):
    from PETDiffusionLib.tasks.denoise_segment import realcurve
    model = _tiny_native_model(tmp_path / "m")
    res = realcurve.real_steps_curve(model, 10, max_cases=1, modes=(("ddim", 1.0), ("ddim", 0.5)),
                                     steps_list=(1, 2), samples=2, data_dir=STS)
    assert res["cases"] == ["STS_015"]                     # the first validation crop, never trained on
    assert [(p["start_fraction"], p["steps"]) for p in res["points"]] == [(1.0, 1), (1.0, 2),
                                                                         (0.5, 1), (0.5, 2)]
    best = min(p["body_nrmse_median"] for p in res["points"])
    chosen = [p for p in res["points"] if all(p[k] == res["chosen"][k] for k in res["chosen"])][0]
    assert chosen["body_nrmse_median"] <= best * (1 + realcurve.WITHIN_BEST)
    assert all(p["body_nrmse_median"] > 0 for p in res["points"])
    (u,) = res["uncertainty"]["per_case"]
    assert u["sd_mean_over_suv_mean"] > 0 and -1 <= u["spearman_sd_vs_abs_error"] <= 1
    assert "chosen" in realcurve.format_table(res)


def test_a_fine_tune_starts_from_the_init_model_denoiser_and_a_mismatch_is_refused(tmp_path):
    cfg = native_denoise.NativeConfig(denoiser={"context": 2, "channels": [8, 16, 16, 16]}, seed=7)
    fresh = native_denoise.initial_networks(cfg)["denoiser"].state_dict()
    folder = _tiny_native_model(tmp_path / "init")          # seed 0: other weights than seed 7
    shipped, _ = pipeline.load_model(folder, "cpu")
    tuned = native_denoise.initial_networks(dataclasses.replace(cfg, init_from=str(folder)))
    got = tuned["denoiser"].state_dict()
    want = shipped["denoiser"].state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(fresh[k], want[k]) for k in want)
    wider = dataclasses.replace(cfg, init_from=str(folder), denoiser={"context": 2, "channels": [8, 16, 32, 32]})
    with pytest.raises(InputError, match="does not match"):
        native_denoise.initial_networks(wider)
