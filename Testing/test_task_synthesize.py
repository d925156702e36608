"""synthesize (TotalGen): the spec and CLI (no image inputs), the intensity and demographic channels,
the simulator population's clavicle-to-sacrum boxes and their 4x stratified sub-sampling, the
recipe's stages on two subjects with tiny networks (a few steps, never a real model), the task end
to end through run_task with that tiny model (geometry, units, synthetic flags, organ labels), and
out-of-range demographics (refused with nothing written, or warned in manifest and report)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETDiffusionLib.cli.main import build_parser
from PETDiffusionLib.diffusion.edm import EDM
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import get_units, is_synthetic, read_image
from PETDiffusionLib.methods.totalgen import batches, intensities
from PETDiffusionLib.methods.totalgen.data import (HR_SHAPE, LR_SHAPE, ORGAN_GROUP_ID,
                                                   ORGAN_CHANNELS, REGION_BOTTOM_FRACTION, REGION_TOP_FRACTION,
                                                   SDF_CLIP_MM, load_cohort, organ_indicators,
                                                   organ_sdf_unit,
                                                   out_of_range, simulate_subject)
from PETDiffusionLib.methods.totalgen.intensities import demographic_channels
from PETDiffusionLib.methods.totalgen.synthesis import (OUTPUT_LABELS, body_box, body_figures,
                                                        organ_encoding, organ_map, sample_global,
                                                        synthesize)
from PETDiffusionLib.tasks.registry import task_spec
from PETDiffusionLib.tasks.runner import run_task
from PETDiffusionLib.tasks.synthesize.pipeline import load_model
from PETDiffusionLib.tasks.synthesize.spec import DEFAULT_CHURN
from PETDiffusionLib.training.loop import TrainOptions
from PETDiffusionLib.training.recipes import synthesize as recipe

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthesize.json"
FAST = {"steps": 2, "sr_steps": 6}   # 6 = spec.MIN_SR_STEPS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The recipe's stages (prepare 2 + 0 subjects, 2 steps of each tiny network, export)."""
    root = tmp_path_factory.mktemp("synth")
    cfg = json.loads(CONFIG.read_text())
    cfg.update(run_dir=str(root / "run"), export=str(root / "model"), train_dir=str(root / "train"),
               heldout_dir=str(root / "heldout"), train_subjects=2, heldout_subjects=0,
               trainer={"ckpt_every": 0, "log_every": 1})
    cfg["global"].update(base=4, steps=2, warmup=0, batch=2)
    cfg["sr"].update(base=4, steps=2, warmup=0, batch=2, patch=16)
    torch.manual_seed(0)
    assert recipe.train(cfg, TrainOptions(config_path="tiny.json")) == 0
    return {"root": root, "cfg": cfg, "model": root / "model"}


def test_spec_has_no_image_inputs_demographic_parameters_and_synthetic_outputs():
    spec = task_spec("synthesize")
    assert spec.inputs == ()
    assert [p.name for p in spec.parameters][:6] == ["age", "sex", "height", "weight", "seed", "steps"]
    assert spec.parameter("sex").choices == ("M", "F")
    outs = {o.name: o for o in spec.outputs}
    assert {o.filename for o in spec.outputs} >= {"ct.nii.gz", "pet.nii.gz", "organs.nii.gz", "organs.csv"}
    assert all(o.synthetic for o in spec.outputs)
    assert outs["ct"].units == "HU" and outs["pet"].units == "SUVbw"
    assert outs["organs"].label_names == "organ_labels"
    assert spec.slicer_module == "DemographicsSynthesis"


def test_cli_run_takes_demographics_without_any_image_flag():
    args = build_parser().parse_args(["run", "synthesize", "--age", "59", "--sex", "F", "--height",
                                      "165", "--weight", "76", "--seed", "2", "--out", "x"])
    assert (args.param_age, args.param_sex, args.param_height, args.param_weight, args.param_seed) == \
        (59.0, "F", 165.0, 76.0, 2)


