"""The restore task (MFdiff, issue 15): networks, guide handling, the end-to-end run on the PET's
grid, and the bad inputs the issue lists. Tiny random networks (never trained here) and, for the
shipped model, its card and weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import (array_and_image, get_units, is_synthetic, read_image,
                                       resample_to, write_image)
from PETDiffusionLib.methods.mfdiff.blocks import DetailBlock, GlobalBlock, InvertedResidual
from PETDiffusionLib.methods.mfdiff.networks import (FusionModule, MFdiffUNet, MUNet, guide_to_x,
                                                     pet_to_x, x_to_pet)
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import save_model_folder
from PETDiffusionLib.tasks.registry import task_spec
from PETDiffusionLib.tasks.restore import pipeline
from PETDiffusionLib.tasks.restore.spec import SPEC
from PETDiffusionLib.tasks.runner import run_task
from PETDiffusionLib.training.recipes.restore import RestoreConfig, network_specs, stages
from PETDiffusionLib.training.loop import TrainOptions

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "petct_sts_more"
NET = "PETDiffusionLib.methods.mfdiff.networks"


# ------------------------------------------------------------------------------------ images
def _body(shape_zyx, spacing_xyz, origin_xyz, shift_mm=(0.0, 0.0)):
    z, y, x = np.mgrid[tuple(slice(0, n) for n in shape_zyx)].astype(np.float32)
    py = origin_xyz[1] + y * spacing_xyz[1] - shift_mm[1]
    px = origin_xyz[0] + x * spacing_xyz[0] - shift_mm[0]
    pz = origin_xyz[2] + z * spacing_xyz[2]
    return py, px, pz


def make_pet(seed=0) -> sitk.Image:
    """48x48x24 low-dose PET at 4x4x5 mm: body ellipse (SUV 1), a liver (2.2), a lesion (8)."""
    rng = np.random.default_rng(seed)
    sp, org = (4.0, 4.0, 5.0), (-96.0, -96.0, 0.0)
    py, px, pz = _body((24, 48, 48), sp, org)
    body = (py / 60) ** 2 + (px / 80) ** 2 < 1
    suv = np.where(body, 1.0, 0.0)
    suv[body & ((py / 25) ** 2 + ((px - 30) / 30) ** 2 < 1)] = 2.2
    suv[(py ** 2 + (px + 30) ** 2 + (pz - 60) ** 2) < 64] = 8.0
    suv = np.clip(suv + rng.normal(0, 0.3, suv.shape) * np.sqrt(suv), 0, None).astype(np.float32)
    img = sitk.GetImageFromArray(suv)
    img.SetSpacing(sp)
    img.SetOrigin(org)
    return img


def make_guide(modality: str, shift_mm=(0.0, 0.0), origin_shift_z=0.0) -> sitk.Image:
    """The same body on the guide's own finer grid (2 mm in-plane, 60 slices of 2.5 mm)."""
    sp, org = (2.0, 2.0, 2.5), (-110.0, -110.0, -10.0 + origin_shift_z)
    py, px, _ = _body((60, 110, 110), sp, org, shift_mm)
    body = (py / 60) ** 2 + (px / 80) ** 2 < 1
    if modality == "ct":
        arr = np.where(body, 40.0, -1000.0)
        arr[body & ((py / 25) ** 2 + ((px - 30) / 30) ** 2 < 1)] = 60.0
    else:
        arr = np.where(body, 400.0, 5.0)
        arr[body & ((py / 25) ** 2 + ((px - 30) / 30) ** 2 < 1)] = 700.0
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(sp)
    img.SetOrigin(org)
    return img


