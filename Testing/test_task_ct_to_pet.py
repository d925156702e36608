"""ct-to-pet (CPDM): spec and CLI, the maps, the SUV scaling, end to end with a tiny random model,
bad inputs, and the training recipe's stages. No real model is trained here: the model folders are
built from randomly initialised small networks, and the recipe runs a few steps of tiny networks on
two 6-slice analytic CTs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from PETDiffusionLib.cli.main import build_parser, main
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import get_units, is_synthetic, read_image, resample_to, same_grid, write_image
from PETDiffusionLib.methods.cpdm import intensities as cpdm
from PETDiffusionLib.methods.cpdm import transforms
from PETDiffusionLib.methods.cpdm.latents import ct_stacks, neighbour_indices
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import load_model_folder, resolve_model, save_model_folder, sha256_file
from PETDiffusionLib.physics.attenuation import hu_to_mu
from PETDiffusionLib.progress import NULL_PROGRESS
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.ct_to_pet import evaluate as ctp_evaluate
from PETDiffusionLib.tasks.ct_to_pet import pipeline, spec as ctp_spec
from PETDiffusionLib.tasks.ct_to_pet.bench import simple_ct
from PETDiffusionLib.tasks.runner import run_task
from PETDiffusionLib.training.loop import TrainOptions
from PETDiffusionLib.training.recipes import ct_to_pet as recipe
from PETDiffusionLib.training.recipes.ct_to_pet import card as recipe_card, data as recipe_data, stages as recipe_stages

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ct_to_pet.json"


def tiny_config() -> dict:
    cfg = json.loads(CONFIG.read_text())
    cfg["autoencoder"].update(channels=[8, 8, 8])
    cfg["attention"].update(features=[4, 4, 8, 8, 8, 4])
    cfg["bridge"].update(channels=[8, 8, 16])
    cfg["export"] = "tiny-cpdm"
    return cfg


def make_tiny_model(folder: Path, variant: str = "cpdm") -> Path:
    """A model folder with the task's real card layout and randomly initialised tiny networks."""
    torch.manual_seed(0)
    cfg = tiny_config()
    sp = recipe_stages.network_specs(cfg)
    stage = "regression" if variant == "regression" else f"bridge:{variant}"
    nets = {"autoencoder": build_network(sp["autoencoder"]), "attention": build_network(sp["attention"]),
            "denoiser": build_network(sp[stage])}
    s, m = recipe_stages.VARIANTS.get(variant, (True, True))
    floor = {c: float(i) * 0.5 for i, c in enumerate(cpdm.TISSUE_CLASSES)}
    card = recipe_card.model_card(cfg, variant, s, m, {"latent_scale": 1.0}, floor, {}, "test")
    card["networks"] = {"autoencoder": sp["autoencoder"], "attention": sp["attention"], "denoiser": sp[stage]}
    return save_model_folder(folder, nets, card)


def tiny_ct(tmp_path: Path, name: str = "ct.nii.gz", spacing=(5.0, 4.5, 6.0), flip: bool = True) -> Path:
    img = simple_ct((12, 40, 44), spacing)
    if flip:  # a non-LPS orientation: the task must return results on this grid all the same
        img.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        img.SetOrigin((100.0, -50.0, 20.0))
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-cpdm")


# ------------------------------------------------------------------------------------------------

def test_spec_declares_ct_input_parameters_and_synthetic_outputs():
    spec = ctp_spec.SPEC
    assert spec.id == "ct-to-pet"
    assert [i.name for i in spec.inputs] == ["ct", "organs"]
    assert spec.inputs[0].required and spec.inputs[0].units == "HU"
    assert not spec.inputs[1].required and spec.inputs[1].is_label
    assert {p.name for p in spec.parameters} == {"kvp", "steps", "samples", "seed"}
    outs = {o.name: o for o in spec.outputs}
    assert outs["pet_synthetic"].filename == "pet_synthetic.nii.gz"
    assert outs["pet_synthetic"].units == "SUVbw" and outs["pet_synthetic"].synthetic
    assert outs["uncertainty"].optional and outs["report"].optional
    assert set(outs) >= {"attention_map", "attenuation_map", "organs_csv"}