def test_intensities_are_totalgen_scalings_and_invert():
    hu = np.array([-1000.0, -500.0, 0.0, 500.0, 1200.0])
    assert np.allclose(intensities.ct_to_unit(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.allclose(intensities.unit_to_ct(intensities.ct_to_unit(hu[1:4])), hu[1:4])
    suv = np.array([0.0, 1.0, 2.3, 25.0, 40.0])
    u = intensities.pet_to_unit(suv)
    assert np.isclose(u[3], 1.0) and np.isclose(u[4], 1.0)          # clipped at SUV 25
    assert np.isclose(u[1], np.log(2) / np.log(26))
    assert np.allclose(intensities.unit_to_pet(u[:4]), suv[:4], atol=1e-9)
    assert intensities.demographic_vector(58, "M", 177, 83) == [0.58, 1.0, 1.77, 0.83]
    assert intensities.demographic_vector(59, "F", 165, 76)[1] == 0.0
    pos = intensities.position_channels((4, 6, 8), (1, 2, 3), (2, 2, 2))
    assert pos.shape == (3, 2, 2, 2)
    assert np.isclose(float(pos[0, 0, 0, 0]), -1 + 2 / 3) and np.isclose(float(pos[2, 0, 0, 0]), -1 + 6 / 7)


def test_subject_box_runs_clavicle_to_sacrum_with_the_paper_organs():
    s = simulate_subject(7, 0)
    h = s["demographics"].height_cm
    assert s["ct_hu"].shape == HR_SHAPE
    body_rows = np.where((s["ct_hu"] > -500).sum((1, 2)) > 50)[0]
    expected = (REGION_BOTTOM_FRACTION - REGION_TOP_FRACTION) * h * 10 / 4.0   # slices of 4 mm
    assert body_rows.min() == 0 and abs(body_rows.max() + 1 - expected) <= 1.5
    assert (s["suv"][int(np.ceil(expected)) + 1:] == 0).all()                  # zero-padded below
    for organ in ("liver", "heart", "kidneys"):
        assert (s["groups"] == ORGAN_GROUP_ID[organ]).sum() > 100


def test_stratified_subsampling_gives_lr_volumes_of_the_hr_box(tiny):
    arrays, infos = load_cohort(tiny["cfg"]["train_dir"])
    b = batches.global_batch(arrays, infos, 3, np.random.default_rng(0))
    assert b["x0"].shape == (3, 8, *LR_SHAPE) and b["demo"].shape == (3, 4)
    ct_lr = (b["x0"][0, 0].numpy() + 1) / 2
    offsets = [(z, y, x) for z in range(4) for y in range(4) for x in range(4)]
    matches = [o for o in offsets for a in arrays
               if np.allclose(a["ct"][o[0]::4, o[1]::4, o[2]::4], ct_lr, atol=1e-6)]
    assert len(matches) >= 1                      # one of the 64 sub-samplings of a subject
    sr = batches.sr_batch(arrays, infos, 2, 16, np.random.default_rng(1))
    assert sr["high"].shape == (2, 2, 16, 16, 16) and sr["cond"].shape == (2, 7, 16, 16, 16)
    assert float((sr["high"] - sr["up"]).abs().mean()) < 0.2   # the residual is small


def test_recipe_stages_write_summaries_and_a_loadable_model(tiny):
    run = Path(tiny["cfg"]["run_dir"])
    for stage in ("prepare", "global", "sr", "export"):
        assert (run / stage / "summary.json").is_file()
    card = json.loads((tiny["model"] / "card.json").read_text())
    assert card["task"] == "synthesize" and set(card["networks"]) == {"global", "sr"}
    assert "petdiffusion train synthesize --config tiny.json" == card["training"]["command"]
    assert json.loads((run / "global" / "summary.json").read_text())["lr_volumes"] == 2 * 64


def test_end_to_end_out_of_range_allowed_writes_everything_marked_synthetic_and_warned(tmp_path, tiny):
    """One run through run_task (demographics outside the range, allowed): every output on the 4 mm
    box, units and synthetic flags, organ names in the manifest, the warning in manifest and report."""
    params = {**FAST, "seed": 3, "age": 5.0, "allow_out_of_range": True}
    manifest = json.loads(run_task("synthesize", {}, params, tmp_path / "out",
                                   model_path=str(tiny["model"])).read_text())
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ct.nii.gz", "pet.nii.gz", "organs.nii.gz", "organs.csv", "report.pdf", "report.json",
         "summary.json", "manifest.json"])
    ct, pet, org = (read_image(out / f) for f in ("ct.nii.gz", "pet.nii.gz", "organs.nii.gz"))
    for img in (ct, pet, org):
        assert img.GetSize() == HR_SHAPE[::-1] and img.GetSpacing() == (4.0, 4.0, 4.0)
        assert is_synthetic(img)
    assert get_units(ct) == "HU" and get_units(pet) == "SUVbw"
    a = sitk.GetArrayFromImage(ct)
    assert a.min() >= -500 - 1e-3 and a.max() <= 500 + 1e-3
    assert sitk.GetArrayFromImage(pet).min() >= 0
    assert manifest["organ_labels"] == {str(k): v for k, v in OUTPUT_LABELS.items()}
    assert manifest["synthetic"] is True
    assert manifest["demographics"] == {"age": 5.0, "sex": "M", "height_cm": 177.0,
                                        "weight_kg": 83.0, "bmi": 26.49}
    assert manifest["out_of_range"] is True and "OUT OF TRAINING RANGE: age 5 y" in manifest["warnings"][0]
    assert "OUT OF TRAINING RANGE" in (out / "report.json").read_text()
    header = (out / "organs.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["organ", "label", "voxels", "volume_ml"] and "suv_max" in header


def test_same_seed_same_subject_other_seed_other_subject(tiny):
    nets, _ = load_model(tiny["model"], "cpu")

    def ct(seed):
        return synthesize(nets, 58.0, "M", 177.0, 83.0, steps=2, sr_steps=0, seed=seed).ct_hu
    a, b, c = ct(1), ct(1), ct(2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_out_of_range_demographics_are_refused_naming_them_and_nothing_is_written(tmp_path, tiny):
    with pytest.raises(InputError) as err:
        run_task("synthesize", {}, {**FAST, "age": 5.0, "weight": 300.0}, tmp_path / "bad",
                 model_path=str(tiny["model"]))
    msg = str(err.value)
    assert "age 5 y is outside the training range 20-85 y" in msg and "BMI 95.8" in msg
    assert "--allow-out-of-range" in msg
    assert not (tmp_path / "bad").exists()
    assert out_of_range(58, "M", 177, 83) == []
    with pytest.raises(InputError, match="sr_steps: 2 stage-2 steps"):
        run_task("synthesize", {}, {**FAST, "sr_steps": 2}, tmp_path / "few", model_path=str(tiny["model"]))
    assert not (tmp_path / "few").exists()
    assert len(out_of_range(40, "F", 190, 70)) == 1     # 190 cm is above the women's range


def test_body_box_is_aligned_and_covers_the_body():
    ct = torch.zeros(HR_SHAPE)
    ct[10:50, 30:70, 40:90] = 1.0
    box = body_box(ct, margin=8, multiple=4)
    assert [(s.start, s.stop) for s in box] == [(2, 58), (22, 78), (32, 100)]
    assert all((s.stop - s.start) % 4 == 0 for s in box)


def test_air_just_above_the_ct_window_floor_is_not_body_nor_soft_tissue():
    """A synthetic CT's air sits a few HU above the -500 HU window floor; body, trunk length and the
    'other_soft_tissue' label must come from tissue only (SYNTHETIC_BODY_HU)."""
    rng = np.random.default_rng(0)
    ct = (-500.0 + rng.uniform(0, 60, HR_SHAPE)).astype(np.float32)     # air with sampling noise
    ct[:100, 30:90, 30:100] = 40.0                                       # a 400 mm trunk of soft tissue
    ct[20:40, 40:60, 40:60] = -100.0                                     # fat inside it
    fig = body_figures(ct)
    assert fig["trunk_length_mm"] == 400.0
    assert fig["body_l"] == pytest.approx(100 * 60 * 70 * 64 / 1e6)
    labels = organ_map(torch.zeros((len(ORGAN_CHANNELS), *LR_SHAPE)), ct)
    names = {v: k for k, v in OUTPUT_LABELS.items()}
    assert (labels[100:] == 0).all() and (labels[:, :30] == 0).all()
    assert (labels[50, 50, 50] == names["other_soft_tissue"]) and labels[30, 50, 50] == names["fat"]


def test_a_standardised_stage_one_keeps_its_statistics_and_reuses_the_sr_of_another_model(tmp_path, tiny):
    """Stage 1 standardised per channel (mean 0, SD sigma_data = 0.5 over the training voxels) and
    stage 2 taken from an existing model (sr_from): no sr stage runs, the export holds the
    statistics and that model's SR weights, and a sample comes back to network units."""
    cfg = json.loads(json.dumps(tiny["cfg"]))
    cfg.update(run_dir=str(tmp_path / "run"), export=str(tmp_path / "model"), sr_from=str(tiny["model"]))
    cfg["global"]["standardise"] = True
    assert recipe.train(cfg, TrainOptions(config_path="std.json")) == 0
    assert not (tmp_path / "run" / "sr").exists()
    arrays, _ = load_cohort(cfg["train_dir"])
    mean, std = recipe.channel_statistics(arrays)
    x = np.concatenate([batches.hr_channels(a).reshape(8, -1) * 2 - 1 for a in arrays], axis=1)
    np.testing.assert_allclose(mean.numpy(), x.mean(1), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), np.maximum(x.std(1), recipe.STD_FLOOR), atol=1e-5)
    nets, card = load_model(tmp_path / "model", "cpu")
    g = nets["global"]
    assert card["networks"]["global"]["args"]["standardise"] is True
    assert torch.allclose(g.data_mean, mean) and torch.allclose(g.data_std, std)
    assert card["training"]["stages"]["sr"]["reused_from"].startswith("totalgen")
    donor, _ = load_model(tiny["model"], "cpu")
    for k, v in donor["sr"].state_dict().items():
        assert torch.equal(nets["sr"].state_dict()[k], v)
    b = batches.global_batch(arrays, load_cohort(cfg["train_dir"])[1], 2, np.random.default_rng(0))
    z = g.to_standard(b["x0"])
    assert torch.allclose(g.from_standard(z), b["x0"], atol=1e-5)
    all_z = g.to_standard(torch.from_numpy(x.astype(np.float32)).T.reshape(1, -1, 8).permute(0, 2, 1))
    big = std.numpy() > recipe.STD_FLOOR
    np.testing.assert_allclose(all_z[0].std(1).numpy()[big], 0.5, rtol=1e-3)
    # the sampler's output is mapped back: sample_global = from_standard(EDM sample), clamped
    demo = intensities.demographic_vector(58, "M", 177, 83)
    cond = demographic_channels(torch.tensor([demo], dtype=torch.float32), LR_SHAPE)
    raw = EDM().sample(g, shape=(1, 8, *LR_SHAPE), cond=cond, steps=2, seed=1).samples[0]
    lr = sample_global(g, demo, 2, 1)
    torch.testing.assert_close(lr, g.from_standard(raw)[0].clamp(-1, 1))
    assert not torch.allclose(lr, raw[0].clamp(-1, 1))
    out = synthesize(nets, 58.0, "M", 177.0, 83.0, steps=2, sr_steps=1, seed=1)
    assert out.ct_hu.shape == HR_SHAPE and np.isfinite(out.suv).all()


def test_stage_one_fine_tunes_from_another_model_with_its_own_floor_and_refuses_another_shape(tmp_path, tiny):
    """global.init_from starts stage 1 from another model's weights (at learning rate 0 the export
    keeps them exactly), the statistics are computed again with global.std_floor, and a donor of
    another architecture is refused naming it."""
    cfg = json.loads(json.dumps(tiny["cfg"]))
    cfg.update(run_dir=str(tmp_path / "run"), export=str(tmp_path / "model"), sr_from=str(tiny["model"]))
    cfg["global"].update(standardise=True, std_floor=0.3, init_from=str(tiny["model"]), lr=0.0)
    assert recipe.train(cfg, TrainOptions(config_path="ft.json")) == 0
    nets, card = load_model(tmp_path / "model", "cpu")
    donor, _ = load_model(tiny["model"], "cpu")
    own = nets["global"].state_dict()
    for k, v in donor["global"].state_dict().items():
        assert torch.equal(own[k], v), k
    arrays, _ = load_cohort(cfg["train_dir"])
    _, std = recipe.channel_statistics(arrays, 0.3)
    assert torch.allclose(nets["global"].data_std, std) and float(std.min()) == pytest.approx(0.3)
    assert card["training"]["stages"]["global"]["init_from"] == str(tiny["model"])
    other = json.loads(json.dumps(cfg))
    other.update(run_dir=str(tmp_path / "run2"), export=str(tmp_path / "model2"))
    other["global"]["base"] = 8
    with pytest.raises(InputError, match="does not match"):
        recipe.train(other, TrainOptions(config_path="ft2.json"))
    assert not (tmp_path / "model2").exists()


def test_signed_distance_channels_give_back_each_organ_and_saturate_away_from_it():
    """organ_sdf_unit on a simulated subject: unit > 0.5 is exactly the organ, the voxels either side
    of its surface sit at +-2 mm (voxel faces), and 48 mm away the channel is 0 (bounding-box cut
    exact). A 4 mm cube checks the distances against hand-computed values."""
    cube = np.zeros((40, 40, 40), np.uint8)
    cube[10:20, 10:20, 10:20] = ORGAN_GROUP_ID["liver"]
    u = organ_sdf_unit(cube)[ORGAN_GROUP_ID["liver"] - 1].astype(np.float64)
    d = (u - 0.5) * 2 * SDF_CLIP_MM
    assert d[15, 15, 10] == pytest.approx(2.0, abs=0.05)     # inside, on the face
    assert d[15, 15, 9] == pytest.approx(-2.0, abs=0.05)     # outside neighbour
    assert d[15, 15, 14] == pytest.approx(18.0, abs=0.05)    # 4.5 voxels from the face
    assert d[15, 15, 24] == pytest.approx(-18.0, abs=0.05)
    assert u[15, 15, 39] == 0.0 and u[39, 39, 39] == 0.0      # beyond 48 mm: saturated
    other = organ_sdf_unit(cube)[ORGAN_GROUP_ID["kidneys"] - 1]
    assert (other == 0).all()                                 # an absent organ is 'far' everywhere
    s = simulate_subject(1700, 0)
    enc = organ_sdf_unit(s["groups"])
    for name, gid in ORGAN_GROUP_ID.items():
        assert np.array_equal(enc[gid - 1] > 0.5, s["groups"] == gid), name


def test_exact_lr_signed_distances_decode_to_the_organ_volumes_better_than_indicators():
    """Perfect stage-1 organ channels (the 16 mm sub-sampling of a simulated subject) decoded to the
    4 mm grid: signed distances by cubic B-splines keep liver, kidneys and heart within 5 % of their
    volume; indicators, linear (the 0.1-0.3 decoding), lose more of the thin kidneys."""
    s = simulate_subject(91700, 3)
    enc = organ_sdf_unit(s["groups"]).astype(np.float32)
    ind = organ_indicators(s["groups"])
    sub = (slice(None), slice(1, None, 4), slice(2, None, 4), slice(1, None, 4))
    sdf_lab = organ_map(torch.from_numpy(np.ascontiguousarray(enc[sub])), s["ct_hu"], "sdf")
    ind_lab = organ_map(torch.from_numpy(np.ascontiguousarray(ind[sub])), s["ct_hu"], "indicator")
    for name in ("liver", "kidneys", "heart"):
        gid = ORGAN_GROUP_ID[name]
        true = (s["groups"] == gid).sum()
        assert abs((sdf_lab == gid).sum() / true - 1) < 0.05, name
    k = ORGAN_GROUP_ID["kidneys"]
    true = (s["groups"] == k).sum()
    assert abs((sdf_lab == k).sum() / true - 1) < abs((ind_lab == k).sum() / true - 1)


def test_a_signed_distance_stage_one_is_recorded_in_the_card_and_decoded_by_it(tmp_path, tiny):
    """global.organ_encoding "sdf": the training subjects carry signed-distance channels (the batch's
    organ channels are their sub-sampling), the card records the encoding, the task decodes with
    it; an unknown encoding is refused naming the key, and cards without one are indicators."""
    cfg = json.loads(json.dumps(tiny["cfg"]))
    cfg.update(run_dir=str(tmp_path / "run"), export=str(tmp_path / "model"), sr_from=str(tiny["model"]))
    cfg["global"].update(organ_encoding="sdf")
    assert recipe.train(cfg, TrainOptions(config_path="sdf.json")) == 0
    nets, card = load_model(tmp_path / "model", "cpu")
    assert card["preprocessing"]["organ_encoding"] == "sdf" == organ_encoding(card)
    assert card["preprocessing"]["sdf_clip_mm"] == SDF_CLIP_MM
    assert card["training"]["stages"]["global"]["organ_encoding"] == "sdf"
    arrays, infos = load_cohort(cfg["train_dir"])
    recipe.encode_organs(arrays, cfg["global"])
    b = batches.global_batch(arrays, infos, 1, np.random.default_rng(3))
    organs = (b["x0"][0, 2:] + 1) / 2
    assert 0 < float((organs > 0.5).float().mean()) < 0.2 and len(torch.unique(organs)) > 10
    assert organ_encoding(load_model(tiny["model"], "cpu")[1]) == "indicator"
    run_task("synthesize", {}, {"age": 58, "sex": "M", "height": 177, "weight": 83, "seed": 5, **FAST},
             tmp_path / "out", model_path=str(tmp_path / "model"))
    written = sitk.GetArrayFromImage(read_image(tmp_path / "out" / "organs.nii.gz"))[::-1]
    direct = synthesize(nets, 58.0, "M", 177.0, 83.0, FAST["steps"], FAST["sr_steps"], 5, encoding="sdf",
                        s_churn=DEFAULT_CHURN)   # the task's default
    assert np.array_equal(written, direct.organs)
    bad = json.loads(json.dumps(cfg))
    bad["global"]["organ_encoding"] = "onehot"
    with pytest.raises(InputError, match="organ_encoding"):
        recipe.encode_organs(arrays, bad["global"])


def test_bspline_upsampling_matches_scipy_cubic_zoom():
    """splines.bspline_upsample equals scipy.ndimage.zoom(order=3, grid_mode=True, mode='nearest')
    (the reference implementation of interpolating cubic B-splines) on random data, passes through
    the samples' own values at the matching positions of a factor-1 'upsampling', and refuses a
    non-integer factor."""
    from scipy.ndimage import zoom
    from PETDiffusionLib.methods.totalgen.splines import bspline_upsample
    x = torch.from_numpy(np.random.default_rng(0).random((2, 7, 6, 9)).astype(np.float32))
    ours = bspline_upsample(x, 4).numpy()
    ref = np.stack([zoom(c, 4, order=3, mode="nearest", grid_mode=True) for c in x.numpy()])
    assert ours.shape == (2, 28, 24, 36)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(bspline_upsample(x, 1).numpy(), x.numpy(), atol=2e-5)
    with pytest.raises(ValueError, match="factor"):
        bspline_upsample(x, 2.5)


def test_churn_reaches_stage_one_in_the_task_and_the_evaluation_and_zero_is_the_deterministic_sampler(tmp_path, tiny):
    from PETDiffusionLib.methods.totalgen.synthesis import demographic_vector, sample_global_batch
    from PETDiffusionLib.tasks.synthesize.evaluate import acceptance
    nets, _ = load_model(tiny["model"], "cpu")
    demos = [demographic_vector(58.0, "M", 177.0, 83.0)]
    zero, churned = (sample_global_batch(nets["global"], demos, 4, 5, c) for c in (0.0, 40.0))
    plain = sample_global_batch(nets["global"], demos, 4, 5)
    assert torch.equal(plain, zero) and not torch.allclose(plain, churned)
    assert torch.equal(churned, sample_global_batch(nets["global"], demos, 4, 5, 40.0))  # seeded noise
    one = synthesize(nets, 58.0, "M", 177.0, 83.0, steps=4, sr_steps=0, seed=5, s_churn=40.0)
    assert np.array_equal(one.lr_unit, ((sample_global(nets["global"], demos[0], 4, 5, 40.0) + 1) / 2).numpy())

    params = {**FAST, "sr_steps": 0, "seed": 3, "churn": 40.0}
    run_task("synthesize", {}, params, tmp_path / "out", model_path=str(tiny["model"]))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["extra"]["churn"] == 40.0
    with pytest.raises(InputError, match="churn"):
        run_task("synthesize", {}, {**params, "churn": -1.0}, tmp_path / "bad", model_path=str(tiny["model"]))
    a0, a40 = (acceptance(nets, 2, 0, 1, 0, churn=c) for c in (0.0, 40.0))
    assert a0["M"]["per_seed"] != a40["M"]["per_seed"]