def _tiny_networks(residual: bool = False):
    """Tiny random fusion module and conditional U-Net (never trained)."""
    torch.manual_seed(0)
    fusion = build_network({"class": f"{NET}.FusionModule",
                            "args": {"context": 1, "channels": 4, "heads": 1, "pool": 2,
                                     "out_channels": 2}})
    den = build_network({"class": f"{NET}.MFdiffUNet",
                         "args": {"context": 1, "fusion_channels": 2, "channels": [8, 16],
                                  "heads": 1, **({"residual": True} if residual else {})}})
    return fusion, den


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    fusion, den = _tiny_networks()
    with torch.no_grad():   # zero-initialised output layer: make the random net non-trivial
        den.out[-1].weight.normal_(0, 0.01)
    card = {"id": "mfdiff-tiny", "version": "0.0.1", "task": "restore",
            "preprocessing": {"spacing_mm": [4.0, 4.0, 5.0], "context_slices": 1},
            "diffusion": {"schedule": "linear", "num_train_timesteps": 1000},
            "inference": {"steps": 2, "start_fraction": 0.1, "slice_batch": 8}}
    return save_model_folder(tmp_path_factory.mktemp("m") / "mfdiff-tiny",
                             {"fusion": fusion, "denoiser": den}, card)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("in")
    return {"pet": write_image(make_pet(), d / "pet.nii.gz", units="SUVbw"),
            "ct": write_image(make_guide("ct"), d / "ct.nii.gz", units="HU"),
            "mr": write_image(make_guide("mr"), d / "mr.nii.gz"),
            "ct_shifted": write_image(make_guide("ct", (0.0, 100.0)), d / "ct_shift.nii.gz", units="HU"),
            "ct_elsewhere": write_image(make_guide("ct", origin_shift_z=400.0), d / "ct_far.nii.gz",
                                        units="HU")}


# ------------------------------------------------------------------------------------ spec
def test_spec_declares_pet_and_one_guide_and_the_two_synthetic_outputs():
    assert task_spec("restore") is SPEC
    assert [(i.name, i.required) for i in SPEC.inputs] == [("pet", True), ("mr", False), ("ct", False)]
    outs = {o.name: o for o in SPEC.outputs}
    assert outs["pet_restored"].filename == "pet_restored.nii.gz"
    assert outs["pet_restored_sd"].filename == "pet_restored_sd.nii.gz"
    assert outs["pet_restored"].units == "SUVbw" and outs["pet_restored"].synthetic
    assert SPEC.slicer_module == "LowDosePETRestoration"


# ------------------------------------------------------------------------------------ networks
def test_detail_branch_is_three_invertible_affine_couplings():
    torch.manual_seed(1)
    block = DetailBlock(8).eval()
    assert len(block.scale) == 3 and len(block.shift) == 3
    assert all(isinstance(m, InvertedResidual) for m in list(block.scale) + list(block.shift))
    f = torch.randn(2, 8, 12, 12)
    d = block(f)
    assert not torch.allclose(d, f)
    assert torch.allclose(block.inverse(d), f, atol=1e-5)


def test_global_branch_keeps_the_shape_and_attends_across_the_slice():
    torch.manual_seed(2)
    g = GlobalBlock(8, heads=2, pool=4).eval()
    f = torch.randn(1, 8, 32, 32)
    out = g(f)
    assert out.shape == f.shape
    f2 = f.clone()
    f2[..., :4, :4] += 3.0 * torch.randn(8, 4, 4)   # a change in one corner reaches the opposite
    # corner (spatial MHA; a change equal in every channel would vanish in the LayerNorm)
    assert (g(f2) - out)[..., -4:, -4:].abs().max() > 1e-4


def test_fusion_and_unet_shapes_and_munet_is_residual_on_the_centre_slice():
    torch.manual_seed(3)
    fusion = FusionModule(channels=8, heads=2, pool=2, out_channels=4)
    x, g = torch.randn(2, 3, 32, 40), torch.randn(2, 3, 32, 40)
    fused = fusion(x, g, torch.tensor([0, 1]))
    assert fused.shape == (2, 4, 32, 40)
    unet = MFdiffUNet(fusion_channels=4, channels=[8, 16])
    assert unet(torch.cat([torch.randn(2, 1, 32, 40), x, fused], 1),
                torch.tensor([3, 200])).shape == (2, 1, 32, 40)
    m = MUNet(channels=[8, 16])     # zero-initialised output layer: starts as the identity
    assert torch.equal(m(x, g, torch.tensor([0, 1])), x[:, 1:2])
    with pytest.raises(ValueError, match="global branch, the detail branch or both"):
        FusionModule(use_global=False, use_detail=False)


