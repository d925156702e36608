"""denoise-segment (AMDiff): spec, CLI flags, networks, losses, bad inputs, end to end with a tiny
randomly initialised model folder, the recipe through the one training loop, and the shipped
model's integrity."""
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

from PETDiffusionLib.cli.evaluate import evaluate_parser
from PETDiffusionLib.cli.main import build_parser, main
from PETDiffusionLib.diffusion.ddpm import (ClippedEpsilon, ConditionalDiffusion, epsilon_from_x0,
                                            x0_from_epsilon)
from PETDiffusionLib.errors import InputError, ModelError
from PETDiffusionLib.io.images import get_units, is_synthetic, read_image, to_working_grid
from PETDiffusionLib.methods.amdiff import networks as amdiff
from PETDiffusionLib.methods.amdiff.cases import organ_class_lut
from PETDiffusionLib.methods.amdiff.losses import (amdiff_loss, focal_dice_ce, lambda_warm,
                                                   lesion_organ_regularizer, revision_loss)
from PETDiffusionLib.methods.amdiff.networks import (ORGAN_CLASSES, DenoisingRevision,
                                                     SUVNormalisation)
from PETDiffusionLib.models.registry import load_model_folder, resolve_model, save_model_folder
from PETDiffusionLib.progress import NULL_PROGRESS
from PETDiffusionLib.quant.metrics import dice, nrmse
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.denoise_segment import evaluate as ds_evaluate
from PETDiffusionLib.tasks.denoise_segment import pipeline as ds
from PETDiffusionLib.tasks.denoise_segment.spec import MODEL_ID, SPEC
from PETDiffusionLib.tasks.runner import run_task
from PETDiffusionLib.training.loop import StepInfo, TrainOptions
from PETDiffusionLib.training.recipes import denoise_segment as recipe

