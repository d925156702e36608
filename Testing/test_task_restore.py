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
from PETDiffusionLib.io.images import get_units, is_synthetic, read_image, write_image
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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    fusion = build_network({"class": f"{NET}.FusionModule",
                            "args": {"context": 1, "channels": 4, "heads": 1, "pool": 2,
                                     "out_channels": 2}})
    den = build_network({"class": f"{NET}.MFdiffUNet",
                         "args": {"context": 1, "fusion_channels": 2, "channels": [8, 16],
                                  "heads": 1}})
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