def test_intensity_maps():
    suv = torch.tensor([0.0, 1.0, 5.0, 20.0, 40.0])
    x = pet_to_x(suv)
    assert x[0] == -1.0 and x[3] == pytest.approx(1.0) and x[4] == pytest.approx(1.0)
    assert torch.allclose(x_to_pet(x)[:4], suv[:4], atol=1e-4)
    assert guide_to_x(np.array([-1000.0, 0.0, 1000.0, 3000.0]), "ct").tolist() == [-1.0, 0.0, 1.0, 1.0]
    mr = np.concatenate([np.zeros(100), np.full(100, 500.0)])
    assert guide_to_x(mr, "mr").min() == -1.0 and guide_to_x(mr, "mr").max() == pytest.approx(0.0)


# ------------------------------------------------------------------------------------ recipe
def test_recipe_config_and_two_stage_plan():
    with pytest.raises(InputError, match="unknown config key"):
        RestoreConfig.from_dict({"epochs": 3})
    cfg = RestoreConfig.from_dict(json.loads((Path(__file__).resolve().parents[1] / "configs" /
                                              "restore.json").read_text()))
    assert [s.name for s in stages(cfg, TrainOptions())] == ["real-cohort", "external", "internal",
                                                              "export"]
    assert set(network_specs(cfg)) == {"fusion", "denoiser"}
    assert set(network_specs(RestoreConfig(model="munet"))) == {"munet"}


# ------------------------------------------------------------------------------------ end to end
def test_restore_end_to_end_on_the_pet_grid(tiny_model, inputs, tmp_path):
    out = tmp_path / "out"
    manifest = run_task("restore", {"pet": str(inputs["pet"]), "ct": str(inputs["ct"])},
                        {"samples": 2, "seed": 3}, out, model_path=str(tiny_model))
    man = json.loads(manifest.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pet_restored.nii.gz",
                                                     "pet_restored_sd.nii.gz", "restore.json"]
    assert man["guide"] == "ct" and man["inference"]["steps"] == 2
    assert man["inference"]["overlap"]["body_covered_fraction"] == 1.0
    assert man["inference"]["overlap"]["body_dice"] > 0.9
    pet = read_image(inputs["pet"])
    for name in ("pet_restored", "pet_restored_sd"):
        img = read_image(out / f"{name}.nii.gz")
        assert img.GetSize() == pet.GetSize()
        assert np.allclose(img.GetSpacing(), pet.GetSpacing())
        assert np.allclose(img.GetOrigin(), pet.GetOrigin())
        assert get_units(img) == "SUVbw" and is_synthetic(img)
    rest = sitk.GetArrayFromImage(read_image(out / "pet_restored.nii.gz"))
    sd = sitk.GetArrayFromImage(read_image(out / "pet_restored_sd.nii.gz"))
    low = sitk.GetArrayFromImage(pet)
    body = low > 0.5
    assert np.isfinite(rest).all() and rest.min() >= 0
    assert 0.5 < rest[body].mean() < 3.0              # SUV scale kept (random net, few steps)
    assert sd[body].mean() > 0 and sd[~body].max() < sd[body].max()
    # same seed, same output; the MR guide runs through the same network
    again = run_task("restore", {"pet": str(inputs["pet"]), "ct": str(inputs["ct"])},
                     {"samples": 2, "seed": 3}, tmp_path / "again", model_path=str(tiny_model))
    assert np.array_equal(sitk.GetArrayFromImage(read_image(again.parent / "pet_restored.nii.gz")), rest)
    mr = run_task("restore", {"pet": str(inputs["pet"]), "mr": str(inputs["mr"])}, {"samples": 1},
                  tmp_path / "mr", model_path=str(tiny_model))
    assert json.loads(mr.read_text())["guide"] == "mr"


