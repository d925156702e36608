"""Datasets over a tiny cohort in the phantom layout and over AutoPET-style study folders, and a
tiny training run on them end to end (train, resume, export, load)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.images import write_image
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.training.datasets import (RandomPatchDataset3D, SliceDataset25D,
                                               VolumeDataset, find_studies)
from PETDiffusionLib.training.loop import TrainConfig, Trainer

Z, Y, X = 6, 8, 8


def write(arr: np.ndarray, path, units: str) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    write_image(img, path, units=units)


def make_case(folder, index: int) -> None:
    """Slice z of every PET image holds the value index*100 + z: easy to check by hand."""
    folder.mkdir(parents=True)
    z = np.arange(Z, dtype=np.float32)[:, None, None] * np.ones((Z, Y, X), np.float32)
    pet = index * 100 + z
    write(pet, folder / "pet_ac.nii.gz", "SUVbw")
    write(pet / 10, folder / "pet_low_10.nii.gz", "SUVbw")
    write(pet / 4, folder / "pet_low_25.nii.gz", "SUVbw")
    write((-1000 + 10 * z).astype(np.int16), folder / "ct.nii.gz", "HU")
    lesions = np.zeros((Z, Y, X), np.uint16)
    lesions[4, 6, 6] = 1
    write(lesions, folder / "lesions.nii.gz", "label")
    write(np.ones((Z, Y, X), np.uint16), folder / "organs.nii.gz", "label")
    (folder / "case.json").write_text(json.dumps({"index": index}))


@pytest.fixture
def cohort(tmp_path):
    for i in range(2):
        make_case(tmp_path / "cohort" / f"case_{i:04d}", i)
    return tmp_path / "cohort"


def test_cohort_volumes_have_roles_on_one_grid(cohort):
    ds = VolumeDataset(cohort, ["pet", "pet_low", "ct", "lesions"])
    assert len(ds) == 2
    item = ds[1]
    assert item["id"] == "case_0001" and item["pet"].shape == (Z, Y, X)
    assert float(item["pet"][3, 0, 0]) == 103.0
    # the lowest count level present is the default: pet_low_10
    assert float(item["pet_low"][3, 0, 0]) == pytest.approx(10.3)
    assert item["lesions"].dtype == torch.int64 and int(item["lesions"].sum()) == 1
    assert item["spacing"].tolist() == [2.0, 2.0, 3.0]
    ds25 = VolumeDataset(cohort, ["pet_low"], low_count_percent=25)
    assert float(ds25[0]["pet_low"][2, 0, 0]) == pytest.approx(0.5)


def test_missing_file_names_the_case_and_the_file(cohort):
    (cohort / "case_0001" / "ct.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case_0001.*ct\.nii\.gz"):
        VolumeDataset(cohort, ["pet", "ct"])


def test_slices_25d_samples_stack_neighbours_with_replicated_edges(cohort):
    ds = SliceDataset25D(VolumeDataset(cohort, ["pet_low", "pet"]), context_roles=["pet_low"],
                         target_roles=["pet"], context=1)
    assert len(ds) == 2 * Z
    first = ds[0]
    assert first["pet_low"].shape == (3, Y, X) and first["pet"].shape == (1, Y, X)
    assert first["pet_low"][:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.1])
    last_of_second = ds[2 * Z - 1]
    assert last_of_second["pet"][0, 0, 0] == 105.0
    assert last_of_second["pet_low"][:, 0, 0].tolist() == pytest.approx([10.4, 10.5, 10.5])


def test_lesion_patches_are_centred_on_lesions(cohort):
    ds = RandomPatchDataset3D(VolumeDataset(cohort, ["pet", "lesions"]), ["pet", "lesions"],
                              patch_size=(4, 4, 4), patches_per_volume=3, lesion_fraction=1.0)
    assert len(ds) == 6
    for i in range(len(ds)):
        p = ds[i]
        assert p["pet"].shape == (1, 4, 4, 4) and int(p["lesions"].sum()) == 1
    big = RandomPatchDataset3D(VolumeDataset(cohort, ["pet"]), ["pet"], patch_size=(8, 8, 8))
    assert big[0]["pet"].shape == (1, 8, 8, 8)  # zero-padded from 6 slices


def test_autopet_layout_reads_ctres_suv_seg(tmp_path):
    study = tmp_path / "autopet" / "PETCT_0a1" / "2001-01-01-NA-PET-CT"
    study.mkdir(parents=True)
    write(np.full((Z, Y, X), 2.5, np.float32), study / "SUV.nii.gz", "SUVbw")
    write(np.full((Z, Y, X), 40, np.int16), study / "CTres.nii.gz", "HU")
    write(np.zeros((Z, Y, X), np.uint8), study / "SEG.nii.gz", "label")
    studies = find_studies(tmp_path / "autopet", ["ct", "pet", "lesions"])
    assert [s.id for s in studies] == ["PETCT_0a1/2001-01-01-NA-PET-CT"]
    item = VolumeDataset(tmp_path / "autopet", ["ct", "pet", "lesions"])[0]
    assert float(item["pet"].mean()) == 2.5 and float(item["ct"].mean()) == 40.0
    with pytest.raises(InputError, match="PET_LOW.nii.gz"):
        find_studies(tmp_path / "autopet", ["pet_low"])


def test_tiny_training_on_the_cohort_runs_resumes_and_exports(cohort, tmp_path):
    ds = SliceDataset25D(VolumeDataset(cohort, ["pet_low", "pet"]), ["pet_low"], ["pet"], context=1)
    diffusion = ConditionalDiffusion(num_train_timesteps=20)

    def loss_fn(batch, nets):
        conv = nets["denoiser"]
        loss = diffusion.training_loss(lambda x, t: conv(x), batch["pet"] / 100, batch["pet_low"] / 10)
        return loss, {}
    spec = {"class": "torch.nn.Conv2d",
            "args": {"in_channels": 4, "out_channels": 1, "kernel_size": 3, "padding": 1}}

    def trainer(max_steps):
        torch.manual_seed(0)
        cfg = TrainConfig(max_steps=max_steps, batch_size=4, ckpt_every=2, progress_bar=False)
        return Trainer(cfg, {"denoiser": build_network(spec)}, loss_fn, ds, run_dir=tmp_path / "run")
    trainer(2).fit()
    t = trainer(4)
    t.fit(resume=True)
    assert t.step == 4
    folder = t.export(tmp_path / "model", {"id": "tiny-cohort", "task": "denoise-segment",
                                            "version": "0.0.1", "training": {"data": str(cohort)}})
    nets, card = load_model_folder(folder)
    assert card["training"]["data"] == str(cohort) and card["training"]["steps"] == 4
    assert nets["denoiser"](torch.zeros(1, 4, Y, X)).shape == (1, 1, Y, X)


def test_a_real_phantom_cohort_reads_into_roles(tmp_path):
    """The layout written by `petdiffusion phantom` (issue 4), two tiny cases."""
    from PETDiffusionLib.phantom.case import PhantomConfig, generate_cohort
    from PETDiffusionLib.physics.acquisition import AcquisitionConfig
    cfg = PhantomConfig(size=32, slices=24, images=("ac", "low"),
                        acquisition=AcquisitionConfig(fractions=(10,)))
    generate_cohort(tmp_path / "ph", n=2, seed=0, cfg=cfg)
    ds = VolumeDataset(tmp_path / "ph", ["ct", "pet", "pet_low", "organs", "lesions"])
    item = ds[0]
    assert len(ds) == 2 and item["pet"].shape == (24, 32, 32) == item["ct"].shape
    assert float(item["ct"].min()) <= -900  # air around the body, in HU
    assert float(item["pet"].max()) > 1.0 and int(item["organs"].max()) > 0
    slices = SliceDataset25D(ds, ["pet_low", "ct"], ["pet"], context=2)
    assert slices[10]["pet_low"].shape == (5, 32, 32) and len(slices) == 48