def test_cli_flags_come_from_the_spec():
    args = build_parser().parse_args(["run", "ct-to-pet", "--ct", "a.nii.gz", "--out", "o",
                                      "--kvp", "100", "--steps", "7", "--samples", "3", "--seed", "5"])
    assert (args.ct, args.out) == ("a.nii.gz", "o")
    assert (args.param_kvp, args.param_steps, args.param_samples, args.param_seed) == (100.0, 7, 3, 5)


def test_attenuation_map_matches_physics_md_section3():
    # PHYSICS.md §3 check values at 120 kVp (Carney bilinear)
    hu = np.array([0.0, -850.0, 55.0, 700.0])
    assert np.allclose(hu_to_mu(hu, 120, "carney"), [0.0960, 0.0144, 0.1009, 0.1338], atol=1e-4)
    # CPDM's M_mu = exp(-mu), Abella trilinear at 120 kVp: mu = 0.093 + 9.3e-5 HU below 0 and
    # 0.093 + 4.71e-5 HU from 0 to 1000 HU (PHYSICS.md §3)
    expected_mu = [0.093, 0.093 - 9.3e-5 * 850, 0.093 + 4.71e-5 * 55, 0.093 + 4.71e-5 * 700]
    cond = cpdm.attenuation_condition(hu, 120)
    m_mu = cond / cpdm.MU_MAP_GAIN + cpdm.MU_MAP_CENTRE
    assert np.allclose(m_mu, np.exp(-np.array(expected_mu)), atol=1e-5)


def test_pet_scaling_inverts_exactly_and_keeps_suv_40_unclipped():
    suv = np.array([0.0, 0.01, 0.5, 1.9, 10.0, 24.0, 40.0, 100.0])
    p = cpdm.pet_to_net(suv)
    assert p[0] == pytest.approx(-1.0) and p[4] == pytest.approx(1.0)
    assert p[6] == pytest.approx(2 * math.log(41) / math.log(11) - 1, rel=1e-6)  # 2.097, above 1
    assert np.all(np.diff(p) > 0)  # strictly increasing: no clipping anywhere
    assert np.allclose(cpdm.net_to_pet(p), suv, rtol=1e-5, atol=1e-6)
    t = torch.tensor(suv, dtype=torch.float64)
    assert torch.allclose(cpdm.net_to_pet(cpdm.pet_to_net(t)), t, rtol=1e-12)


def test_tissue_floor_classes_follow_hu_ranges():
    ct = np.full((1, 9, 9), -1000.0)
    ct[0, 1:8, 1:8] = -80.0     # fat ring
    ct[0, 2:7, 2:7] = 40.0      # soft tissue
    ct[0, 3, 3], ct[0, 5, 5], ct[0, 4, 4] = -860.0, 500.0, 55.0
    cls = cpdm.tissue_classes(ct)
    names = cpdm.TISSUE_CLASSES
    assert names[cls[0, 0, 0]] == "outside_body"
    assert names[cls[0, 1, 1]] == "fat" and names[cls[0, 2, 2]] == "soft_tissue"
    assert names[cls[0, 3, 3]] == "lung" and names[cls[0, 5, 5]] == "bone"