@pytest.mark.parametrize("given, message", [
    ({"ct": "mr"}, "looks like an MR in arbitrary units: give it as --mr"),
    ({"mr": "ct"}, "looks like a CT in HU, not an MR"),
    ({"ct": "ct_elsewhere"}, "covers only 0 % of the PET's body"),
    ({"ct": "ct_shifted"}, "body outline does not match the PET's"),
    ({"ct": "ct", "mr": "mr"}, "give one guide, --mr or --ct, not both"),
    ({}, "give a guide: --mr"),
])
def test_bad_guides_are_refused_with_nothing_written(tiny_model, inputs, tmp_path, given, message):
    paths = {"pet": str(inputs["pet"]), **{k: str(inputs[v]) for k, v in given.items()}}
    with pytest.raises(InputError, match=message):
        run_task("restore", paths, {}, tmp_path / "out", model_path=str(tiny_model))
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_pet_not_in_suv_is_refused(tiny_model, inputs, tmp_path):
    bq = sitk.Cast(make_pet(), sitk.sitkFloat32) * 5000.0
    path = write_image(bq, tmp_path / "pet_bq.nii.gz", units="Bq/mL")
    with pytest.raises(InputError, match="not SUV"):
        run_task("restore", {"pet": str(path), "ct": str(inputs["ct"])}, {}, tmp_path / "out",
                 model_path=str(tiny_model))
    unlabelled = write_image(bq, tmp_path / "pet_big.nii.gz")
    with pytest.raises(InputError, match="implausible for SUV"):
        run_task("restore", {"pet": str(unlabelled), "ct": str(inputs["ct"])}, {}, tmp_path / "out",
                 model_path=str(tiny_model))
    assert not (tmp_path / "out").exists()


def test_real_sarcoma_pet_ct_pair_passes_the_guide_checks():
    """A real pair (different PET and CT grids and fields of view) is accepted: the outline Dice of
    the same patient is far above the refusal threshold."""
    case = REAL / "STS_015"
    pet = read_image(case / "PET_image.nii.gz")
    ct = read_image(case / "CT_image.nii.gz")
    assert pet.GetSpacing() != ct.GetSpacing()
    prepared = pipeline.prepare({"pet": pet, "ct": ct}, None)
    assert prepared["modality"] == "ct"
    assert prepared["overlap"]["body_covered_fraction"] > 0.9     # the CT crop is a little smaller
    assert prepared["overlap"]["body_dice"] > pipeline.MIN_BODY_DICE + 0.2


def test_shipped_models_load_and_their_cards_carry_the_measured_figures():
    model = pipeline.load_model(None, "cpu")
    card = model.card
    assert card["id"] == "mfdiff-2p5d" and card["task"] == "restore"
    assert set(model.nets) == {"fusion", "denoiser"}
    assert card["inference"] == {"sampler": "ddim", "steps": 3, "start_fraction": 0.2, "slice_batch": 16}
    assert card["training"]["command"] == "petdiffusion train restore --config configs/restore.json"
    real = card["evaluation"]["real_sarcoma_held_apart"]
    assert real["figures"]["5%"]["two_stage"]["nrmse"] < real["figures"]["5%"]["external"]["nrmse"]
    assert "STS_015" in card["training"]["data"]["held_apart"]
    n_params = sum(p.numel() for net in model.nets.values() for p in net.parameters())
    assert 200_000 < n_params < 2_000_000
    ext = pipeline.load_model("mfdiff-2p5d-external", "cpu")
    assert ext.card["training"]["stage"] == "external"


# ------------------------------------------------------------------------------------ native grid
@pytest.fixture(scope="module")
def tiny_native_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny networks with a native-grid card whose slice range excludes the test PET's 5 mm."""
    nets = pipeline.load_model(str(tiny_model), "cpu").nets
    card = {"id": "mfdiff-tiny-native", "version": "0.0.1", "task": "restore",
            "preprocessing": {"spacing_mm": [4.0, 4.0, 5.0], "context_slices": 1, "grid": "native",
                              "supported_spacing_mm": {"inplane": [1.5, 6.0], "slice": [1.5, 4.0]}},
            "diffusion": {"schedule": "linear", "num_train_timesteps": 1000},
            "inference": {"steps": 1, "start_fraction": 0.1, "slice_batch": 8}}
    return save_model_folder(tmp_path_factory.mktemp("mn") / "mfdiff-tiny-native", nets, card)


