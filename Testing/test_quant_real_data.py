"""Issue 3 acceptance on real data: the two IBSI soft-tissue-sarcoma FDG patients (TCIA STS,
Vallieres et al. 2015), NIfTI PET in SUVbw with an expert GTV mask. MTV, SUVmax and SUVmean must
equal a direct numpy computation, in the table, in lesions.csv and through the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.cli.main import main
from PETDiffusionLib.quant.lesions import lesion_table
from PETDiffusionLib.quant.tables import write_quant_outputs

PATIENTS = ["STS_001", "STS_002"]


def direct_numbers(pet_path, mask_path) -> dict:
    pet = sitk.ReadImage(str(pet_path))
    suv = sitk.GetArrayFromImage(pet).astype(np.float64)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    voxel_ml = float(np.prod(pet.GetSpacing())) / 1000.0
    return {"voxels": int(mask.sum()), "volume_ml": mask.sum() * voxel_ml,
            "suv_max": suv[mask].max(), "suv_mean": suv[mask].mean(),
            "tlg": suv[mask].mean() * mask.sum() * voxel_ml}


@pytest.mark.parametrize("patient", PATIENTS)
def test_sarcoma_gtv_numbers_match_numpy_in_table_and_csv(shared_data, tmp_path, patient):
    folder = shared_data / "petct_sts" / "nifti" / patient
    expected = direct_numbers(folder / "PET_image.nii.gz", folder / "PET_mask.nii.gz")
    pet = sitk.ReadImage(str(folder / "PET_image.nii.gz"))
    mask = sitk.ReadImage(str(folder / "PET_mask.nii.gz"))
    rows = lesion_table(pet, mask)
    assert len(rows) >= 1
    assert sum(r["voxels"] for r in rows) == expected["voxels"]
    assert sum(r["volume_ml"] for r in rows) == pytest.approx(expected["volume_ml"], rel=1e-9)
    assert max(r["suv_max"] for r in rows) == pytest.approx(expected["suv_max"], rel=1e-6)
    biggest = max(rows, key=lambda r: r["voxels"])
    if len(rows) == 1:
        assert biggest["suv_mean"] == pytest.approx(expected["suv_mean"], rel=1e-6)
    # SUVpeak is a 1 mL average around a lesion voxel: never above SUVmax of the whole image
    assert biggest["suv_peak"] <= float(sitk.GetArrayViewFromImage(pet).max()) + 1e-6

    paths = write_quant_outputs(tmp_path, pet, mask)
    with open(paths["lesions_csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert {"lesion_id", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"} <= set(csv_rows[0])
    assert sum(float(r["volume_ml"]) for r in csv_rows) == pytest.approx(expected["volume_ml"], rel=1e-5)
    assert max(float(r["suv_max"]) for r in csv_rows) == pytest.approx(expected["suv_max"], rel=1e-5)
    summary = json.loads(paths["summary_json"].read_text())
    assert summary["tmtv_ml"] == pytest.approx(expected["volume_ml"], rel=1e-9)
    assert summary["lesion_count"] == len(rows)
    assert "organs_csv" not in paths   # no organ map given: no organ table made up


def test_cli_quantify_writes_csv_and_summary_for_sts_001(shared_data, tmp_path, capsys):
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    expected = direct_numbers(folder / "PET_image.nii.gz", folder / "PET_mask.nii.gz")
    names = tmp_path / "names.json"
    names.write_text('{"1": "GTV"}')
    rc = main(["quantify", "--pet", str(folder / "PET_image.nii.gz"), "--lesions",
               str(folder / "PET_mask.nii.gz"), "--organs", str(folder / "PET_mask.nii.gz"),
               "--organ-names", str(names), "--out", str(tmp_path / "out")])
    assert rc == 0
    with open(tmp_path / "out" / "organs.csv", newline="") as f:
        organ = next(csv.DictReader(f))
    assert organ["organ"] == "GTV" and int(organ["voxels"]) == expected["voxels"]
    assert float(organ["suv_mean"]) == pytest.approx(expected["suv_mean"], rel=1e-5)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ttlg"] == pytest.approx(expected["tlg"], rel=1e-6)


def test_cli_quantify_mask_on_ct_grid_fails_naming_file_and_writes_nothing(shared_data, tmp_path, capsys):
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    rc = main(["quantify", "--pet", str(folder / "PET_image.nii.gz"), "--lesions",
               str(folder / "CT_mask.nii.gz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "CT_mask.nii.gz" in err and "not on the grid" in err
    assert not (tmp_path / "out").exists()


def test_cli_quantify_empty_lesion_mask_is_a_clear_error(shared_data, tmp_path, capsys):
    folder = shared_data / "petct_sts" / "nifti" / "STS_002"
    mask = sitk.ReadImage(str(folder / "PET_mask.nii.gz")) * 0
    sitk.WriteImage(mask, str(tmp_path / "empty.nii.gz"))
    rc = main(["quantify", "--pet", str(folder / "PET_image.nii.gz"), "--lesions",
               str(tmp_path / "empty.nii.gz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "empty.nii.gz" in err and "empty" in err.split("empty.nii.gz", 1)[1]
    assert not (tmp_path / "out").exists()


def test_cli_quantify_by_threshold_saves_the_lesion_label_map(shared_data, tmp_path, capsys):
    folder = shared_data / "petct_sts" / "nifti" / "STS_002"
    rc = main(["quantify", "--pet", str(folder / "PET_image.nii.gz"), "--region",
               str(folder / "PET_mask.nii.gz"), "--threshold", "41%", "--out", str(tmp_path / "o")])
    assert rc == 0
    pet = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "PET_image.nii.gz")))
    gtv = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "PET_mask.nii.gz"))) > 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "lesions.nii.gz")))
    # the GTV is one VOI: lesion voxels are exactly the GTV voxels at >= 41 % of its SUVmax
    assert np.array_equal(labels > 0, gtv & (pet >= 0.41 * pet[gtv].max()))
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["thresholds"]["rule"] == "41%"
