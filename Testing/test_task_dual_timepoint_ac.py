"""dual-timepoint-ac (STMDiff): the matching loss of Eq. 1, the k-best retrieval and the condition
of Eq. 6, the retention index, end to end through run_task with a tiny random model on a small
simulated dual-time-point case (geometry, units, synthetic flags), and the bad inputs of issue 16
(an AC image given as NAC, a CT not covering the PET's axial range, a NAC in Bq/mL) refused with
nothing written. No model is trained here: the model folder holds randomly initialised networks."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import get_units, is_synthetic, read_image, write_image
from PETDiffusionLib.methods.stmdiff.inference import build_condition, top_k
from PETDiffusionLib.methods.stmdiff.intensities import body_contours
from PETDiffusionLib.methods.stmdiff.losses import contour_dice, matching_infonce
from PETDiffusionLib.models.card import build_network, read_card
from PETDiffusionLib.models.registry import resolve_model, save_model_folder
from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
from PETDiffusionLib.tasks.dual_timepoint_ac.evaluate import patient_check
from PETDiffusionLib.tasks.dual_timepoint_ac.pipeline import (SAME_PATIENT_MARGIN, nac_profile, same_patient_warning,
                                                              retention_rows)
from PETDiffusionLib.tasks.runner import run_task
from PETDiffusionLib.training.recipes.dual_timepoint_ac import card as recipe_card
from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import network_specs

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dual_timepoint_ac.json"


# ------------------------------------------------------------------------------------------------
# method pieces

def test_infonce_of_eq1_with_l1_similarity_has_its_closed_form_value_for_one_hot_latents():
    """Distinct one-hot latents, zx = zy: s(i, i) = 0, s(i, j) = -2 (L1 distance 2), tau = 0.5, so each
    row gives -log(1 / ((M-1) e^-4 + e^0)) and the symmetric loss twice that."""
    m = 4
    z = torch.eye(m)
    expected = 2 * math.log((m - 1) * math.exp(-4.0) + 1.0)
    assert float(matching_infonce(z, z)) == pytest.approx(expected, rel=1e-5)
    shuffled = z[[1, 2, 3, 0]]
    assert float(matching_infonce(z, shuffled)) > 10 * expected


def test_contour_dice_is_zero_when_each_head_predicts_the_other_modality_contour():
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 4:12, 3:13] = True
    logits = torch.where(mask, 20.0, -20.0).float()
    assert float(contour_dice(logits, logits, mask, mask)) == pytest.approx(0.0, abs=0.02)
    assert float(contour_dice(-logits, -logits, mask, mask)) > 0.9


def test_top_k_picks_the_most_similar_ct_slices_best_first_and_builds_the_eq6_condition():
    sim = torch.tensor([[0.0, -1.0, -5.0, -0.5], [-3.0, -2.0, -0.1, -4.0]])
    assert top_k(sim, 2).tolist() == [[0, 3], [2, 1]]
    feats = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 3, 3)
    nac_lat = torch.full((2, 4, 3, 3), 9.0)
    cond = build_condition(nac_lat, feats, top_k(sim, 2), 2)
    assert cond.shape == (2, 2 * 2 + 4, 3, 3)
    assert cond[0, :, 0, 0].tolist() == [0, 0, 3, 3, 9, 9, 9, 9]
    assert build_condition(nac_lat, None, None, 0) is nac_lat


def test_body_contours_fill_the_lungs_and_drop_isolated_specks():
    ct = np.full((1, 32, 32), -1000.0, np.float32)
    ct[0, 6:26, 6:26] = 40.0
    ct[0, 10:16, 9:14] = -870.0      # a lung inside the body
    ct[0, 1, 1] = 40.0               # a speck in the air
    body = body_contours(ct, "ct")[0]
    assert body[12, 11] and not body[1, 1] and body.sum() == 20 * 20


def test_retention_index_of_a_lesion_that_moved_and_rose_by_20_percent():
    early = np.zeros((20, 40, 40), np.float32)
    early[8:12, 18:22, 18:22] = 5.0
    late = np.zeros_like(early)
    late[9:13, 18:22, 18:22] = 6.0   # one slice (5 mm) further: the patient moved
    ref = sitk.GetImageFromArray(early)
    ref.SetSpacing((4.0, 4.0, 5.0))
    lat = sitk.GetImageFromArray(late)
    lat.CopyInformation(ref)
    rows = retention_rows(ref, lat, threshold=2.5)
    assert len(rows) == 1
    assert rows[0]["suvmax_early"] == 5.0 and rows[0]["suvmax_delayed"] == 6.0
    assert rows[0]["retention_index_percent"] == 20.0
    assert rows[0]["volume_ml"] == pytest.approx(64 * 0.08)


# ------------------------------------------------------------------------------------------------
# end to end with a tiny random model

@pytest.fixture(scope="module")
def case(tmp_path_factory):
    (c,) = generate_cohort(tmp_path_factory.mktemp("dtp"), 1, seed=5,
                           cfg=PhantomConfig(size=32, slices=40, images=("ac", "nac", "delayed")))
    return c


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = json.loads(CONFIG.read_text())
    cfg["diffusion"]["channels"] = 8
    sp = network_specs(cfg)
    nets = {"g1": build_network(sp["g1"]), "g2": build_network(sp["g2"]),
            "autoencoder": build_network(sp["autoencoder"]), "denoiser": build_network(sp["diffusion:k2"])}
    card = recipe_card.model_card(cfg, "tiny-stmdiff", 2, {"latent_scale": 1.0}, {}, "test")
    card["networks"] = {"g1": sp["g1"], "g2": sp["g2"], "autoencoder": sp["autoencoder"],
                        "denoiser": sp["diffusion:k2"]}
    return save_model_folder(tmp_path_factory.mktemp("model") / "tiny-stmdiff", nets, card)


def test_simulated_nac_passes_the_profile_check_and_the_ac_image_does_not(case):
    nac = nac_profile(sitk.GetArrayFromImage(read_image(case / "pet_delayed_nac.nii.gz")))
    ac = nac_profile(sitk.GetArrayFromImage(read_image(case / "pet_delayed_ac.nii.gz")))
    print("NAC", nac, "AC", ac)
    assert nac["body_mean"] < 0.3 < 0.6 < ac["body_mean"]


def test_run_writes_the_delayed_ac_pet_on_the_nac_grid_with_uncertainty_and_retention_table(case, tiny_model, tmp_path):
    """--method stmdiff: the paper's latent diffusion."""
    out = tmp_path / "out"
    manifest = run_task("dual-timepoint-ac", {"nac": str(case / "pet_delayed_nac.nii.gz"),
                                              "ct": str(case / "ct.nii.gz"),
                                              "first_pet": str(case / "pet_ac.nii.gz")},
                        {"method": "stmdiff", "steps": 2, "samples": 2}, out, model_path=str(tiny_model))
    man = json.loads(manifest.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pet_ac.nii.gz",
                                                      "retention_index.csv", "uncertainty.nii.gz"]
    nac = read_image(case / "pet_delayed_nac.nii.gz")
    pet = read_image(out / "pet_ac.nii.gz")
    assert pet.GetSize() == nac.GetSize() and pet.GetSpacing() == nac.GetSpacing()
    assert pet.GetOrigin() == nac.GetOrigin()
    assert get_units(pet) == "SUVbw" and is_synthetic(pet)
    assert is_synthetic(read_image(out / "uncertainty.nii.gz"))
    arr = sitk.GetArrayFromImage(pet)
    assert np.isfinite(arr).all() and arr.min() >= 0.0
    assert man["k"] == 2 and man["synthetic"] is True and man["model_id"] == "tiny-stmdiff"
    assert man["input_checks"]["ct_axial_coverage"] == 1.0
    with (out / "retention_index.csv").open() as f:
        header = next(csv.reader(f))
    assert header[-1] == "retention_index_percent"