def test_task_end_to_end_on_tiny_ct_writes_every_output_on_the_ct_grid(tmp_path, tiny_model):
    ct_path = tiny_ct(tmp_path)
    organs = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path))) > 0).astype(np.uint8))
    organs.CopyInformation(sitk.ReadImage(str(ct_path)))
    org_path = tmp_path / "organs.nii.gz"
    sitk.WriteImage(organs, str(org_path))
    out = tmp_path / "out"
    manifest = run_task("ct-to-pet", {"ct": str(ct_path), "organs": str(org_path)},
                        {"steps": 3, "samples": 2, "seed": 1}, out, model_path=str(tiny_model))
    man = json.loads(manifest.read_text())
    ct = read_image(ct_path)
    for name in ("pet_synthetic", "attention_map", "attenuation_map", "uncertainty", "organs_csv", "report"):
        assert name in man["outputs"], name
        assert (out / man["outputs"][name]["file"]).is_file()
    for name in ("pet_synthetic", "attention_map", "attenuation_map", "uncertainty"):
        img = read_image(out / man["outputs"][name]["file"])
        assert same_grid(img, ct), name
    pet = read_image(out / "pet_synthetic.nii.gz")
    assert is_synthetic(pet) and get_units(pet) == "SUVbw"
    assert is_synthetic(read_image(out / "uncertainty.nii.gz"))
    arr = sitk.GetArrayFromImage(pet)
    assert np.isfinite(arr).all() and arr.min() >= 0
    assert man["synthetic"] is True and man["outputs"]["pet_synthetic"]["synthetic"] is True
    assert man["model_id"] == "tiny-cpdm"
    assert man["kvp"] == 120 and man["kvp_source"].startswith("default")  # NIfTI CT: no kVp
    assert "not for diagnosis" in man["intended_use"]
    # the attenuation map is exp(-mu) of the input CT itself, voxel by voxel
    mmap = sitk.GetArrayFromImage(read_image(out / "attenuation_map.nii.gz"))
    hu = sitk.GetArrayFromImage(ct)
    assert np.allclose(mmap, np.exp(-hu_to_mu(hu, 120, "abella")), atol=1e-6)


def test_same_seed_same_output_and_kvp_parameter_is_used(tmp_path, tiny_model):
    ct_path = tiny_ct(tmp_path, flip=False)
    a = run_task("ct-to-pet", {"ct": str(ct_path)}, {"steps": 2, "seed": 4, "kvp": 80}, tmp_path / "a",
                 model_path=str(tiny_model))
    b = run_task("ct-to-pet", {"ct": str(ct_path)}, {"steps": 2, "seed": 4, "kvp": 80}, tmp_path / "b",
                 model_path=str(tiny_model))
    pa = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "pet_synthetic.nii.gz")))
    pb = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "pet_synthetic.nii.gz")))
    assert np.array_equal(pa, pb)
    man = json.loads(a.read_text())
    assert man["kvp"] == 80 and man["kvp_source"] == "parameter"
    assert "uncertainty" not in man["outputs"]  # one sample: no uncertainty map


def test_pet_given_as_ct_is_refused_naming_the_file(tmp_path, tiny_model):
    pet = sitk.GetImageFromArray(np.random.default_rng(0).gamma(2.0, 0.5, (10, 32, 32)).astype(np.float32))
    path = tmp_path / "pet_as_ct.nii.gz"
    sitk.WriteImage(pet, str(path))
    with pytest.raises(InputError, match="pet_as_ct.nii.gz.*(does not look like a CT|PET)"):
        run_task("ct-to-pet", {"ct": str(path)}, {}, tmp_path / "out", model_path=str(tiny_model))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_ct_labelled_suv_is_refused(tmp_path, tiny_model):
    path = tmp_path / "labelled.nii.gz"
    write_image(simple_ct((8, 32, 32)), path, units="SUVbw")
    with pytest.raises(InputError, match="labelled 'SUVbw'"):
        run_task("ct-to-pet", {"ct": str(path)}, {}, tmp_path / "out", model_path=str(tiny_model))


def test_ct_with_nans_is_refused(tmp_path, tiny_model):
    img = simple_ct((8, 32, 32))
    arr = sitk.GetArrayFromImage(img)
    arr[2, 5, 5] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    path = tmp_path / "nan_ct.nrrd"  # NRRD keeps NaNs (ITK's NIfTI reader turns them into 0)
    sitk.WriteImage(bad, str(path))
    with pytest.raises(InputError, match="nan_ct.nrrd.*1 NaN"):
        run_task("ct-to-pet", {"ct": str(path)}, {}, tmp_path / "out", model_path=str(tiny_model))