TINY = {"denoiser": {"context": 1, "channels": [8, 8, 16, 16], "norm_num_groups": 4,
                     "num_head_channels": 8},
        "revision": {"hidden": 4, "layers": 2},
        "segmenter": {"channels": [4, 8, 8, 8], "encoder": "conv", "use_ct": True}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model folder with random weights, built the way the training recipe exports one."""
    torch.manual_seed(0)
    cfg = recipe.DenoiseSegmentConfig(**TINY)
    nets = recipe.build_networks(cfg)
    folder = tmp_path_factory.mktemp("model") / "amdiff-tiny"
    card = {"id": "amdiff-tiny", "task": "denoise-segment", "version": "0.0.1",
            "networks": recipe.network_specs(cfg),
            "preprocessing": {"suv_cutoff": 20.0, "spacing_mm": [8.0, 8.0, 10.0]},
            "diffusion": {"schedule": "cosine", "prediction": "epsilon",
                          "num_train_timesteps": 250},
            "inference": {"steps": 2, "start_fraction": 0.4, "sampler": "ddim", "slice_batch": 8}}
    return save_model_folder(folder, nets, card)


def _write_case(case: Path, seed: int = 0) -> Path:
    """A small phantom-layout case (10 x 32 x 32 at 8 x 8 x 10 mm): body, two lesions, CT, labels."""
    rng = np.random.default_rng(seed)
    case.mkdir(parents=True)
    z, y, x = np.mgrid[0:10, 0:32, 0:32]
    body = (y - 16) ** 2 + (x - 16) ** 2 < 14 ** 2
    les = (((z - 5) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) < 9) | \
        (((z - 4) ** 2 + (y - 20) ** 2 + (x - 21) ** 2) < 5)
    suv = (body * 1.0 + les * 6.0).astype(np.float32)
    arrays = {"suv_true": suv,
              "pet_low_5": np.clip(suv + rng.normal(0, 0.4, suv.shape) * body, 0, None).astype(np.float32),
              "ct": np.where(body, 40.0, -1000.0).astype(np.float32),
              "lesions": les.astype(np.uint8), "organs": body.astype(np.uint8)}
    for name, arr in arrays.items():
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((8.0, 8.0, 10.0))
        sitk.WriteImage(img, str(case / f"{name}.nii.gz"))
    (case / "case.json").write_text(json.dumps({"organ_labels": {"1": "liver"}}))
    return case


def _pet(shape=(12, 40, 36), spacing=(6.0, 5.0, 7.0), seed=0) -> sitk.Image:
    """A noisy body with a hot sphere, SUV units, non-trivial origin and direction."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    body = ((y - shape[1] / 2) / (shape[1] / 2.5)) ** 2 + ((x - shape[2] / 2) / (shape[2] / 2.5)) ** 2 < 1
    suv = body * 1.0 + (((z - 6) ** 2 + (y - 20) ** 2 + (x - 18) ** 2) < 9) * 7.0
    arr = np.clip(suv + rng.normal(0, 0.3, shape) * body, 0, None).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-100.0, 20.0, 300.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # y flipped: not LPS, the task reorients
    return img


# ------------------------------------------------------------------------------ spec and CLI
def test_spec_declares_inputs_parameters_and_outputs():
    assert SPEC.id == "denoise-segment"
    assert [i.name for i in SPEC.inputs] == ["pet", "ct"]
    assert SPEC.inputs[0].required and not SPEC.inputs[1].required
    assert SPEC.inputs[0].units == "SUVbw" and SPEC.inputs[1].units == "HU"
    names = {p.name for p in SPEC.parameters}
    assert {"steps", "sampler", "samples", "seed", "start_fraction"} <= names
    outs = {o.name: o for o in SPEC.outputs}
    assert outs["pet_denoised"].synthetic and outs["pet_denoised"].units == "SUVbw"
    assert outs["uncertainty"].optional
    for key in ("lesions", "organs", "organs_csv", "summary_json", "report_pdf"):
        assert key in outs
    with pytest.raises(InputError, match="samples"):
        SPEC.parameter("samples").coerce(0)
    with pytest.raises(InputError, match="sampler"):
        SPEC.parameter("sampler").coerce("euler")


def test_cli_run_has_the_spec_flags():
    parser = build_parser()
    args = parser.parse_args(["run", "denoise-segment", "--pet", "a.nii.gz", "--ct", "b.nii.gz",
                              "--out", "o", "--steps", "7", "--samples", "3", "--seed", "5",
                              "--sampler", "ddpm", "--start-fraction", "0.3"])
    assert (args.param_steps, args.param_samples, args.param_seed) == (7, 3, 5)
    assert args.param_sampler == "ddpm" and args.param_start_fraction == 0.3
    ev = evaluate_parser("denoise-segment", ds_evaluate).parse_args(["--cohort", "c", "--out", "e.json"])
    assert ev.fractions == "10,5" and ev.out == "e.json" and ev.tune_cases == "0,1"
    assert ev.mode == "cohort"
    # the studies are modes of the same command; a mode without its folder is refused by name
    ev = evaluate_parser("denoise-segment", ds_evaluate).parse_args(
        ["--mode", "calibrate-lesions", "--cases", "0,1", "--write-card"])
    assert ev.mode == "calibrate-lesions" and ev.write_card and ev.cohort is None
    with pytest.raises(InputError, match="--run"):
        ds_evaluate.evaluate(evaluate_parser("denoise-segment", ds_evaluate).parse_args(
            ["--mode", "validate-segmenter"]))


# ------------------------------------------------------------------------------ networks
def test_normalisation_inverts_exactly_below_the_cutoff():
    norm = SUVNormalisation(20.0)
    suv = torch.linspace(0, 20, 2001, dtype=torch.float64)
    x = norm.to_x(suv)
    assert float(x.min()) == -1.0 and float(x.max()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(norm.x_to_suv(x), suv, atol=1e-9, rtol=0)
    # the unclipped u domain inverts above the cut-off too
    big = torch.tensor([35.0, 120.0], dtype=torch.float64)
    assert torch.allclose(norm.u_to_suv(norm.to_u(big)), big, rtol=1e-12)
    assert float(norm.to_x(torch.tensor(50.0))) == 1.0  # clipped at the cut-off (Sec. 2.2.1)


def test_revision_skip_passes_suvs_above_the_cutoff():
    norm = SUVNormalisation(20.0)
    rev = DenoisingRevision(hidden=4, layers=3)
    low = torch.full((1, 1, 8, 8), 2.0)
    low[0, 0, 3, 3] = 60.0                     # above the diffusion cut-off
    hc = torch.clamp(low, max=20.0)             # what the (clipped) diffusion can give at best
    hc[0, 0, 0, 0] = 1.5                        # a denoised voxel below the cut-off
    out = norm.u_to_suv(rev(norm.to_u(hc), norm.to_u(low)))
    assert float(out[0, 0, 3, 3]) == pytest.approx(60.0, rel=1e-5)
    assert float(out[0, 0, 0, 0]) == pytest.approx(1.5, rel=1e-5)   # below: the diffusion value


def test_dual_branch_segmenter_shapes_for_both_encoders():
    x = torch.randn(2, 4, 32, 24)
    for enc in ("conv", "mamba"):
        seg = amdiff.DualBranchSegmenter(channels=(4, 8, 8, 8), encoder=enc)
        les, org = seg(x)
        assert les.shape == (2, 2, 32, 24) and org.shape == (2, len(ORGAN_CLASSES), 32, 24)
    with pytest.raises(ValueError, match="encoder"):
        amdiff.DualBranchSegmenter(encoder="transformer")


def test_denoiser_predicts_noise_of_the_input_shape():
    den = amdiff.Denoiser(**TINY["denoiser"])
    out = den(torch.randn(3, 4, 16, 24), torch.tensor([0, 10, 249]))
    assert out.shape == (3, 1, 16, 24)


# ------------------------------------------------------------------------------ losses
def test_regularizer_zero_for_perfect_prediction_and_class_weights_apply():
    ref = torch.rand(1, 1, 6, 6)
    organs = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    organs[..., :3, :] = 1                                  # liver: top half
    lesions = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    lesions[..., 4:, 4:] = 1                                # a 2x2 lesion
    w = [1.0] + [1.0] * 7
    assert float(lesion_organ_regularizer(ref, ref, organs, lesions, w)) == 0.0
    assert float(revision_loss(ref, ref, organs, lesions, w, 0.5)) == 0.0
    pred = ref.clone()
    pred[..., 5, 5] += 0.8                                  # error only inside the lesion
    one = float(lesion_organ_regularizer(pred, ref, organs, lesions, w))
    assert one == pytest.approx(0.8 / 4)                    # mean |error| over the 4 lesion voxels
    w3 = [3.0] + [1.0] * 7
    assert float(lesion_organ_regularizer(pred, ref, organs, lesions, w3)) == pytest.approx(3 * one)
    pred2 = ref.clone()
    pred2[..., 0, 0] += 0.9                                 # error in the liver (18 voxels)
    w_liver = [1.0, 2.0] + [1.0] * 6
    assert float(lesion_organ_regularizer(pred2, ref, organs, lesions, w_liver)) == \
        pytest.approx(2 * 0.9 / 18)
    # background (outside organs and lesions) counts only in the revision loss (Eq. 7)
    pred3 = ref.clone()
    pred3[..., 4, 0] += 1.0
    assert float(lesion_organ_regularizer(pred3, ref, organs, lesions, w)) == 0.0
    n_bg = int(((organs == 0) & (lesions == 0)).sum())
    assert float(revision_loss(pred3, ref, organs, lesions, w, 0.5)) == pytest.approx(0.5 / n_bg)


def test_segmentation_loss_near_zero_when_perfect_and_weighted():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[..., 2:5, 2:5] = 1
    perfect = torch.where(torch.nn.functional.one_hot(target[:, 0], 2).permute(0, 3, 1, 2) > 0,
                          torch.tensor(30.0), torch.tensor(-30.0))
    assert float(focal_dice_ce(perfect, target)) < 1e-6
    wrong = -perfect
    l1 = float(focal_dice_ce(wrong, target, [1.0, 1.0]))
    l2 = float(focal_dice_ce(wrong, target, [1.0, 3.0]))
    assert l1 > 1.0 and l2 > l1


def test_lambda_warm_follows_eq_11():
    assert lambda_warm(50, 800, 100) == 0.0
    assert lambda_warm(100, 800, 100) == pytest.approx(math.exp(-5 * (1 - 100 / 800) ** 2))
    assert lambda_warm(400, 800, 100) == pytest.approx(math.exp(-1.25))
    assert lambda_warm(800, 800, 100) == 1.0


def test_training_loss_runs_and_warm_up_adds_segmentation_terms():
    torch.manual_seed(0)
    cfg = recipe.DenoiseSegmentConfig(**TINY, lor_max_t_fraction=1.0)
    nets = recipe.build_networks(cfg)
    b = 4
    batch = {"low": torch.rand(b, 3, 16, 16) * 5, "suv": torch.rand(b, 1, 16, 16) * 5,
             "organs": torch.randint(0, 8, (b, 1, 16, 16)),
             "lesions": torch.randint(0, 2, (b, 1, 16, 16)),
             "ct": torch.zeros(b, 1, 16, 16), "has_ct": torch.tensor([1.0, 0, 1, 0])}
    diff = ConditionalDiffusion(250, "cosine", "epsilon")
    norm = SUVNormalisation()
    settings = recipe.loss_settings(cfg)
    loss0, logs0 = amdiff_loss(batch, nets, diff, norm, settings, 0.0)
    assert set(logs0) == {"diff", "lambda"} and math.isfinite(float(loss0))
    loss1, logs1 = amdiff_loss(batch, nets, diff, norm, settings, 1.0)
    assert {"lor", "rev", "seg"} <= set(logs1)
    loss1.backward()
    assert nets["segmenter"].organ_decoder.head.weight.grad is not None


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors():
    ct = _pet()
    arr = sitk.GetArrayFromImage(ct) * 0 - 1000.0
    arr[:, 10:30, 10:26] = 40.0
    ct_img = sitk.GetImageFromArray(arr.astype(np.float32))
    with pytest.raises(InputError, match="CT in HU"):
        ds.check_pet(ct_img, "ct_as_pet.nii.gz")
    bq = sitk.GetImageFromArray((sitk.GetArrayFromImage(_pet()) * 5000.0).astype(np.float32))
    with pytest.raises(InputError, match="Bq/mL"):
        ds.check_pet(bq, "bq.nii.gz")
    nan = sitk.GetArrayFromImage(_pet())
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN") as exc:
        ds.check_pet(sitk.GetImageFromArray(nan), "nan.nii.gz")
    assert "nan.nii.gz" in str(exc.value)
    with pytest.raises(InputError, match="do not look like a CT"):
        ds.check_ct(_pet(), "pet_as_ct.nii.gz")
    small = _pet(shape=(12, 10, 10), spacing=(4.0, 4.0, 5.0))
    work = to_working_grid(small, [4.0, 4.0, 5.0])
    with pytest.raises(InputError, match="too small"):
        ds.check_size(work, 1)


def test_cli_reports_bad_input_by_file_name(tmp_path, tiny_model, capsys):
    bq = sitk.GetImageFromArray((sitk.GetArrayFromImage(_pet()) * 5000.0).astype(np.float32))
    sitk.WriteImage(bq, str(tmp_path / "bq.nii.gz"))
    rc = main(["run", "denoise-segment", "--pet", str(tmp_path / "bq.nii.gz"), "--out",
               str(tmp_path / "out"), "--model", str(tiny_model), "--progress", "none"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bq.nii.gz" in err and "Bq/mL" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ end to end
def test_run_end_to_end_writes_every_output_on_the_input_grid(tmp_path, tiny_model):
    pet = _pet()
    sitk.WriteImage(pet, str(tmp_path / "pet.nii.gz"))
    ct_arr = np.full(sitk.GetArrayFromImage(pet).shape, -1000.0, np.float32)
    ct_arr[:, 8:32, 6:30] = 40.0
    ct = sitk.GetImageFromArray(ct_arr)
    ct.CopyInformation(pet)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    manifest_path = run_task("denoise-segment", {"pet": str(tmp_path / "pet.nii.gz"),
                                                 "ct": str(tmp_path / "ct.nii.gz")},
                             {"samples": 2, "seed": 3}, tmp_path / "out",
                             model_path=str(tiny_model))
    out = tmp_path / "out"
    for name in ("pet_denoised.nii.gz", "lesions.nii.gz", "organs.nii.gz", "uncertainty.nii.gz",
                 "organs.csv", "summary.json", "report.pdf", "manifest.json"):
        assert (out / name).is_file(), name
    for name in ("pet_denoised.nii.gz", "lesions.nii.gz", "organs.nii.gz", "uncertainty.nii.gz"):
        img = sitk.ReadImage(str(out / name))
        assert img.GetSize() == pet.GetSize()
        assert np.allclose(img.GetSpacing(), pet.GetSpacing())
        assert np.allclose(img.GetOrigin(), pet.GetOrigin(), atol=1e-3)
        assert np.allclose(img.GetDirection(), pet.GetDirection())
    den = read_image(out / "pet_denoised.nii.gz")
    assert is_synthetic(den) and get_units(den) == "SUVbw"
    assert np.all(np.isfinite(sitk.GetArrayFromImage(den)))
    unc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty.nii.gz")))
    assert unc.min() >= 0 and unc.max() > 0            # two samples differ somewhere
    manifest = json.loads(manifest_path.read_text())
    assert manifest["model_id"] == "amdiff-tiny"
    assert manifest["outputs"]["pet_denoised"]["synthetic"] is True
    assert manifest["parameters"]["samples"] == 2
    assert (out / "report.pdf").read_bytes()[:4] == b"%PDF"


def test_same_seed_same_output(tiny_model):
    nets, card = load_model_folder(tiny_model)
    pet = _pet(seed=1)
    a = ds.denoise_segment_image(pet, None, nets, card, {"seed": 4})
    b = ds.denoise_segment_image(pet, None, nets, card, {"seed": 4})
    c = ds.denoise_segment_image(pet, None, nets, card, {"seed": 5})
    arr = [sitk.GetArrayFromImage(r["pet_denoised"]) for r in (a, b, c)]
    assert np.array_equal(arr[0], arr[1])
    assert not np.array_equal(arr[0], arr[2])


def test_organ_names_of_the_simulator_map_onto_the_organ_branch():
    names = {1: "body", 3: "muscle", 4: "lung_left", 5: "lung_right", 6: "liver", 7: "spleen",
             8: "kidney_left", 12: "aorta", 15: "vertebrae", 17: "ribs", 20: "bone_femur",
             11: "heart_blood_pool"}
    lut = organ_class_lut(names)
    cls = {n: ORGAN_CLASSES[lut[i]] for i, n in names.items()}
    assert cls["lung_left"] == cls["lung_right"] == "lung"
    assert cls["vertebrae"] == cls["ribs"] == cls["bone_femur"] == "bone"
    assert cls["body"] == cls["heart_blood_pool"] == "background"
    assert (cls["liver"], cls["spleen"], cls["kidney_left"], cls["aorta"], cls["muscle"]) == \
        ("liver", "spleen", "kidney", "aorta", "muscle")


# ------------------------------------------------------------------------------ shipped model
def test_shipped_model_loads_with_checked_hash_and_its_card_says_research_use(tmp_path):
    folder = resolve_model(MODEL_ID)
    nets, card = ds.load_model(MODEL_ID, "cpu")
    assert card["task"] == "denoise-segment"
    assert "not for diagnosis" in card["intended_use"]
    assert card["preprocessing"]["spacing_mm"] == [4.0, 4.0, 5.0]
    assert card["inference"]["steps"] >= 1 and card["inference"]["sampler"] in ("ddim", "dpmpp2m",
                                                                              "ddpm")
    assert card["curve"]["points"], "the quality-versus-steps curve is in the card"
    assert nets["segmenter"].encoder_kind == card["segmenter_encoder"]["chosen"]
    # a changed weights file is refused
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model_folder(bad)


# ------------------------------------------------------------------------------ the new shape
def test_predict_returns_the_specs_image_outputs_on_the_input_grid(tmp_path, tiny_model):
    """predict gives exactly the spec's volume and label-map outputs (uncertainty only with
    samples > 1), each on the PET's grid, and writes no file itself: the runner does."""
    model = ds.load_model(tiny_model, "cpu")
    pet = _pet(seed=2)
    images = {"pet": pet}
    image_outputs = {o.name for o in SPEC.outputs if o.kind in ("volume", "labelmap")}
    defaults = {p.name: p.default for p in SPEC.parameters}
    for samples, expected in ((2, image_outputs), (1, image_outputs - {"uncertainty"})):
        ctx = RunContext(out_dir=tmp_path, progress=NULL_PROGRESS, device=torch.device("cpu"))
        ds.check_inputs(images, defaults, ctx)
        out = ds.predict(images, {**defaults, "samples": samples}, model, ctx)
        assert set(out) == expected
        for name, img in out.items():
            assert img.GetSize() == pet.GetSize(), name
            assert np.allclose(img.GetSpacing(), pet.GetSpacing()), name
            assert np.allclose(img.GetOrigin(), pet.GetOrigin(), atol=1e-3), name
            assert np.allclose(img.GetDirection(), pet.GetDirection()), name
        assert set(np.unique(sitk.GetArrayFromImage(out["lesions"]))) <= {0, 1}
        assert ctx.manifest_extra["model_id"] == "amdiff-tiny"
        assert ctx.manifest_extra["inference"]["steps"] == 2       # the card's default
    assert list(tmp_path.iterdir()) == []


def test_x0_from_epsilon_inverts_the_forward_process_and_the_clip_bounds_x0():
    diff = ConditionalDiffusion(250, "cosine", "epsilon")
    torch.manual_seed(0)
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([3, 120])
    ab = diff.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps                    # Ho et al. eq. 4
    assert torch.allclose(x0_from_epsilon(x_t, eps, ab), x0, atol=1e-9)
    assert torch.allclose(epsilon_from_x0(x_t, x0, ab), eps, atol=1e-9)
    assert float(x0_from_epsilon(x_t[:1], eps[:1], float(ab[0]))[0, 0, 0, 0]) == \
        pytest.approx(float(x0[0, 0, 0, 0]), abs=1e-9)             # a float alpha-bar works too
    # near t = T an eps error of 0.05 puts the implied x0 far outside [-1, 1]; the wrapper clips it
    t_end = torch.tensor([249, 249])
    ab_end = diff.alphas_cumprod[t_end].float().view(-1, 1, 1, 1)
    x_end = (ab_end.sqrt() * x0.float() + (1 - ab_end).sqrt() * eps.float())
    wrong = eps.float() + 0.05
    assert float(x0_from_epsilon(x_end, wrong, ab_end).abs().max()) > 100
    wrapped = ClippedEpsilon(lambda inp, tt: wrong, diff.alphas_cumprod)
    eps_c = wrapped(torch.cat([x_end, x_end], 1), t_end)
    assert float(x0_from_epsilon(x_end, eps_c, ab_end).abs().max()) <= 1.0 + 1e-3


def _recipe_config(cohort: Path, run_dir: Path, **over) -> dict:
    return {**TINY, "cohort": str(cohort), "run_dir": str(run_dir), "fractions": [5], "val_cases": 0,
            "patch": 16, "batch": 2, "lor_max_t_fraction": 1.0, "ckpt_every": 0, "log_every": 1,
            "threads": 1, "export_id": "amdiff-test", **over}


def test_recipe_trains_through_the_trainer_and_resumes_to_identical_weights(tmp_path):
    """Three steps straight equal two steps, an interruption and a --resume to three (the data
    and noise of a step are fixed by its seed); the export stage writes the EMA as a model folder
    whose card cites the command."""
    cohort = tmp_path / "cohort"
    for i in range(2):
        _write_case(cohort / f"case_{i:04d}", seed=i)
    fixed = {"fixed_lambda": 1.0}   # lambda independent of max_steps, so 2 + 1 steps == 3 steps
    a, b = tmp_path / "a", tmp_path / "b"
    assert recipe.train(_recipe_config(cohort, a, max_steps=3, **fixed),
                        TrainOptions(config_path="configs/x.json")) == 0
    recipe.train(_recipe_config(cohort, b, max_steps=2, **fixed), TrainOptions(stages=["train"]))
    assert json.loads((b / "train" / "summary.json").read_text())["steps"] == 2
    with pytest.raises(InputError, match="--resume"):      # a run folder is never overwritten
        recipe.train(_recipe_config(cohort, b, max_steps=3, **fixed), TrainOptions(stages=["train"]))
    recipe.train(_recipe_config(cohort, b, max_steps=3, **fixed),
                 TrainOptions(resume=True, stages=["train"]))
    for name in ("weights.safetensors", "ema.safetensors"):
        wa = load_file(str(a / "train" / "checkpoint" / name))
        wb = load_file(str(b / "train" / "checkpoint" / name))
        assert set(wa) == set(wb) and len(wa) > 20
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    nets, card = load_model_folder(a / "export" / "model")
    assert card["id"] == "amdiff-test" and card["task"] == "denoise-segment"
    assert card["training"]["steps"] == 3
    assert card["training"]["command"] == "petdiffusion train denoise-segment --config configs/x.json"
    ema = load_file(str(a / "train" / "checkpoint" / "ema.safetensors"))
    for k, v in nets["segmenter"].state_dict().items():
        assert torch.equal(v, ema[f"segmenter.{k}"])
    steps = [json.loads(line) for line in (a / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in steps)


def test_lambda_warm_depends_on_the_step_only(tmp_path):
    """Eq. 11 over e / e_max = step / max_steps: the logged lambda of each step is the formula's
    value at that step, whatever the time it took."""
    cfg = recipe.DenoiseSegmentConfig(**TINY, max_steps=3, e_t_fraction=0.3)
    gen, rng = torch.Generator(), np.random.default_rng(0)
    expected = [0.0, math.exp(-5 * (1 - 1 / 3) ** 2), math.exp(-5 * (1 - 2 / 3) ** 2)]
    for step, lam in enumerate(expected):
        assert recipe.warm_lambda(cfg, StepInfo(step, 3, gen, rng)) == pytest.approx(lam, abs=1e-12)
    assert recipe.warm_lambda(cfg, StepInfo(1, 300, gen, rng)) == 0.0     # 1/300 < e_T/e_max
    fixed = recipe.DenoiseSegmentConfig(**TINY, fixed_lambda=0.7)
    assert recipe.warm_lambda(fixed, StepInfo(0, 3, gen, rng)) == 0.7
    cohort = tmp_path / "cohort"
    _write_case(cohort / "case_0000")
    recipe.train(_recipe_config(cohort, tmp_path / "run", max_steps=3, e_t_fraction=0.3),
                 TrainOptions(stages=["train"]))
    logged = [json.loads(line)["lambda"]
              for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(expected, abs=1e-12)


def test_evaluation_leaves_undefined_dice_and_nrmse_out_of_its_tables():
    """The shared metrics with the evaluation's conventions: two empty masks have no Dice (None,
    not the default 1.0 'they agree'), an empty class mask has no NRMSE (None, not an error)."""
    empty = np.zeros((4, 4), bool)
    one = empty.copy()
    one[1, 1:3] = True
    assert dice(empty, empty) == 1.0 and dice(empty, empty, empty=None) is None
    assert dice(one, empty, empty=None) == 0.0
    ref = np.arange(16, dtype=float).reshape(4, 4)
    with pytest.raises(InputError, match="empty"):
        nrmse(ref, ref + 1, empty)
    assert nrmse(ref, ref + 1, empty, undefined=None) is None
    assert nrmse(ref, ref + 1, one, undefined=None) == pytest.approx(1.0 / 1.0)   # range 6..7
