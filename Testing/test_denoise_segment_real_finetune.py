"""denoise-segment on real PET: low-count versions of the real sarcoma crops, the training pieces
that mix them with the phantom (organ loss only where organs are annotated, padding of small
crops, initialisation from a model folder) and the lesion-threshold calibration."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import is_synthetic, read_image
from PETDiffusionLib.methods.amdiff.cases import CaseArrays, SliceSampler, pad_case
from PETDiffusionLib.methods.amdiff.losses import focal_dice_ce, segmentation_loss
from PETDiffusionLib.models.registry import load_model_folder, save_model_folder
from PETDiffusionLib.tasks.denoise_segment import evaluate as ds_evaluate
from PETDiffusionLib.tasks.denoise_segment import pipeline as ds
from PETDiffusionLib.tasks.denoise_segment import studies
from PETDiffusionLib.tasks.denoise_segment.spec import MODEL_ID
from PETDiffusionLib.training import real_sts
from PETDiffusionLib.training.loop import TrainOptions
from PETDiffusionLib.training.recipes import denoise_segment as recipe

TINY = {"denoiser": {"context": 1, "channels": [8, 8, 16, 16], "norm_num_groups": 4,
                     "num_head_channels": 8},
        "revision": {"hidden": 4, "layers": 2},
        "segmenter": {"channels": [4, 8, 8, 8], "encoder": "conv", "use_ct": True}}


def _tiny_folder(folder, seed=3, card_extra=None):
    torch.manual_seed(seed)
    cfg = recipe.DenoiseSegmentConfig(**TINY)
    nets = recipe.build_networks(cfg)
    card = {"id": "tiny", "task": "denoise-segment", "version": "0",
            "networks": recipe.network_specs(cfg),
            "preprocessing": {"suv_cutoff": 20.0, "spacing_mm": [8.0, 8.0, 10.0]},
            "diffusion": {"schedule": "cosine", "prediction": "epsilon", "num_train_timesteps": 250},
            "inference": {"steps": 1, "start_fraction": 0.4, "sampler": "ddim", "slice_batch": 8},
            **(card_extra or {})}
    return nets, save_model_folder(folder, nets, card)


def _write_case(case: Path, seed: int = 0) -> None:
    """A small phantom-layout case: body with two hot spheres, CT, labels."""
    rng = np.random.default_rng(seed)
    case.mkdir(parents=True)
    z, y, x = np.mgrid[0:10, 0:32, 0:32]
    body = (y - 16) ** 2 + (x - 16) ** 2 < 14 ** 2
    les = (((z - 5) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) < 9) | \
        (((z - 4) ** 2 + (y - 20) ** 2 + (x - 21) ** 2) < 5)
    suv = (body * 1.0 + les * (5.0 + 0.1 * x)).astype(np.float32)   # graded lesion uptake
    arrays = {"suv_true": suv, "pet_low_10": np.clip(suv + rng.normal(0, 0.4, suv.shape) * body, 0,
                                                     None).astype(np.float32),
              "ct": np.where(body, 40.0, -1000.0).astype(np.float32),
              "lesions": les.astype(np.uint8), "organs": body.astype(np.uint8)}
    for name, arr in arrays.items():
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((8.0, 8.0, 10.0))
        sitk.WriteImage(img, str(case / f"{name}.nii.gz"))
    (case / "case.json").write_text(json.dumps({"organ_labels": {"1": "liver"}}))


def test_split_is_fixed_by_case_id_and_the_two_reported_cases_are_excluded():
    assert real_sts.split_of("STS_015") == "validation"
    assert real_sts.split_of("STS_016") == "finetune"
    assert {"STS_001", "STS_002"} <= set(real_sts.EXCLUDED)


def test_low_count_versions_of_a_real_crop(tmp_path, shared_data):
    """STS_014 (with CT): the case lands on the 4 x 4 x 5 mm grid with its expert GTV; the low-count
    images keep the mean uptake and get noisier as the count level drops."""
    src = shared_data / "petct_sts_more" / "STS_014"
    info = real_sts.build_case(src, tmp_path / "case_0014", 14, (25, 5), seed=1)
    assert info["split"] == "finetune" and info["ct"] and info["organs_annotated"] is False
    case = tmp_path / "case_0014"
    true = sitk.ReadImage(str(case / "suv_true.nii.gz"))
    assert np.allclose(true.GetSpacing(), real_sts.WORKING_SPACING_MM)
    # GTV volume is kept by nearest-neighbour resampling (within 10 %)
    gtv = sitk.ReadImage(str(src / "PET_mask.nii.gz"))
    gtv_ml = float(sitk.GetArrayFromImage(gtv).astype(bool).sum()) * np.prod(gtv.GetSpacing()) / 1000
    assert info["gtv_ml"] == pytest.approx(gtv_ml, rel=0.10)
    t = sitk.GetArrayFromImage(true)
    body = t > 0.3
    err = {}
    for f in (25, 5):
        low = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"pet_low_{f}.nii.gz")))
        assert low.shape == t.shape and low.min() >= 0
        assert float(low[body].mean()) == pytest.approx(float(t[body].mean()), rel=0.10)
        err[f] = float(np.sqrt(np.mean((low[body] - t[body]) ** 2)))
    assert err[5] > err[25]
    assert json.loads((case / "case.json").read_text())["synthetic"] is False
    # the real reference is not marked synthetic; the simulated low-count image is
    assert not is_synthetic(read_image(case / "suv_true.nii.gz"))
    assert is_synthetic(read_image(case / "pet_low_5.nii.gz"))


def test_missing_pet_of_a_sarcoma_case_is_named(tmp_path):
    (tmp_path / "STS_099").mkdir()
    with pytest.raises(InputError, match="PET_image.nii.gz"):
        real_sts.build_case(tmp_path / "STS_099", tmp_path / "out", 99, (5,), 0)
    assert not (tmp_path / "out").exists()


def test_organ_term_only_over_annotated_samples():
    torch.manual_seed(0)
    les_logits, org_logits = torch.randn(3, 2, 8, 8), torch.randn(3, 8, 8, 8)
    les = torch.randint(0, 2, (3, 1, 8, 8))
    org = torch.randint(0, 8, (3, 1, 8, 8))
    none = segmentation_loss(les_logits, org_logits, les, org,
                             organs_annotated=torch.tensor([False, False, False]))
    assert float(none) == pytest.approx(float(focal_dice_ce(les_logits, les)))
    some = segmentation_loss(les_logits, org_logits, les, org,
                             organs_annotated=torch.tensor([True, False, True]))
    expect = focal_dice_ce(les_logits, les) + focal_dice_ce(org_logits[[0, 2]], org[[0, 2]])
    assert float(some) == pytest.approx(float(expect))
    assert float(segmentation_loss(les_logits, org_logits, les, org)) == pytest.approx(
        float(focal_dice_ce(les_logits, les) + focal_dice_ce(org_logits, org)))


def test_small_crops_are_padded_to_the_patch_and_batches_mix_both_cohorts():
    rng = np.random.default_rng(0)
    big = CaseArrays("phantom", rng.random((6, 70, 70), dtype=np.float32),
                            {5: rng.random((6, 70, 70)).astype(np.float16)},
                            np.ones((6, 70, 70), np.uint8), np.zeros((6, 70, 70), np.uint8),
                            None, np.array([], int))
    les = np.zeros((6, 30, 41), np.uint8)
    les[2:4, 10:15, 10:15] = 1
    small = CaseArrays("real", np.ones((6, 30, 41), np.float32),
                              {5: np.ones((6, 30, 41), np.float16)}, np.zeros_like(les), les,
                              np.full((6, 30, 41), 20, np.float16), np.array([2, 3]),
                              organs_annotated=False)
    padded = pad_case(small, 64)
    assert padded.suv.shape == (6, 64, 64) and padded.ct.shape == (6, 64, 64)
    assert padded.lesions.sum() == les.sum() and padded.suv.sum() == small.suv.sum()
    assert float(padded.ct.min()) == -1000.0            # air around the crop
    assert pad_case(big, 64) is big
    sampler = SliceSampler([big], [5], 64, context=1, extra=[padded], extra_fraction=0.5)
    batch = sampler.batch(32, np.random.default_rng(0))
    assert batch["low"].shape == (32, 3, 64, 64)
    ann = batch["organs_annotated"]
    assert 0 < int(ann.sum()) < 32                       # both cohorts drawn
    assert torch.all(batch["organs"][~ann] == 0)


def test_fine_tuning_starts_from_the_model_folder(tmp_path):
    """init_model: step 0 of a fine-tune holds the given model's weights (checked via the export
    stage of a 0-step run, which saves the networks it started with)."""
    nets, start = _tiny_folder(tmp_path / "start")
    cohort = tmp_path / "cohort" / "case_0000"
    cohort.mkdir(parents=True)
    arr = np.ones((6, 20, 20), np.float32)
    for name in ("suv_true", "pet_low_5", "organs", "lesions"):
        sitk.WriteImage(sitk.GetImageFromArray(arr if "organs" not in name and "lesions" not in name
                                               else arr.astype(np.uint8)),
                        str(cohort / f"{name}.nii.gz"))
    (cohort / "case.json").write_text(json.dumps({"organ_labels": {"1": "liver"}}))
    config = {**TINY, "cohort": str(tmp_path / "cohort"), "run_dir": str(tmp_path / "run"),
              "fractions": [5], "val_cases": 0, "max_steps": 0, "patch": 16, "batch": 2,
              "init_model": str(start), "export_id": "x"}
    assert recipe.train(config, TrainOptions()) == 0
    got, card = load_model_folder(tmp_path / "run" / "export" / "model")
    assert card["id"] == "x" and card["training"]["config"]["init_model"] == str(start)
    for k in nets:
        for (n, a), b in zip(nets[k].state_dict().items(), got[k].state_dict().values()):
            assert torch.equal(a, b), (k, n)


def test_lesion_threshold_calibration_writes_the_card_and_the_task_uses_it(tmp_path):
    """Calibration on a validation case picks the grid value with the best mean Dice, writes it
    into the card without touching the weights (the sha256 still matches), and the task then uses
    it when the lesion_threshold parameter is 0; a given value overrides it."""
    _, folder = _tiny_folder(tmp_path / "model")
    _write_case(tmp_path / "cohort" / "case_0000")
    res = studies.calibrate_lesion_threshold(folder, tmp_path / "cohort", [0], fractions=(10,),
                                             write_card=True)
    table = res["table"]
    assert [r["threshold"] for r in table] == list(studies.CALIBRATION_THRESHOLDS)
    assert res["chosen"]["mean_dice"] == max(r["mean_dice"] for r in table)
    nets, card = load_model_folder(folder)               # sha256 still verified
    chosen = res["chosen"]["threshold"]
    assert card["inference"]["lesion_threshold"] == chosen
    assert card["lesion_threshold_calibration"]["cases"] == ["case_0000"]
    pet = sitk.ReadImage(str(tmp_path / "cohort" / "case_0000" / "pet_low_10.nii.gz"))
    assert ds.denoise_segment_image(pet, None, nets, card, {})["_info"]["lesion_threshold"] == chosen
    assert ds.denoise_segment_image(pet, None, nets, card,
                                    {"lesion_threshold": 0.42})["_info"]["lesion_threshold"] == 0.42


def test_evaluation_of_a_real_cohort_skips_organ_scores(tmp_path, capsys):
    """A case without organ annotations (real PET) is scored on the whole image and the GTV only."""
    _, folder = _tiny_folder(tmp_path / "model")
    for i, split in ((0, "tune"), (1, "validation")):
        case = tmp_path / "cohort" / f"case_{i:04d}"
        _write_case(case, seed=i)
        (case / "pet_low_5.nii.gz").write_bytes((case / "pet_low_10.nii.gz").read_bytes())
        (case / "case.json").write_text(json.dumps({"organ_labels": {}, "organs_annotated": False,
                                                    "split": split}))
    args = argparse.Namespace(cohort=str(tmp_path / "cohort"), split="validation", max_cases=0,
                              fractions="10,5", model=str(folder), tune_cohort=str(tmp_path / "cohort"),
                              tune_cases="0", steps=0, start_fraction=0.0, lesion_threshold=0.0,
                              no_ct=False, out=str(tmp_path / "eval.json"))
    text = ds_evaluate.evaluate(args)
    assert "== 10 % counts, 1 cases ==" in text
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["cases"] == ["case_0001"] and result["split"] == "validation"
    row = result["per_case"][0]
    assert row["nrmse"]["model"]["whole"] is not None and row["nrmse"]["model"]["lesion"] is not None
    assert row["nrmse"]["model"]["liver"] is None and row["dice"]["model"]["liver"] is None
    assert row["organ_suvmean_bias_pct"] == {}
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cohort" / "case_0001" /
                                                      "suv_true.nii.gz")))
    assert row["suvmax_in_true_lesions"]["truth"] == pytest.approx(float(truth.max()))


def test_shipped_real_finetuned_model_loads_and_its_card_states_data_split_and_figures():
    nets, card = ds.load_model("amdiff-sts-2p5d", "cpu")   # sha256 checked on load
    assert card["task"] == "denoise-segment" and "not for diagnosis" in card["intended_use"]
    assert card["preprocessing"]["spacing_mm"] == [4.0, 4.0, 5.0]
    cfg = card["training"]["config"]
    assert cfg["extra_cohort"] and cfg["extra_split"] == "finetune" and cfg["init_model"]
    assert "STS_001" in card["training"]["fine_tuning_real_data"]
    real = card["evaluation_real"]
    assert real["settings"]["split"] == "validation"
    assert not set(real["settings"]["cases"]) & {"case_0001", "case_0002"}
    for f in ("10", "5"):
        assert real["summary"][f]["dice"]["model"]["lesion"]["mean"] is not None
    # the native-resolution model is the task's default now (issue 13); both working-grid AMDiff
    # models carry a lesion threshold calibrated on the phantom validation cases, as it does
    _, default = ds.load_model(None, "cpu")
    assert default["id"] == MODEL_ID == "amdiff-native-2p5d"
    assert default["preprocessing"]["grid"] == "native" and default["evaluation_real"]["result"]
    for mid in ("amdiff-native-2p5d", "amdiff-sts-2p5d", "amdiff-phantom-2p5d"):
        _, c = ds.load_model(mid, "cpu")
        cal = c["lesion_threshold_calibration"]
        assert c["inference"]["lesion_threshold"] == cal["chosen"]["threshold"]
        assert cal["cases"] == ["case_0000", "case_0001"]