def _expect_refused(inputs: dict, out: Path, model: Path, words: str):
    with pytest.raises(InputError, match=words):
        run_task("dual-timepoint-ac", inputs, {"steps": 2}, out, model_path=str(model))
    assert not out.exists()


def test_an_ac_image_given_as_nac_is_refused(case, tiny_model, tmp_path):
    _expect_refused({"nac": str(case / "pet_delayed_ac.nii.gz"), "ct": str(case / "ct.nii.gz")},
                    tmp_path / "out", tiny_model, "attenuation-corrected PET, not a NAC")


def test_a_ct_that_does_not_cover_the_pet_axial_range_is_refused(case, tiny_model, tmp_path):
    ct = read_image(case / "ct.nii.gz")
    upper = ct[:, :, ct.GetSize()[2] // 2:]
    path = write_image(upper, tmp_path / "ct_upper.nii.gz", units="HU")
    _expect_refused({"nac": str(case / "pet_delayed_nac.nii.gz"), "ct": str(path)}, tmp_path / "out",
                    tiny_model, "covered")


def test_a_nac_in_bq_per_ml_is_refused(case, tiny_model, tmp_path):
    nac = read_image(case / "pet_delayed_nac.nii.gz")
    bq = sitk.Cast(nac * 5000.0, sitk.sitkFloat32)  # ~5 kBq/mL per SUV (PHYSICS.md §1), no units tag
    path = write_image(bq, tmp_path / "nac_bqml.nii.gz")
    _expect_refused({"nac": str(path), "ct": str(case / "ct.nii.gz")}, tmp_path / "out", tiny_model,
                    "Bq/mL")
    tagged = write_image(bq, tmp_path / "nac_tagged.nii.gz", units="Bq/mL")
    _expect_refused({"nac": str(tagged), "ct": str(case / "ct.nii.gz")}, tmp_path / "out", tiny_model,
                    "Bq/mL")


# ------------------------------------------------------------------------------------------------
# another patient's CT (issue 16)

def test_patient_check_sets_the_floor_below_every_own_ct_and_counts_the_other_cts_it_refuses():
    m = np.array([[-0.30, -0.90, -0.40],
                  [-2.00, -0.35, -0.45],
                  [-1.50, -0.52, -0.25]])   # row: a case's NAC, column: a case's CT
    pc = patient_check(m)
    assert pc["same_patient"] == [-0.35, -0.25]
    assert pc["floor"] == pytest.approx(SAME_PATIENT_MARGIN * -0.35)
    assert pc["same_refused_fraction"] == 0.0
    # floor -0.525: -0.90, -2.00, -1.50 refused; -0.40, -0.45, -0.52 not
    assert pc["pairs_other"] == 6 and pc["other_refused_fraction"] == 0.5


def test_a_ct_matching_worse_than_the_card_floor_gets_a_warning_with_both_readings():
    card = {"matching": {"same_patient_min_similarity": -0.6}}
    assert same_patient_warning(-0.4, card) is None
    assert same_patient_warning(None, card) is None           # no similarity (k = 0 model)
    assert same_patient_warning(-3.0, {"matching": {}}) is None  # no floor in the card
    w = same_patient_warning(-1.2, card)
    assert "another patient" in w and "-1.20" in w and "-0.60" in w


def test_the_shipped_model_warns_about_another_patients_ct_and_not_about_the_own(tmp_path):
    """Two held-out phantoms (the evaluation cohort's seed and grid): the delayed NAC of case 0 with its
    own CT runs without a warning; with case 1's CT the match similarity falls below the card's floor
    and the manifest says so (the card's evaluation.patient_check gives the fraction of such pairs)."""
    a, b = generate_cohort(tmp_path / "cohort", 2, seed=90000,
                           cfg=PhantomConfig(size=64, slices=80, images=("ac", "nac", "delayed")))
    floor = read_card(resolve_model("stmdiff-phantom-2d"))["matching"]["same_patient_min_similarity"]
    own = json.loads(run_task("dual-timepoint-ac", {"nac": str(a / "pet_delayed_nac.nii.gz"),
                                                    "ct": str(a / "ct.nii.gz")},
                              {"steps": 2}, tmp_path / "own").read_text())
    assert own["ct_match_similarity"] >= floor and not own.get("warnings")
    other = json.loads(run_task("dual-timepoint-ac", {"nac": str(a / "pet_delayed_nac.nii.gz"),
                                                      "ct": str(b / "ct.nii.gz")},
                                {"steps": 2}, tmp_path / "other").read_text())
    assert other["ct_match_similarity"] < floor
    assert any("another patient" in w for w in other["warnings"])


def test_a_delayed_scan_simulated_from_a_real_sarcoma_crop_reads_low_without_attenuation_and_moves_the_tumour():
    """realdata.simulate_delayed on real PET/CT STS_015: the AC reconstruction keeps the real PET's level in the
    scored body, the NAC (same calibration, no attenuation correction) reads far lower, and the tumour mask
    follows the simulated motion (its centroid moves by the 16 mm couch shift along z)."""
    from scipy.ndimage import center_of_mass
    from PETDiffusionLib.tasks.dual_timepoint_ac.realdata import REAL_MOTION, simulate_delayed
    case = Path(__file__).resolve().parents[2] / "shared" / "data" / "petct_sts_more" / "STS_015"
    pet = sitk.ReadImage(str(case / "PET_image.nii.gz"), sitk.sitkFloat32)
    ct = sitk.ReadImage(str(case / "CT_image.nii.gz"), sitk.sitkFloat32)
    gtv = sitk.ReadImage(str(case / "PET_mask.nii.gz"))
    sim = simulate_delayed(pet, ct, gtv, seed=0)
    ac, nac = sitk.GetArrayFromImage(sim["ac"]), sitk.GetArrayFromImage(sim["nac"])
    assert sim["ac"].GetSize() == pet.GetSize() and sim["nac"].GetSpacing() == pet.GetSpacing()
    body = sim["body"]
    assert body.sum() > 1000
    real = sitk.GetArrayFromImage(pet)
    ratio = ac[body].mean() / real[body].mean()     # the patient moved, so the same anatomy is compared in the mean only
    assert 0.8 < ratio < 1.25
    assert nac[body].mean() < 0.6 * ac[body].mean()
    g0 = sitk.GetArrayFromImage(sitk.Resample(gtv, pet, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    dz_mm = (center_of_mass(sim["gtv"])[0] - center_of_mass(g0)[0]) * pet.GetSpacing()[2]
    assert abs(dz_mm - REAL_MOTION.shift_mm_xyz[2]) < 6.0


# ------------------------------------------------------------------------------------------------
# the physics method (the default): registration and reprojection attenuation correction

STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "petct_sts_more"


def _real_delayed(case: str, motion=None):
    from PETDiffusionLib.tasks.dual_timepoint_ac.realdata import REAL_MOTION, simulate_delayed
    pet = sitk.ReadImage(str(STS / case / "PET_image.nii.gz"), sitk.sitkFloat32)
    ct = sitk.ReadImage(str(STS / case / "CT_image.nii.gz"), sitk.sitkFloat32)
    return pet, ct, simulate_delayed(pet, ct, None, seed=0, motion=motion or REAL_MOTION)


def test_reprojection_with_the_delayed_attenuation_recovers_the_ac_image_of_a_real_crop():
    """Real PET/CT STS_015, delayed scan simulated with motion: the NAC reprojected and reconstructed
    with the attenuation the delayed scan saw comes within 5 % of the AC reference's body mean and at
    under 0.4 x the body NRMSE of the NAC scaled by the oracle factor (measured 0.0075 vs 0.0272)."""
    from PETDiffusionLib.physics.nac_to_ac import reprojection_ac
    from PETDiffusionLib.quant.metrics import nrmse
    pet, _, sim = _real_delayed("STS_015")
    ref, nac, body = sitk.GetArrayFromImage(sim["ac"]), sitk.GetArrayFromImage(sim["nac"]), sim["body"]
    got = reprojection_ac(nac, sim["mu"], pet.GetSpacing())
    scaled = nac * ref[body].mean() / nac[body].mean()
    e_phys, e_nac = nrmse(ref, got, body), nrmse(ref, scaled, body)
    print("reprojection", e_phys, "scaled NAC", e_nac)
    assert abs(got[body].mean() / ref[body].mean() - 1) < 0.05
    assert e_phys < 0.4 * e_nac
    # without the scatter the NAC keeps subtracted, the image reads high
    high = reprojection_ac(nac, sim["mu"], pet.GetSpacing(), scatter_fraction=0.0)
    assert high[body].mean() > 1.1 * ref[body].mean()


def test_the_ct_registered_to_the_delayed_nac_recovers_the_couch_shift():
    """A pure translation of (8, 6, 16) mm between the scans of real crop STS_015: the registration's
    offset (delayed point -> CT point) is (-8, -6, -16) mm within one PET voxel (5.47 mm) per axis
    (measured -4.4, -5.4, -19.4 on 4, 2 and 1 mm registration grids alike), and plausible."""
    from PETDiffusionLib.phantom.motion import RigidMotion
    from PETDiffusionLib.physics.nac_to_ac import register_ct_to_nac
    _, ct, sim = _real_delayed("STS_015", RigidMotion((8.0, 6.0, 16.0), (0.0, 0.0, 0.0)))
    nac = sitk.GetArrayFromImage(sim["nac"])
    _, info = register_ct_to_nac(sim["nac"], ct, body_contours(nac, "pet"))
    print(info)
    assert np.allclose(info["shift_mm"], (-8.0, -6.0, -16.0), atol=5.47) and info["plausible"]
    from PETDiffusionLib.tasks.dual_timepoint_ac.realdata import registration_error_mm
    assert registration_error_mm(sim, (-8.0, -6.0, -16.0)) == pytest.approx(0.0, abs=1e-6)
    assert registration_error_mm(sim, (0.0, 0.0, 0.0)) == pytest.approx(math.hypot(8.0, 6.0, 16.0), rel=1e-6)
    assert registration_error_mm(sim, info["shift_mm"]) < 6.0


def test_reprojection_refuses_a_nac_with_rectangular_pixels():
    from PETDiffusionLib.physics.nac_to_ac import reprojection_ac
    a = np.ones((2, 8, 8), np.float32)
    with pytest.raises(InputError, match="square"):
        reprojection_ac(a, a * 0.1, (4.0, 5.0, 3.0))


def test_the_default_physics_method_writes_the_ac_pet_on_the_nac_grid_with_the_registration_in_the_manifest(
        case, tiny_model, tmp_path):
    out = tmp_path / "out"
    man = json.loads(run_task("dual-timepoint-ac", {"nac": str(case / "pet_delayed_nac.nii.gz"),
                                                    "ct": str(case / "ct.nii.gz")},
                              {}, out, model_path=str(tiny_model)).read_text())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pet_ac.nii.gz"]
    nac, pet = read_image(case / "pet_delayed_nac.nii.gz"), read_image(out / "pet_ac.nii.gz")
    assert pet.GetSize() == nac.GetSize() and pet.GetOrigin() == nac.GetOrigin()
    assert get_units(pet) == "SUVbw" and is_synthetic(pet)
    assert man["method"] == "physics" and man["synthetic"] is True
    assert man["scatter_fraction"] == 0.35 and man["scatter_fraction_source"].startswith("default")
    assert man["registration"]["plausible"] and len(man["registration"]["shift_mm"]) == 3
    # the phantom's recorded motion: the registration moves the CT back by about the couch shift
    shift = json.loads((case / "case.json").read_text())["simulation"]["delayed"]["motion"]["shift_mm_xyz"]
    assert np.allclose(man["registration"]["shift_mm"], [-v for v in shift], atol=8.0)  # one 8-10 mm voxel
    a, n = sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(nac)
    body = body_contours(n, "pet")
    assert a[body].mean() > 3 * n[body].mean()      # attenuation corrected: far above the NAC


def test_the_scatter_fraction_is_the_users_number_or_0_for_a_scatter_corrected_dicom_nac_else_the_default():
    from PETDiffusionLib.io.dicom import CORRECTED_KEY
    from PETDiffusionLib.physics.nac_to_ac import SCATTER_FRACTION
    from PETDiffusionLib.tasks.dual_timepoint_ac.pipeline import scatter_fraction_of
    img = sitk.Image(4, 4, 2, sitk.sitkFloat32)
    sf, source = scatter_fraction_of(img, "auto")
    assert sf == SCATTER_FRACTION and "no CorrectedImage" in source
    assert scatter_fraction_of(img, "0.2") == (0.2, "parameter")
    img.SetMetaData(CORRECTED_KEY, "DECY\\SCAT\\RAN")
    assert scatter_fraction_of(img, "auto") == (0.0, "DICOM CorrectedImage lists SCAT")
    for bad in ("0.9", "-0.1", "lots"):
        with pytest.raises(InputError, match="scatter fraction"):
            scatter_fraction_of(img, bad)


def test_a_real_dicom_ac_pet_given_as_nac_is_refused_by_its_corrected_image_header(case, tiny_model, tmp_path):
    """The real whole-body PET petwb_sts001 (GE Discovery ST DICOM, CorrectedImage DECY\\ATTN\\SCAT...)."""
    wb = STS.parent / "petwb_sts001" / "PET" / "image"
    _expect_refused({"nac": str(wb), "ct": str(case / "ct.nii.gz")}, tmp_path / "out", tiny_model,
                    "attenuation-corrected .CorrectedImage DECY.ATTN")


# ------------------------------------------------------------------------------------------------
# the recipe's stages_from_model

def test_stages_taken_from_a_model_folder_hold_its_networks_and_name_it(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import load_stage_nets, stage_from_model
    cfg = json.loads(CONFIG.read_text())
    cfg["diffusion"]["channels"] = 8
    sp = network_specs(cfg)
    shipped = load_file(str(tiny_model / "model.safetensors"))
    for stage, names in (("matching", ("g1", "g2")), ("autoencoder", ("autoencoder",))):
        summary = stage_from_model(cfg, tiny_model, stage, tmp_path / stage)
        assert summary["from_model"] == str(tiny_model) and summary["networks"] == list(names)
        nets = load_stage_nets(tmp_path, stage, {n: sp[n] for n in names})
        for n in names:
            for key, value in nets[n].state_dict().items():
                assert torch.equal(value, shipped[f"{n}.{key}"])
        saved = load_file(str(tmp_path / stage / "checkpoint" / "ema.safetensors"))
        assert {k.split(".", 1)[0] for k in saved} == set(names)  # not the denoiser
    # the per-diffusion stages of the folder's own k: its denoiser and its (fine-tuned) autoencoder
    for stage, names in (("diffusion:k2", ("denoiser",)), ("decoder:k2", ("autoencoder",))):
        summary = stage_from_model(cfg, tiny_model, stage, tmp_path / stage.replace(":", "_"))
        assert summary["networks"] == list(names)
        spec = {"denoiser": sp["diffusion:k2"], "autoencoder": sp["autoencoder"]}
        nets = load_stage_nets(tmp_path, stage, {n: spec[n] for n in names})
        for n in names:
            for key, value in nets[n].state_dict().items():
                assert torch.equal(value, shipped[f"{n}.{key}"])
    cfg3 = json.loads(CONFIG.read_text())
    cfg3["diffusion"].update(channels=8, k_values=[3])
    with pytest.raises(InputError, match="k = 3"):  # a k = 2 folder cannot stand in for diffusion k = 3
        stage_from_model(cfg3, tiny_model, "diffusion:k3", tmp_path / "diffusion_k3")
    with pytest.raises(InputError, match="cannot be taken"):
        stage_from_model(cfg, tiny_model, "unet", tmp_path / "unet")
    # a config that builds another autoencoder cannot take the folder's
    other = json.loads(CONFIG.read_text())
    other["autoencoder"]["latent_channels"] = int(other["autoencoder"].get("latent_channels", 4)) + 2
    with pytest.raises(InputError, match="autoencoder"):
        stage_from_model(other, tiny_model, "autoencoder", tmp_path / "other")
    with pytest.raises(InputError, match="not a model folder"):
        stage_from_model(cfg, tmp_path, "matching", tmp_path / "none")


def test_a_stage_continued_from_an_earlier_run_starts_from_its_ema_weights_and_decays_the_lr(tmp_path):
    from safetensors.torch import save_file

    from PETDiffusionLib.training.loop import TrainOptions
    from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import fit_stage, init_from_run
    cfg = json.loads(CONFIG.read_text())
    cfg["threads"], cfg["trainer"] = 1, {"progress_bar": False, "log_every": 1}
    spec = network_specs(cfg)["unet"]
    torch.manual_seed(1)
    earlier = build_network(spec)
    (tmp_path / "earlier" / "unet" / "checkpoint").mkdir(parents=True)
    save_file({f"unet.{k}": v.contiguous() for k, v in earlier.state_dict().items()},
              str(tmp_path / "earlier" / "unet" / "checkpoint" / "ema.safetensors"))
    (tmp_path / "earlier" / "unet" / "summary.json").write_text(json.dumps({"steps": 7}))

    torch.manual_seed(2)
    net = build_network(spec)
    start = init_from_run({"unet": net}, tmp_path / "earlier", "unet")
    assert start["steps"] == 7 and len(start["ema_sha256"]) == 64
    for key, value in net.state_dict().items():
        assert torch.equal(value, earlier.state_dict()[key])

    x = torch.rand(2, 1, 32, 32)
    block = {"steps": 6, "lr": 1e-3, "min_lr_ratio": 0.0, "init_from": str(tmp_path / "earlier")}
    nets = {"unet": build_network(spec)}
    _, summary = fit_stage(cfg, TrainOptions(), tmp_path / "run" / "unet", nets, block,
                           lambda b, n: (F.l1_loss(n["unet"](b), b), {}), lambda step, rng: x, 0.0)
    assert summary["init_from"]["run"] == str(tmp_path / "earlier") and summary["min_lr_ratio"] == 0.0
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "run" / "unet" / "metrics.jsonl").read_text().splitlines()
           if "lr" in json.loads(r)]
    assert lrs and lrs[-1] < 0.2e-3  # cosine to 0 over 6 steps, not the constant 1e-3 of a fresh stage

    other = json.loads(CONFIG.read_text())
    other["unet"]["features"] = [4, 8, 8, 8, 8, 4]
    with pytest.raises(InputError, match="not the network this config builds"):
        init_from_run({"unet": build_network(network_specs(other)["unet"])}, tmp_path / "earlier", "unet")
    with pytest.raises(InputError, match="no trained diffusion_k2 stage"):
        init_from_run({"unet": net}, tmp_path / "earlier", "diffusion_k2")


def _fake_latent_stage(run_dir: Path, cfg: dict, images: bool = False) -> None:
    """A latents stage of 3 random cases (6 slices, 8 x 8 latents, top-3 = slices 0-2) and, with
    ``images``, their prepared 32 x 32 AC and NAC slices (what the decoder and detail stages read)."""
    (run_dir / "latents").mkdir()
    (run_dir / "latents" / "summary.json").write_text(json.dumps({"latent_scale": 1.25}))
    (run_dir / "prepare").mkdir(exist_ok=True)
    lc, fc = cfg["autoencoder"]["latent_channels"], cfg["matching"]["feature_channels"]
    rng = np.random.default_rng(0)
    for c in range(3):
        lat = {key: rng.standard_normal((6, lc, 8, 8)).astype(np.float32) for key in ("ac", "nac", "dac", "dnac")}
        np.savez(run_dir / "latents" / f"case_{c:04d}.npz", feats=rng.standard_normal((6, fc, 8, 8)).astype(np.float32),
                 topk_first=np.tile(np.arange(3), (6, 1)), topk_delayed=np.tile(np.arange(3), (6, 1)),
                 body=np.arange(6), body_d=np.arange(6), **lat)
        if images:
            np.savez(run_dir / "prepare" / f"case_{c:04d}.npz",
                     **{key: rng.uniform(-1, 1, (6, 32, 32)).astype(np.float32)
                        for key in ("ac", "dac", "nac", "dnac", "ct")})


def test_the_decoder_image_term_trains_the_diffusion_through_the_frozen_autoencoder(tmp_path):
    from safetensors.torch import save_file

    from PETDiffusionLib.training.loop import TrainOptions
    from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import train_diffusion
    cfg = json.loads(CONFIG.read_text())
    cfg["threads"], cfg["trainer"] = 1, {"progress_bar": False, "log_every": 1}
    cfg["diffusion"].update(channels=8, steps=3, batch=4, cases_per_batch=2, k_values=[2],
                            prediction="sample", image_l1_weight=1.0)
    sp = network_specs(cfg)
    torch.manual_seed(0)
    ae = build_network(sp["autoencoder"])
    (tmp_path / "autoencoder" / "checkpoint").mkdir(parents=True)
    ae_path = tmp_path / "autoencoder" / "checkpoint" / "ema.safetensors"
    save_file({f"autoencoder.{k}": v.contiguous() for k, v in ae.state_dict().items()}, str(ae_path))
    _fake_latent_stage(tmp_path, cfg)
    folder = tmp_path / "diffusion_k2"
    summary = train_diffusion(cfg, TrainOptions(), tmp_path, folder, 2)
    assert summary["steps"] == 3 and summary["image_l1_weight"] == 1.0
    logs = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines() if "image_l1" in r]
    assert logs and all(r["image_l1"] > 0 and r["latent_l2"] > 0 for r in logs)
    for r in logs:  # the loss is the latent L2 plus the weighted image L1
        assert r["loss"] == pytest.approx(r["latent_l2"] + r["image_l1"], rel=1e-4)
    cfg["diffusion"]["prediction"] = "epsilon"
    with pytest.raises(InputError, match="image_l1_weight needs prediction"):
        train_diffusion(cfg, TrainOptions(), tmp_path, tmp_path / "eps", 2)


def _fake_trained_stages(run_dir: Path, sp: dict) -> dict:
    """Autoencoder, diffusion k = 2 and matching stages of random networks (seed 0), as trained."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    stage_nets = {"autoencoder": {"autoencoder": build_network(sp["autoencoder"])},
                  "diffusion_k2": {"denoiser": build_network(sp["diffusion:k2"])},
                  "matching": {"g1": build_network(sp["g1"]), "g2": build_network(sp["g2"])}}
    for stage, nets in stage_nets.items():
        (run_dir / stage / "checkpoint").mkdir(parents=True)
        save_file({f"{n}.{k}": v.contiguous() for n, net in nets.items() for k, v in net.state_dict().items()},
                  str(run_dir / stage / "checkpoint" / "ema.safetensors"))
        (run_dir / stage / "summary.json").write_text(json.dumps({"steps": 1}))
    return stage_nets


def test_the_decoder_stage_fine_tunes_only_the_decoder_on_the_diffusions_latents_and_the_export_ships_it(tmp_path):
    from safetensors.torch import load_file

    from PETDiffusionLib.training.loop import TrainOptions
    from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import train_decoder
    cfg = json.loads(CONFIG.read_text())
    cfg["threads"], cfg["trainer"] = 1, {"progress_bar": False, "log_every": 1}
    cfg["diffusion"].update(channels=8, batch=4, cases_per_batch=2, k_values=[2], prediction="sample")
    cfg["decoder"] = {"steps": 4, "lr": 1e-3, "batch": 4, "ddim_steps": 2}
    cfg["export"] = str(tmp_path / "export" / "stmdiff-tiny")
    sp = network_specs(cfg)
    stage_nets = _fake_trained_stages(tmp_path, sp)
    _fake_latent_stage(tmp_path, cfg, images=True)
    summary = train_decoder(cfg, TrainOptions(), tmp_path, tmp_path / "decoder_k2", 2)
    assert summary["steps"] == 4 and summary["k"] == 2 and summary["ddim_steps"] == 2
    before = stage_nets["autoencoder"]["autoencoder"].state_dict()
    after = load_file(str(tmp_path / "decoder_k2" / "checkpoint" / "weights.safetensors"))
    assert all(torch.equal(after[f"autoencoder.{k}"], v) for k, v in before.items() if k.startswith("enc."))
    assert any(not torch.equal(after[f"autoencoder.{k}"], v) for k, v in before.items() if k.startswith("dec."))
    losses = [json.loads(r)["loss"] for r in (tmp_path / "decoder_k2" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(r)]
    assert len(losses) == 4 and all(0 < v < 2 for v in losses)   # L1 of [-1, 1] images
    (tmp_path / "decoder_k2" / "summary.json").write_text(json.dumps(summary))

    recipe_card.export(cfg, tmp_path, "test")
    shipped = load_file(str(Path(cfg["export"]) / "model.safetensors"))
    ema = load_file(str(tmp_path / "decoder_k2" / "checkpoint" / "ema.safetensors"))
    assert all(torch.equal(shipped[k], v) for k, v in ema.items())   # the fine-tuned decoder is the model's
    card = json.loads((Path(cfg["export"]) / "card.json").read_text())
    assert card["training"]["stages"]["decoder:k2"]["trained"] == "decoder (the encoder frozen)"

    (tmp_path / "prepare" / "case_0002.npz").rename(tmp_path / "prepare" / "case_0009.npz")
    with pytest.raises(InputError, match="latents and the prepared cases differ"):
        train_decoder(cfg, TrainOptions(), tmp_path, tmp_path / "decoder_again", 2)


def test_the_detail_head_starts_as_the_identity_and_its_stage_trains_it_alone_and_the_model_applies_it(tmp_path):
    from safetensors.torch import load_file

    from PETDiffusionLib.methods.stmdiff.inference import attenuation_correct
    from PETDiffusionLib.models.registry import load_model_folder
    from PETDiffusionLib.training.loop import TrainOptions
    from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import train_detail
    cfg = json.loads(CONFIG.read_text())
    cfg["threads"], cfg["trainer"] = 1, {"progress_bar": False, "log_every": 1}
    cfg["diffusion"].update(channels=8, batch=4, cases_per_batch=2, k_values=[2], prediction="sample")
    cfg["detail"] = {"steps": 5, "lr": 1e-2, "batch": 4, "ddim_steps": 2, "channels": 4, "blocks": 1}
    cfg["export"] = str(tmp_path / "export" / "stmdiff-tiny")
    sp = network_specs(cfg)
    head = build_network(sp["detail:k2"])
    x, nac = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    assert torch.equal(head(x, nac), x)                  # the zero last convolution: the identity at start
    _fake_trained_stages(tmp_path, sp)
    _fake_latent_stage(tmp_path, cfg, images=True)
    summary = train_detail(cfg, TrainOptions(), tmp_path, tmp_path / "detail_k2", 2)
    assert summary["steps"] == 5 and summary["decoder_from"] == "autoencoder"  # no decoder:k2 stage here
    trained = load_file(str(tmp_path / "detail_k2" / "checkpoint" / "weights.safetensors"))
    assert set(trained) == {f"detail.{k}" for k in head.state_dict()}   # the head alone is trained
    assert trained["detail.out.weight"].abs().sum() > 0
    (tmp_path / "detail_k2" / "summary.json").write_text(json.dumps(summary))

    recipe_card.export(cfg, tmp_path, "test")
    networks, card = load_model_folder(Path(cfg["export"]))
    assert card["networks"]["detail"] == sp["detail:k2"] and "detail" in networks
    ema = load_file(str(tmp_path / "detail_k2" / "checkpoint" / "ema.safetensors"))
    for k, v in networks["detail"].state_dict().items():
        assert torch.equal(v, ema[f"detail.{k}"])
    rng = np.random.default_rng(1)
    nac_net, ct_net = (rng.uniform(-1, 1, (4, 32, 32)).astype(np.float32) for _ in range(2))
    with_head = attenuation_correct(networks, card, nac_net, ct_net, k=2, steps=2)["samples"]
    without = attenuation_correct({n: v for n, v in networks.items() if n != "detail"}, card, nac_net, ct_net,
                                  k=2, steps=2)["samples"]
    refined = networks["detail"](torch.from_numpy(without[0])[:, None], torch.from_numpy(nac_net)[:, None])
    assert not np.allclose(with_head, without)
    np.testing.assert_allclose(with_head[0], refined[:, 0].detach().numpy(), atol=1e-5)


def test_a_ct_prior_detail_head_trains_on_the_matched_ct_slices_and_the_model_feeds_it_those_it_matched(tmp_path):
    from safetensors.torch import load_file

    from PETDiffusionLib.methods.stmdiff.inference import attenuation_correct
    from PETDiffusionLib.models.registry import load_model_folder
    from PETDiffusionLib.training.loop import TrainOptions
    from PETDiffusionLib.training.recipes.dual_timepoint_ac.stages import _pair_batch, _SampledLatents, train_detail
    cfg = json.loads(CONFIG.read_text())
    cfg["threads"], cfg["trainer"] = 1, {"progress_bar": False, "log_every": 1}
    cfg["diffusion"].update(channels=8, batch=4, cases_per_batch=2, k_values=[2, 0], prediction="sample")
    cfg["detail"] = {"steps": 5, "lr": 1e-2, "batch": 4, "ddim_steps": 2, "channels": 4, "blocks": 1,
                     "ct_prior": True}
    cfg["export"] = str(tmp_path / "export" / "stmdiff-tiny")
    sp = network_specs(cfg)
    # k = 2 sees its 2 matched CT slices, the no-CT ablation k = 0 none
    assert sp["detail:k2"]["args"]["ct_slices"] == 2 and "ct_slices" not in sp["detail:k0"]["args"]
    head = build_network(sp["detail:k2"])
    x, nac, ct = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 2, 16, 16)
    assert torch.equal(head(x, nac, ct), x)
    with pytest.raises(ValueError, match="2 matched CT slices, got 0"):
        head(x, nac)
    _fake_trained_stages(tmp_path, sp)
    _fake_latent_stage(tmp_path, cfg, images=True)
    # the batches carry the CT slices the condition matched (top-k of the latents stage)
    batches = _SampledLatents(cfg, tmp_path, 2, cfg["detail"], "detail")
    rng = np.random.default_rng(3)
    z, target, nac_b, ct_b = batches(0, np.random.default_rng(3))
    picks, *_ = _pair_batch(batches.latents, batches.block, rng, 2)  # the same draw as the batch's
    ci, idx, key = picks[0]
    tk = batches.latents[ci]["topk_delayed" if key == "dac" else "topk_first"][idx][:, :2]
    np.testing.assert_array_equal(ct_b[:len(idx)].numpy(), batches.images[ci]["ct"][tk])
    assert ct_b.shape == (4, 2, 32, 32)

    summary = train_detail(cfg, TrainOptions(), tmp_path, tmp_path / "detail_k2", 2)
    assert summary["steps"] == 5 and summary["ct_slices"] == 2
    trained = load_file(str(tmp_path / "detail_k2" / "checkpoint" / "weights.safetensors"))
    assert trained["detail.inp.weight"].shape[1] == 4          # decoded, NAC and 2 CT slices
    (tmp_path / "detail_k2" / "summary.json").write_text(json.dumps(summary))
    recipe_card.export(cfg, tmp_path, "test")
    networks, card = load_model_folder(Path(cfg["export"]))
    assert card["networks"]["detail"] == sp["detail:k2"] and "matched first-scan CT" in card["detail_head"]

    gen = np.random.default_rng(1)
    nac_net, ct_net = (gen.uniform(-1, 1, (4, 32, 32)).astype(np.float32) for _ in range(2))
    res = attenuation_correct(networks, card, nac_net, ct_net, k=2, steps=2)
    without = attenuation_correct({n: v for n, v in networks.items() if n != "detail"}, card, nac_net, ct_net,
                                  k=2, steps=2)["samples"]
    matched = torch.from_numpy(ct_net[res["topk"][:, :2]])
    refined = networks["detail"](torch.from_numpy(without[0])[:, None], torch.from_numpy(nac_net)[:, None], matched)
    np.testing.assert_allclose(res["samples"][0], refined[:, 0].detach().numpy(), atol=1e-5)
    # other CT slices give another image: the head reads the CT it is handed
    other = networks["detail"](torch.from_numpy(without[0])[:, None], torch.from_numpy(nac_net)[:, None],
                               torch.from_numpy(ct_net[::-1].copy()[:, None].repeat(2, 1)))
    assert not np.allclose(res["samples"][0], other[:, 0].detach().numpy(), atol=1e-4)