def _anisotropic_pet() -> sitk.Image:
    """The test PET resampled to 3 x 3 x 5 mm (a grid no working-grid model uses)."""
    pet = make_pet()
    ref = sitk.Image([64, 64, 24], sitk.sitkFloat32)
    ref.SetSpacing((3.0, 3.0, 5.0))
    ref.SetOrigin(pet.GetOrigin())
    return sitk.Resample(pet, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def test_a_native_model_runs_on_the_pets_own_voxels_and_warns_outside_its_spacing(
        tiny_model, tiny_native_model, inputs):
    pet, ct = _anisotropic_pet(), read_image(inputs["ct"])
    native = pipeline.load_model(str(tiny_native_model), "cpu")
    res = pipeline.restore_image({"pet": pet, "ct": ct}, {"samples": 1}, native)
    info = res["_info"]
    assert info["grid"] == "native"
    assert np.allclose(info["working_spacing_mm"], (3.0, 3.0, 5.0))
    assert info["working_size"] == [64, 64, 24]
    assert len(info["warnings"]) == 1 and "slice spacing 5.00 mm" in info["warnings"][0]
    assert res["pet_restored"].GetSize() == pet.GetSize()
    # the working-grid model resamples the same PET to its 4 x 4 x 5 mm grid and warns nothing
    work = pipeline.load_model(str(tiny_model), "cpu")
    info2 = pipeline.restore_image({"pet": pet, "ct": ct}, {"samples": 1}, work)["_info"]
    assert info2["grid"] == "working" and np.allclose(info2["working_spacing_mm"], (4.0, 4.0, 5.0))
    assert info2["warnings"] == []


def test_native_recipe_plan_bank_triples_and_cases(tmp_path):
    """configs/restore_native.json: a native bank, then the internal stage from the shipped external
    model; one real bank triple (a held-in crop with CT, at its own grid) read back as a case."""
    from PETDiffusionLib.training.native_denoise import bank_jobs, make_pair
    from PETDiffusionLib.training.recipes.restore import native_bank_config, native_cases
    cfg = RestoreConfig.from_dict(json.loads((Path(__file__).resolve().parents[1] / "configs" /
                                              "restore_native.json").read_text()))
    assert [s.name for s in stages(cfg, TrainOptions())] == ["native-bank", "internal", "export"]
    with pytest.raises(InputError, match="internal_data must be"):
        RestoreConfig.from_dict({"internal_data": "phantom"})
    bank = tmp_path / "bank"
    bank.mkdir()
    ncfg = native_bank_config(cfg, bank)
    jobs = bank_jobs(ncfg, bank)
    assert jobs and all(j["kind"] == "crop" for j in jobs)          # no whole-body study: no CT
    assert all((Path(j["path"]) / "CT_image.nii.gz").is_file() for j in jobs)
    assert all(int(Path(j["path"]).name[4:]) % 3 != 0 for j in jobs)  # never a validation crop
    job = next(j for j in jobs if not j["fine"])
    meta = make_pair(job)
    z = np.load(job["out"])
    assert z["ct"].shape == z["low"].shape == z["ref"].shape
    assert z["ct"].min() < -900 and 0 < np.median(z["ct"][z["body"]]) < 200   # HU: air, soft tissue
    (bank / "bank.json").write_text(json.dumps({"items": [{"file": Path(job["out"]).name, **meta}]}))
    (case,) = native_cases(bank, pad_to=64)
    assert list(case.lows) == [0] and list(case.guides) == ["ct"]
    assert case.target.shape[1] >= 64 and case.target.shape[2] >= 64
    assert case.guides["ct"].min() >= -1.0 and case.guides["ct"].max() <= 1.0
    assert -1.0 <= case.target.min() and case.target.max() <= 1.0


def test_x0_prediction_variant_is_residual_and_its_one_step_is_the_posterior_mean_estimate(
        inputs, tmp_path):
    """The x0 variant (card diffusion.prediction "sample"): the U-Net's output is the low-dose centre
    slice plus its correction, so an untrained (zero output layer) network returns the low-dose PET
    itself through the whole pipeline; the loss trains both networks and reports the T - 1 share."""
    from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
    from PETDiffusionLib.methods.mfdiff.losses import mfdiff_x0_loss
    cfg = RestoreConfig.from_dict(json.loads((Path(__file__).resolve().parents[1] / "configs" /
                                              "restore_native_x0.json").read_text()))
    specs = network_specs(cfg)
    assert specs["denoiser"]["args"]["residual"] is True
    with pytest.raises(InputError, match="prediction must be"):
        RestoreConfig.from_dict({"prediction": "velocity"})
    fusion, den = _tiny_networks(residual=True)
    x = torch.randn(3, 1 + 3 + 2, 16, 16)
    assert torch.equal(den(x, torch.zeros(3, dtype=torch.long)), x[:, 2:3])   # centre of x_P
    with torch.no_grad():   # a zero output layer passes no gradient inwards: perturb it
        den.out[-1].weight.normal_(0, 0.01)
    diffusion = ConditionalDiffusion(1000, "linear", "sample")
    batch = {"target": torch.rand(4, 1, 16, 16) * 2 - 1, "low": torch.rand(4, 3, 16, 16) * 2 - 1,
             "guide": torch.rand(4, 3, 16, 16) * 2 - 1, "modality": torch.tensor([1, 1, 0, 1])}
    loss, logs = mfdiff_x0_loss(batch, {"fusion": fusion, "denoiser": den}, diffusion, 0.5,
                                torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and logs["l_top"] > 0
    assert den.out[-1].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
    card = {"id": "mfdiff-tiny-x0", "version": "0.0.1", "task": "restore",
            "preprocessing": {"spacing_mm": [4.0, 4.0, 5.0], "context_slices": 1},
            "diffusion": {"schedule": "linear", "num_train_timesteps": 1000, "prediction": "sample"},
            "inference": {"steps": 1, "start_fraction": 1.0, "slice_batch": 8}}
    with torch.no_grad():
        den.out[-1].weight.zero_()
    folder = save_model_folder(tmp_path / "x0", {"fusion": fusion, "denoiser": den}, card)
    model = pipeline.load_model(str(folder), "cpu")
    pet = read_image(inputs["pet"])
    res = pipeline.restore_image({"pet": pet, "ct": read_image(inputs["ct"])}, {"samples": 2}, model)
    low = sitk.GetArrayFromImage(pet)
    out = sitk.GetArrayFromImage(res["pet_restored"])
    assert np.allclose(out, np.clip(low, 0, None), atol=1e-4)
    assert float(sitk.GetArrayFromImage(res["pet_restored_sd"]).max()) < 1e-5


def test_count_preserving_card_keeps_the_body_total_of_the_input(tiny_model, inputs, tmp_path):
    """inference.count_preserving: the restored body total equals the low-dose body total (the
    counts fix the total activity; the restoration redistributes it), and without the flag a
    random network's total differs."""
    from PETDiffusionLib.physics.lowcount import body_outline
    model = pipeline.load_model(str(tiny_model), "cpu")
    pet, ct = read_image(inputs["pet"]), read_image(inputs["ct"])
    low = sitk.GetArrayFromImage(pet)
    body = body_outline(low, pet.GetSpacing())
    plain = sitk.GetArrayFromImage(pipeline.restore_image({"pet": pet, "ct": ct}, {"samples": 1},
                                                          model)["pet_restored"])
    card = json.loads(json.dumps(model.card))
    card["inference"]["count_preserving"] = True
    kept = sitk.GetArrayFromImage(pipeline.restore_image(
        {"pet": pet, "ct": ct}, {"samples": 1}, pipeline.RestoreModel(model.nets, card))["pet_restored"])
    assert abs(plain[body].sum() / low[body].sum() - 1) > 1e-3
    assert kept[body].sum() == pytest.approx(low[body].sum(), rel=2e-3)
    assert np.corrcoef(plain[body], kept[body])[0, 1] > 0.999      # a scale, nothing else


def test_the_default_is_per_guide_and_a_ct_only_model_refuses_an_mr(inputs, tmp_path):
    """No --model: an MR guide runs mfdiff-2p5d, a CT guide the native CT model (manifest and
    restore.json name it); that CT-only model given an MR says so, naming the file, writes nothing."""
    from PETDiffusionLib.tasks.restore.spec import CT_MODEL_ID, MODEL_ID
    ct_run = run_task("restore", {"pet": str(inputs["pet"]), "ct": str(inputs["ct"])}, {},
                      tmp_path / "ct")
    man = json.loads(ct_run.read_text())
    assert man["model_id"] == CT_MODEL_ID and man["inference"]["grid"] == "native"
    assert json.loads((tmp_path / "ct" / "restore.json").read_text())["model_id"] == CT_MODEL_ID
    mr_run = run_task("restore", {"pet": str(inputs["pet"]), "mr": str(inputs["mr"])}, {},
                      tmp_path / "mr")
    assert json.loads(mr_run.read_text())["model_id"] == MODEL_ID
    out = tmp_path / "refused"
    with pytest.raises(InputError, match="trained with a ct guide only, not --mr") as exc:
        run_task("restore", {"pet": str(inputs["pet"]), "mr": str(inputs["mr"])}, {}, out,
                 model_path=str(Path(pipeline.__file__).parents[2] / "models" / CT_MODEL_ID))
    assert "mr.nii.gz" in str(exc.value)
    assert not out.exists()


def test_a_flip_averaging_card_returns_the_mean_of_the_four_in_plane_views(tiny_model, inputs):
    """inference.flip_average: the output is the mean of the network's outputs for the image and its
    left-right, front-back and double flips, each flipped back; it differs from the single view (the
    random network is not flip-equivariant) and the run says how many views it averaged."""
    model = pipeline.load_model(str(tiny_model), "cpu")
    images = {"pet": read_image(inputs["pet"]), "ct": read_image(inputs["ct"])}
    card = json.loads(json.dumps(model.card))
    card["inference"]["flip_average"] = True
    flipped = pipeline.RestoreModel(model.nets, card)
    params = {"samples": 1, "seed": 3}
    res = pipeline.restore_image(images, params, flipped)
    plain = pipeline.restore_image(images, params, model)
    assert res["_info"]["flip_views"] == 4 and plain["_info"]["flip_views"] == 1
    prep = pipeline.prepare(images, None, card)
    s = pipeline.resolve_settings(params, card)
    views = []
    for axes in pipeline.FLIP_VIEWS:
        def flip(a, axes=axes):
            return np.ascontiguousarray(np.flip(a, axes)) if axes else a
        m, _ = pipeline.restore_arrays(flip(prep["low"]), flip(prep["guide"]), prep["modality"],
                                       flipped, s["steps"], s["start_fraction"], 1, s["seed"],
                                       spacing_xyz=prep["work"].GetSpacing())
        views.append(flip(m))
    expected = resample_to(array_and_image(np.mean(views, 0).astype(np.float32), prep["work"]),
                           images["pet"])
    out = sitk.GetArrayFromImage(res["pet_restored"])
    np.testing.assert_allclose(out, sitk.GetArrayFromImage(expected), rtol=1e-5, atol=1e-6)
    assert np.abs(out - sitk.GetArrayFromImage(plain["pet_restored"])).max() > 1e-4
    assert np.abs(views[0] - views[1]).max() > 1e-4


def test_shipped_native_ct_model_card_carries_its_real_validation():
    """mfdiff-native-2p5d: native grid, CT guide only, x0 one step, count-preserving; its card's real
    validation (the evaluate command's figures, with the card's four-view flip average) has it below
    Gaussian, NLM and denoise-segment at 10 and 5 % counts, below BM4D at 5 % and still above it at
    10 % (the README says so)."""
    from PETDiffusionLib.tasks.restore.spec import CT_MODEL_ID
    model = pipeline.load_model(CT_MODEL_ID, "cpu")
    card = model.card
    assert card["id"] == CT_MODEL_ID and card["intended_use"] == "research model, not for diagnosis"
    assert card["preprocessing"]["grid"] == "native" and card["preprocessing"]["guides"] == ["ct"]
    assert card["diffusion"]["prediction"] == "sample" and card["inference"]["count_preserving"]
    assert model.nets["denoiser"].residual
    rv = card["evaluation"]["real_validation_native"]
    assert rv["command"].startswith("petdiffusion evaluate restore --real-validation")
    assert "STS_015" in rv["split"]["validation_crops"]
    for level in ("10", "5"):
        nr = {m: v["median"] for m, v in rv["summary"][level]["body_nrmse"].items()}
        assert nr["native"] < min(nr["gaussian"], nr["nlm"], nr["denoise_segment"], nr["input"])
        vs = rv["summary"][level]["vs_best_baseline"]["native"]["median"]
        assert vs["vs_best_pct"] == pytest.approx(100 * (nr["native"] / nr["bm4d"] - 1), abs=0.06)
    assert card["inference"]["flip_average"] is True
    assert (rv["summary"]["10"]["body_nrmse"]["bm4d"]["median"]
            < rv["summary"]["10"]["body_nrmse"]["native"]["median"])
    assert (rv["summary"]["5"]["body_nrmse"]["native"]["median"]
            < rv["summary"]["5"]["body_nrmse"]["bm4d"]["median"])
    assert "STS_015" in card["training"]["data"]["held_apart"]
    assert {p["steps"] for p in card["steps_curve"]["points"]} == {1, 2, 4}
