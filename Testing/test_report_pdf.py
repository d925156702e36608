"""Issue 3 acceptance for reports: the PDF opens, renders to a non-blank page, carries the numbers
measured on the real sarcoma patients, the research-use line always and the synthetic banner
exactly when the image is synthetic; bad input leaves no files behind."""
from __future__ import annotations

import csv
import json

import numpy as np
import pypdfium2 as pdfium
import pytest
import SimpleITK as sitk

from PETDiffusionLib.cli.main import main
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.report.pdf import make_report


def pdf_text(path) -> str:
    doc = pdfium.PdfDocument(str(path))
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def sts(shared_data, patient):
    folder = shared_data / "petct_sts" / "nifti" / patient
    return (sitk.ReadImage(str(folder / "PET_image.nii.gz")),
            sitk.ReadImage(str(folder / "PET_mask.nii.gz")))


@pytest.mark.parametrize("patient", ["STS_001", "STS_002"])
def test_report_pdf_shows_numpy_mtv_suvmax_suvmean_of_real_patient(shared_data, tmp_path, patient):
    pet, mask = sts(shared_data, patient)
    suv = sitk.GetArrayFromImage(pet).astype(np.float64)
    m = sitk.GetArrayFromImage(mask) > 0
    mtv = m.sum() * np.prod(pet.GetSpacing()) / 1000.0
    paths = make_report(tmp_path, pet, mask, task="quantify", model_id=None, model_version=None,
                        synthetic=False, patient_id="STS-pseudo-1", study_date="2015-01-01")
    assert {p.name for p in paths.values()} == {"report.pdf", "report.json", "lesions.csv",
                                                 "summary.json"}
    text = pdf_text(paths["report_pdf"])
    for number in (f"{mtv:.2f}", f"{suv[m].max():.2f}", f"{suv[m].mean():.2f}",
                   f"{suv[m].mean() * mtv:.2f}", str(int(m.sum()))):
        assert number in text, number
    assert "STS-pseudo-1" in text and "2015-01-01" in text and "quantify" in text
    assert "Research use only" in text
    assert "SYNTHETIC" not in text
    with open(paths["lesions_csv"], newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["volume_ml"]) == pytest.approx(mtv, rel=1e-5)
    report = json.loads(paths["report_json"].read_text())
    assert report["synthetic"] is False and report["summary"]["tmtv_ml"] == pytest.approx(mtv)


def test_report_pdf_renders_to_a_non_blank_page(shared_data, tmp_path):
    pet, mask = sts(shared_data, "STS_001")
    paths = make_report(tmp_path, pet, mask, task="quantify", model_id=None, model_version=None,
                        synthetic=False)
    doc = pdfium.PdfDocument(str(paths["report_pdf"]))
    assert 1 <= len(doc) <= 2
    page = np.asarray(doc[0].render(scale=1.0).to_pil().convert("L"))
    doc.close()
    dark = page < 128
    assert dark.mean() > 0.01                      # text, tables and images are drawn
    assert page.std() > 20                         # not a uniform page
    # the MIP panel (upper-middle band of the page) holds grey levels, not just text
    band = page[page.shape[0] // 4: page.shape[0] // 2]
    assert len(np.unique(band)) > 50
    png = tmp_path / "page1.png"
    doc = pdfium.PdfDocument(str(paths["report_pdf"]))
    doc[0].render(scale=1.0).to_pil().save(png)
    doc.close()
    assert png.stat().st_size > 10_000


def test_synthetic_report_carries_banner_model_and_task_details(shared_data, tmp_path):
    pet, mask = sts(shared_data, "STS_002")
    paths = make_report(tmp_path, pet, mask, mask, {1: "GTV"}, task="ct-to-pet",
                        model_id="cpdm-demo", model_version="0.3", synthetic=True,
                        extra={"nrmse_whole": 0.1234})
    text = pdf_text(paths["report_pdf"])
    assert "SYNTHETIC IMAGE - RESEARCH USE ONLY, NOT FOR DIAGNOSIS" in text
    assert "cpdm-demo" in text and "0.3" in text and "ct-to-pet" in text
    assert "nrmse_whole: 0.1234" in text
    assert "GTV" in text and "organs_csv" in paths
    assert json.loads(paths["report_json"].read_text())["banner"].startswith("SYNTHETIC")


def test_report_of_image_flagged_synthetic_in_metadata_gets_banner(tmp_path):
    arr = np.ones((20, 20, 20), np.float32)
    arr[8:12, 8:12, 8:12] = 6.0
    pet = sitk.GetImageFromArray(arr)
    pet.SetMetaData("PETDiffusion.synthetic", "1")
    mask = sitk.GetImageFromArray((arr > 3).astype(np.uint8))
    paths = make_report(tmp_path, pet, mask, task="denoise", model_id="m", model_version="1",
                        synthetic=False)
    assert "SYNTHETIC IMAGE" in pdf_text(paths["report_pdf"])


def test_report_with_nan_pet_writes_nothing(tmp_path):
    arr = np.ones((10, 10, 10), np.float32)
    arr[5, 5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        make_report(tmp_path / "out", sitk.GetImageFromArray(arr), task="quantify", model_id=None,
                    model_version=None, synthetic=False)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_report_synthetic_flag(shared_data, tmp_path, capsys):
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    rc = main(["report", "--pet", str(folder / "PET_image.nii.gz"), "--lesions",
               str(folder / "PET_mask.nii.gz"), "--synthetic", "--task", "denoise-segment",
               "--out", str(tmp_path / "r")])
    assert rc == 0
    text = pdf_text(tmp_path / "r" / "report.pdf")
    assert "SYNTHETIC IMAGE" in text and "denoise-segment" in text


def test_report_with_60_lesions_and_45_organs_stays_within_two_pages(tmp_path):
    # 60 separate 2x2x2-voxel lesions and 45 organ slabs: the PDF keeps to 2 pages, the CSVs hold all
    arr = np.ones((60, 64, 64), np.float32)
    lesions = np.zeros(arr.shape, np.uint8)
    for i in range(60):
        z, y = 4 * (i // 10) + 2, 6 * (i % 10) + 2
        lesions[z:z + 2, y:y + 2, 10:12] = 1
        arr[z:z + 2, y:y + 2, 10:12] = 3.0 + i / 10
    organs = np.zeros(arr.shape, np.uint8)
    for k in range(45):
        organs[k, :, 40:60] = k + 1
    pet = sitk.GetImageFromArray(arr)
    paths = make_report(tmp_path, pet, sitk.GetImageFromArray(lesions),
                        sitk.GetImageFromArray(organs), {k + 1: f"organ {k + 1}" for k in range(46)},
                        task="quantify", model_id=None, model_version=None, synthetic=False)
    doc = pdfium.PdfDocument(str(paths["report_pdf"]))
    assert len(doc) <= 2
    doc.close()
    text = pdf_text(paths["report_pdf"])
    assert "20 more lesions in lesions.csv" in text and "5 more organs in organs.csv" in text
    assert "absent from the organ map: organ 46" in text
    with open(paths["lesions_csv"]) as f:
        assert len(f.read().strip().splitlines()) == 61