def test_regression_baseline_and_floor_run_through_the_same_pipeline(tmp_path):
    folder = make_tiny_model(tmp_path / "reg", "regression")
    nets, card = pipeline.load_model(folder)
    ct = simple_ct((8, 32, 36), (4.0, 4.0, 4.0))
    out = pipeline.synthesize(ct, nets, card, steps=5)
    assert same_grid(out["pet"], ct)
    floor = sitk.GetArrayFromImage(ctp_evaluate.floor_prediction(ct, card))
    # tiny card floor: class i -> 0.5 i; air outside is class 0, the lungs class 1, bone class 4
    hu = sitk.GetArrayFromImage(ct)
    assert np.all(floor[hu > 300] == 2.0) and floor[0, 0, 0] == 0.0


def test_shipped_model_loads_and_its_hash_checks():
    folder = resolve_model(ctp_spec.MODEL_ID)
    card = json.loads((folder / "card.json").read_text())
    assert card["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert card["task"] == "ct-to-pet" and "not for diagnosis" in card["intended_use"]
    nets, card2 = load_model_folder(ctp_spec.MODEL_ID)
    assert set(nets) == {"autoencoder", "attention", "denoiser"}
    assert card2["preprocessing"]["working_spacing_mm"] == [4.0, 4.0, 5.0]
    # the card states the autoencoder's reconstruction error (issue 7)
    rec = card["training"]["stages"]["autoencoder"]["reconstruction"]
    assert rec["pet_mae_suv_body"] > 0 and rec["ct_mae_hu_body"] > 0
    n_params = sum(p.numel() for p in nets["denoiser"].parameters())
    assert n_params < 1_000_000  # a small denoiser (the CPU budget of issue 7)


def test_real_dicom_ct_reads_kvp_from_the_header_and_returns_on_its_512_grid(tmp_path, tiny_model,
                                                                             shared_data):
    dicom_dir = shared_data / "ct_totalseg_example" / "tests" / "reference_files" / "example_ct_dicom"
    manifest = run_task("ct-to-pet", {"ct": str(dicom_dir)}, {"steps": 2}, tmp_path / "out",
                        model_path=str(tiny_model))
    man = json.loads(manifest.read_text())
    assert man["kvp"] == 120 and man["kvp_source"] == "DICOM (0018,0060) KVP"
    ct = read_image(dicom_dir)
    pet = read_image(tmp_path / "out" / "pet_synthetic.nii.gz")
    assert pet.GetSize() == (512, 512, 20) and same_grid(pet, ct, tol=1e-3)
    assert is_synthetic(pet)


# ------------------------------------------------------------------------------------------------
# CT-domain augmentation of the training recipe (issue 7, real CT)

def _aug_inputs():
    ct = sitk.GetArrayFromImage(simple_ct((6, 64, 64), (4.0, 4.0, 5.0), seed=3)).astype(np.float32)
    pet = np.where(ct > 30, 2.0, 0.5).astype(np.float32) * (ct > -500)
    return ct, pet


def test_augmentation_keeps_shapes_dtype_and_a_sane_hu_range():
    ct, pet = _aug_inputs()
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = transforms.augment_params(rng, {"enabled": True, "fov_crop_p": 1.0})
        a, (b,) = transforms.augment_ct(ct, [pet], p)
        assert a.shape == ct.shape and b.shape == pet.shape
        assert a.dtype == np.float32 and b.dtype == np.float32
        assert a.min() >= cpdm.CT_HU_MIN and a.max() <= cpdm.CT_HU_MAX
        assert b.min() >= 0.0 and b.max() <= pet.max() + 1e-4  # bilinear: no new extremes
        # soft tissue stays soft tissue: noise <= 25 HU, scale 3 %, offset 15 HU (AUG_DEFAULTS)
        tissue = (ct > 0) & (ct < 100) & (a > cpdm.CT_HU_MIN)
        assert abs(float(np.median(a[tissue]) - np.median(ct[tissue]))) < 60


def test_augmentation_is_deterministic_for_a_seed_and_differs_between_seeds():
    ct, pet = _aug_inputs()
    draw = lambda seed: transforms.augment_ct(ct, [pet], transforms.augment_params(np.random.default_rng(seed),
                                                                           {"enabled": True}))
    (a1, (b1,)), (a2, (b2,)), (a3, _) = draw(5), draw(5), draw(6)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert not np.array_equal(a1, a3)


def test_augmentation_identity_parameters_change_nothing():
    ct, pet = _aug_inputs()
    p = {"noise": 0.0, "blur": 0.0, "scale": 1.0, "offset": 0.0, "zoom": 1.0, "shift": np.zeros(2),
         "flip": False, "crop": np.zeros(4), "noise_seed": 0}
    a, (b,) = transforms.augment_ct(ct, [pet], p)
    # atol 1 HU: voxels within 1 HU of -1024 are snapped to exact air (augment_ct)
    assert np.allclose(a, np.clip(ct, cpdm.CT_HU_MIN, cpdm.CT_HU_MAX), atol=1.0)
    assert np.allclose(b, pet, atol=1e-5)
    # a left-right flip moves the CT and the paired PET alike
    a, (b,) = transforms.augment_ct(ct, [pet], {**p, "flip": True})
    assert np.allclose(a, np.clip(ct, cpdm.CT_HU_MIN, None)[..., ::-1], atol=1.0) and np.allclose(b, pet[..., ::-1], atol=1e-5)


def test_truncated_field_of_view_is_air_in_ct_and_zero_in_pet():
    ct, pet = _aug_inputs()
    p = {"noise": 10.0, "blur": 0.5, "scale": 1.0, "offset": 5.0, "zoom": 1.0, "shift": np.zeros(2),
         "flip": False, "crop": np.array([0.0, 0.0, 0.25, 0.0]), "noise_seed": 1}
    a, (b,) = transforms.augment_ct(ct, [pet], p)
    assert np.all(a[..., :16] == cpdm.CT_HU_MIN) and np.all(b[..., :16] == 0.0)
    assert (a[..., 16:] > -500).any()


def test_augmentation_pairs_a_25d_stack_with_its_single_slice_mask():
    """The attention stage augments a (2c+1)-slice CT stack together with its one-slice target."""
    ct, pet = _aug_inputs()
    p = transforms.augment_params(np.random.default_rng(2), {"enabled": True, "fov_crop_p": 1.0})
    a, (m,) = transforms.augment_ct(ct[:3], [(pet[1:2] > 1).astype(np.float32)], p)
    assert a.shape == (3, 64, 64) and m.shape == (1, 64, 64)


def test_summary_counts_cases_beyond_15_percent_per_organ():
    rows = [{"mae_suv": 0.1, "psnr_db": 30.0, "ssim": 0.9, "seconds": 1.0, "organ_abs_error_pct_mean": abs(e),
             "organs": {"liver": {"error_pct": e}}} for e in (-20.0, 10.0, 16.0, -5.0)]
    liver = ctp_evaluate._summarise(rows)["organ_error_pct"]["liver"]
    assert liver["cases_beyond_15pct"] == 2 and liver["cases"] == 4
    assert math.isclose(liver["mean_signed"], 0.25) and math.isclose(liver["mean_abs"], 12.75)


def test_real_pair_crop_goes_to_the_working_grid_with_air_outside_the_pet(shared_data):
    # STS_001 is evaluation data (never trained on); this only checks the geometry of the reader
    ct, pet = recipe_data.real_pair_arrays(shared_data / "petct_sts" / "nifti" / "STS_001", (4.0, 4.0, 5.0), 128)
    assert ct.shape == pet.shape and ct.shape[1:] == (128, 128)
    assert ct.min() >= cpdm.CT_HU_MIN and pet.min() >= 0.0
    body = ct > cpdm.BODY_HU
    assert body.any() and pet[body].mean() > 0.2  # real FDG soft tissue, not empty
    # the 5 cm crop is padded to 128 x 128 with air in the CT and 0 SUV in the PET
    assert np.all(ct[:, 0, :] == cpdm.CT_HU_MIN) and np.all(pet[:, 0, :] == 0.0)


# ------------------------------------------------------------------------------------------------
# the pipeline's parts, as tasks/runner.py calls them

def test_predict_returns_the_specs_image_outputs_on_the_ct_grid(tmp_path, tiny_model):
    ct = read_image(tiny_ct(tmp_path))
    ctx = RunContext(out_dir=tmp_path, progress=NULL_PROGRESS, device=torch.device("cpu"))
    params = {"kvp": None, "steps": 2, "samples": 2, "seed": 0}
    pipeline.check_inputs({"ct": ct}, params, ctx)
    model = pipeline.load_model(tiny_model)
    out = pipeline.predict({"ct": ct}, params, model, ctx)
    volumes = {o.name for o in ctp_spec.SPEC.outputs if o.kind == "volume"}
    assert set(out) == volumes == {"pet_synthetic", "attention_map", "attenuation_map", "uncertainty"}
    for name, img in out.items():
        assert same_grid(img, ct), name
    att = sitk.GetArrayFromImage(out["attention_map"])
    assert att.min() >= 0.0 and att.max() <= 1.0  # a probability
    assert sitk.GetArrayFromImage(out["uncertainty"]).min() >= 0.0
    assert ctx.manifest_extra["model_id"] == "tiny-cpdm" and ctx.manifest_extra["kvp"] == 120.0
    # no organ map: the report writes nothing
    assert pipeline.report({"ct": ct}, out, params, model, ctx) == {}
    assert list(tmp_path.glob("*.csv")) == []


def test_2p5d_stacks_repeat_the_edge_slice_and_never_cross_cases():
    vol = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    case = np.array([0, 0, 0, 1, 1])
    st = ct_stacks(vol, case, 1)
    # slice 2 is the last of case 0: its upper neighbour is itself; slice 3 the first of case 1
    assert st[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]
    below, above = neighbour_indices(case, np.arange(5), 1)
    assert below.tolist() == [0, 0, 1, 3, 3] and above.tolist() == [1, 2, 2, 4, 4]


# ------------------------------------------------------------------------------------------------
# the training recipe: every stage through training.loop.Trainer, a few steps of tiny networks

def _tiny_cohort(folder: Path) -> Path:
    """Two 6-slice analytic CTs with a PET that is high in soft tissue (so the attention mask has
    positives), on the working grid already (4 x 4 x 5 mm)."""
    for i in range(2):
        case = folder / f"case_{i:04d}"
        case.mkdir(parents=True)
        ct = simple_ct((6, 32, 32), (4.0, 4.0, 5.0), seed=i)
        hu = sitk.GetArrayFromImage(ct)
        pet = sitk.GetImageFromArray(np.where(hu > 30, 4.0, 0.5).astype(np.float32) * (hu > -500))
        pet.CopyInformation(ct)
        sitk.WriteImage(ct, str(case / "ct.nii.gz"))
        sitk.WriteImage(pet, str(case / "pet_ac.nii.gz"))
        (case / "case.json").write_text(json.dumps({"split": "train"}))
    return folder


def _recipe_config(tmp: Path, bridge_steps: int = 4, augment: bool = True) -> dict:
    cfg = json.loads((CONFIG.parent / "ct_to_pet_v2.json").read_text())
    cfg.update(cohort=str(tmp / "cohort"), run_dir=str(tmp / "run"), export=str(tmp / "tiny-cpdm"),
               slice_size=32, trainer={"progress_bar": False, "log_every": 1})
    cfg["augment"]["enabled"] = augment
    cfg["autoencoder"].update(channels=[8, 8, 8], steps=3, batch=2, crop=16)
    cfg["attention"].update(features=[4, 4, 8, 8, 8, 4], steps=3, batch=2, crop=32)
    cfg["bridge"].update(channels=[8, 8, 16], steps=bridge_steps, batch=4)
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    _tiny_cohort(tmp / "cohort")
    cfg = _recipe_config(tmp)
    assert recipe.train(cfg, TrainOptions(config_path="configs/ct_to_pet_v2.json")) == 0
    return tmp, cfg


def test_recipe_runs_every_stage_through_the_trainer_and_exports_models_the_task_runs(tiny_run, tmp_path):
    tmp, cfg = tiny_run
    run = Path(cfg["run_dir"])
    for stage in ("prepare", "autoencoder", "attention", "latents", "bridge:cpdm", "bridge:no_sigma",
                  "bridge:no_mu", "regression", "export"):
        assert (run / stage.replace(":", "_") / "summary.json").is_file(), stage
    for stage, steps in (("autoencoder", 3), ("attention", 3), ("bridge_cpdm", 4), ("regression", 4)):
        summary = json.loads((run / stage / "summary.json").read_text())
        assert summary["steps"] == steps, stage
        assert (run / stage / "checkpoint" / "ema.safetensors").is_file()  # the Trainer's layout
        lines = (run / stage / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == list(range(1, steps + 1))
        assert all(json.loads(x)["lr"] == cfg[stage.split("_")[0] if stage != "regression" else "bridge"]["lr"]
                   for x in lines)  # constant learning rate
    ae = json.loads((run / "autoencoder" / "summary.json").read_text())["reconstruction"]
    assert ae["ct_mae_hu_body"] > 0 and ae["pet_mae_suv_body"] > 0
    lat = json.loads((run / "latents" / "summary.json").read_text())
    assert lat["copies"] == 2 and lat["slices"] == 2 * 2 * 6  # two augmented copies of 2 x 6 slices
    # the exported CPDM folder runs through the task; its card cites the one training command
    card = json.loads((tmp / "tiny-cpdm" / "card.json").read_text())
    assert card["training"]["command"] == "petdiffusion train ct-to-pet --config configs/ct_to_pet_v2.json"
    assert card["networks"]["denoiser"]["class"] == "PETDiffusionLib.methods.cpdm.networks.BridgeUNet"
    assert card["preprocessing"]["latent_scale"] == pytest.approx(lat["latent_scale"])
    assert sorted(p.name for p in (run / "models").iterdir()) == ["cpdm-no-mu", "cpdm-no-sigma",
                                                                  "cpdm-regression"]
    manifest = run_task("ct-to-pet", {"ct": str(Path(cfg["cohort"]) / "case_0000" / "ct.nii.gz")},
                        {"steps": 2}, tmp_path / "out", model_path=str(tmp / "tiny-cpdm"))
    assert json.loads(manifest.read_text())["model_id"] == "tiny-cpdm"


def test_a_second_call_of_the_recipe_skips_the_finished_stages(tiny_run):
    tmp, cfg = tiny_run
    run = Path(cfg["run_dir"])
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert recipe.train(cfg, TrainOptions(config_path="configs/ct_to_pet_v2.json")) == 0
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing trained, encoded or exported again


def test_a_resumed_stage_ends_with_the_weights_of_an_uninterrupted_one(tiny_run, tmp_path):
    tmp, cfg = tiny_run
    run = tmp_path / "run"
    for stage in ("prepare", "autoencoder", "attention", "latents"):  # the stages before the bridge
        shutil.copytree(Path(cfg["run_dir"]) / stage, run / stage)
    short = {**_recipe_config(tmp, bridge_steps=2), "run_dir": str(run)}
    recipe.train(short, TrainOptions(stages=["bridge:cpdm"]))
    assert json.loads((run / "bridge_cpdm" / "summary.json").read_text())["steps"] == 2
    with pytest.raises(InputError, match="--resume"):  # a checkpoint is never overwritten silently
        recipe.train({**short, "bridge": {**short["bridge"], "steps": 4}}, TrainOptions(stages=["bridge:cpdm"]))
    recipe.train({**short, "bridge": {**short["bridge"], "steps": 4}},
                 TrainOptions(stages=["bridge:cpdm"], resume=True))
    for name in ("weights", "ema"):
        a = load_file(str(Path(cfg["run_dir"]) / "bridge_cpdm" / "checkpoint" / f"{name}.safetensors"))
        b = load_file(str(run / "bridge_cpdm" / "checkpoint" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# ------------------------------------------------------------------------------------------------
# issue 14: the training canvas

def test_small_ct_is_padded_with_air_to_the_training_slice_size(tmp_path, tiny_model):
    """A CT whose working slices are smaller than the training slices reaches the networks on the
    training canvas (air around it), and canvas=False (the evaluation's ablation) does not; both
    return on the CT's grid."""
    nets, card = pipeline.load_model(tiny_model)
    least = card["preprocessing"]["slice_size_train"]
    ct = read_image(tiny_ct(tmp_path))
    seen: list[tuple[int, ...]] = []
    hook = nets["attention"].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    try:
        padded = pipeline.synthesize(ct, nets, card, steps=2, seed=0)
        on_canvas = list(seen)
        seen.clear()
        bare = pipeline.synthesize(ct, nets, card, steps=2, seed=0, canvas=False)
    finally:
        hook.remove()
    assert on_canvas and all(h >= least and w >= least for h, w in on_canvas)
    assert seen and all(h < least and w < least for h, w in seen)
    for out in (padded, bare):
        assert same_grid(out["pet"], ct) and same_grid(out["std"], ct)
    # GroupNorm sees other statistics on the two canvases: the outputs differ
    assert not np.allclose(sitk.GetArrayFromImage(padded["pet"]), sitk.GetArrayFromImage(bare["pet"]))


def test_shipped_model_on_the_cropped_real_ct_gives_organ_uptake_only_on_the_training_canvas(shared_data):
    """The real TotalSegmentator CT (303 mm in-plane, the body filling the slice) with the shipped
    weights: on the training canvas the liver reads as FDG liver does (1.3-3.0 SUV, PHYSICS.md §5.1),
    without it the whole CT became a ~0.5 SUV haze (the failure issue 14 reported)."""
    ref = shared_data / "ct_totalseg_example" / "tests" / "reference_files"
    ct = read_image(ref / "example_ct_sm.nii.gz")
    lab, names = ctp_evaluate.totalseg_labels(
        ref, shared_data / "ct_totalseg_example" / "totalsegmentator_total_class_map.json", ct)
    liver = np.isin(lab, [k for k, v in names.items() if v == "liver"])
    nets, card = pipeline.load_model(None)
    means = {c: float(sitk.GetArrayFromImage(pipeline.synthesize(ct, nets, card, steps=5, seed=0,
                                                                 canvas=c)["pet"])[liver].mean())
             for c in (True, False)}
    assert 1.3 <= means[True] <= 3.0
    assert means[False] < 0.8


def test_real_pairs_mode_scores_cpdm_the_ablation_and_the_floor_against_the_real_pet(tmp_path, tiny_model,
                                                                                   shared_data):
    out = tmp_path / "real_pairs.json"
    assert main(["evaluate", "ct-to-pet", "--mode", "real-pairs", "--real-data", str(shared_data),
                 "--real-sts-more", "STS_042", "--model", str(tiny_model), "--steps", "2",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["cases"] == ["STS_042"]
    row = res["per_case"][0]
    # the floor's figures are those of its own prediction against the real PET, in the CT's body
    case = shared_data / "petct_sts_more" / "STS_042"
    ct = read_image(case / "CT_image.nii.gz")
    real = sitk.GetArrayFromImage(resample_to(read_image(case / "PET_image.nii.gz"), ct))
    body = cpdm.body_mask(sitk.GetArrayFromImage(ct).astype(np.float32))
    floor = sitk.GetArrayFromImage(ctp_evaluate.floor_prediction(ct, json.loads((tiny_model / "card.json").read_text())))
    assert row["tissue_floor"]["mae_suv_body"] == pytest.approx(float(np.abs(real - floor)[body].mean()), rel=1e-5)
    for m in ("cpdm", "cpdm_without_canvas"):
        assert 0 < row[m]["mae_suv_body"] < 50 and -1 <= row[m]["ssim_body"] <= 1
    assert res["mean"]["cpdm"]["mae_suv_body"] == pytest.approx(row["cpdm"]["mae_suv_body"])
