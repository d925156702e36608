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
from PETDiffusionLib.io.images import read_image
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


# --------------------------------------------------------------------------------------------
# Issue 18: the report as a nuclear-medicine physician reads it
# --------------------------------------------------------------------------------------------
STS001_PET_DICOM = ("petct_sts", "dicom", "STS_001", "PET", "image")


def test_cli_report_on_real_sts001_pet_dicom_prints_study_header_units_and_lesions_by_suvmax(
        shared_data, tmp_path, capsys):
    """The scanner's own series (GE Discovery ST, Units GML): tracer, injected activity (tag
    3.88777472E8 Bq), uptake 10:35:00 -> 11:20:11 = 45.18 min, SUV type; units on MTV and TLG."""
    dicom = shared_data.joinpath(*STS001_PET_DICOM)
    rc = main(["report", "--pet", str(dicom), "--dicom-source", str(dicom), "--patient-id", "STS-pseudo-9",
               "--out", str(tmp_path / "r")])
    assert rc == 0
    out = capsys.readouterr().out
    for line in ("Tracer: FDG -- fluorodeoxyglucose (18F)", "Injected activity: 388.8 MBq",
                 "Injection time: 10:35:00", "Scan start: 11:20:11", "Uptake interval: 45.2 min",
                 "Weight: 71.0 kg", "Height: 163 cm", "Scanner: GE MEDICAL SYSTEMS Discovery ST",
                 "SUV type: SUVbw - Units GML", "Patient ID (pseudonym): STS-pseudo-9", "Study date: 2000-09-07"):
        assert line in out, line
    lesion_lines = [ln for ln in out.splitlines() if ln.strip().startswith("lesion ")]
    assert len(lesion_lines) == 10
    suvmax = [float(ln.split("SUVmax ")[1].split(" SUVbw")[0]) for ln in lesion_lines]
    assert suvmax == sorted(suvmax, reverse=True)
    pet = sitk.GetArrayFromImage(read_image(dicom))
    assert suvmax[0] == pytest.approx(float(pet.max()), abs=0.005)          # 25.41
    assert "MTV" in lesion_lines[0] and " mL" in lesion_lines[0] and "SUVbw*mL" in lesion_lines[0]
    assert "TMTV" in out and "TTLG" in out and out.count("SUVbw*mL") >= 11
    text = " ".join(pdf_text(tmp_path / "r" / "report.pdf").split())   # table headings wrap
    for piece in ("Tracer:", "FDG -- fluorodeoxyglucose (18F)", "388.8 MBq", "45.2 min", "SUVbw - Units GML",
                  "MTV (mL)", "TLG (SUVbw*mL)", "SUVmax (SUVbw)", "highest SUVmax first", "OSEM"):
        assert piece in text, piece
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["study"]["uptake_min"] == pytest.approx(45 + 11 / 60, abs=1e-9)
    assert report["study"]["injected_mbq"] == pytest.approx(388.777472)
    by_max = report["lesion_ids_by_suvmax"]
    rows = {r["lesion_id"]: r for r in report["lesions"]}
    assert [rows[i]["suv_max"] for i in by_max] == sorted((r["suv_max"] for r in rows.values()), reverse=True)


def test_study_header_of_the_whole_body_bqml_series_shows_the_decay_rule(shared_data):
    """Units BQML, DecayCorrection START: the SUV rule the DICOM reader applied is printed with the type."""
    from PETDiffusionLib.report.dicom_seg import source_series
    from PETDiffusionLib.report.study import header_lines, study_header
    folder = shared_data / "petwb_sts001" / "PET" / "image"
    study = study_header(read_image(folder), source_series(folder))
    lines = header_lines(study)
    assert lines["Injected activity"] == "388.8 MBq" and lines["Uptake interval"] == "45.2 min"
    assert lines["SUV type"].startswith("SUVbw - Units BQML; DecayCorrection START")
    assert study["stored_units"] == "BQML" and study["decay_correction"] == "START"


def organ_phantom():
    """A 40^3 grid at 2 mm: liver (label 1, SUV 2.0), aorta (label 2, SUV 1.6), lung (label 3, 0.5),
    a lesion in the liver (SUV 8, 3x3x3) and one in the lung (SUV 5, 2x2x2); a low-count 'input'
    PET that is 10 % higher in the first lesion and 20 % lower in the second."""
    suv = np.full((40, 40, 40), 0.5, np.float32)
    organs = np.zeros(suv.shape, np.uint8)
    organs[5:35, 2:22, 2:22] = 1
    suv[organs == 1] = 2.0
    organs[5:35, 26:32, 26:32] = 2
    suv[organs == 2] = 1.6
    organs[5:35, 2:22, 24:25] = 3
    organs[5:35, 30:38, 2:20] = 3
    lesions = np.zeros(suv.shape, np.uint8)
    lesions[5:8, 3:6, 3:6] = 1                 # a liver corner, outside the 3 cm reference sphere
    suv[5:8, 3:6, 3:6] = 8.0
    lesions[20:22, 33:35, 5:7] = 1
    suv[20:22, 33:35, 5:7] = 5.0
    low = suv.copy()
    low[5:8, 3:6, 3:6] = 8.8
    low[20:22, 33:35, 5:7] = 4.0

    def img(a):
        i = sitk.GetImageFromArray(a)
        i.SetSpacing((2.0, 2.0, 2.0))
        i.SetOrigin((-40.0, -30.0, 100.0))
        return i
    return img(suv), img(lesions), img(organs), {1: "liver", 2: "aorta", 3: "lung"}, img(low)


def test_lesions_carry_their_organ_ras_centroid_and_the_measured_input_suvs(tmp_path):
    pet, lesions, organs, names, low = organ_phantom()
    paths = make_report(tmp_path, pet, lesions, organs, names, task="denoise-segment", model_id="m",
                        model_version="1", synthetic=True, input_pet=low)
    report = json.loads(paths["report_json"].read_text())
    rows = sorted(report["lesions"], key=lambda r: r["lesion_id"])
    assert [r["organ"] for r in rows] == ["liver", "lung"]
    assert [r["input_suv_max"] for r in rows] == pytest.approx([8.8, 4.0])
    assert [r["suv_max"] for r in rows] == pytest.approx([8.0, 5.0])
    # centroid of voxels x, y 3..5 and z 5..7 at 2 mm from the origin (-40, -30, 100) LPS = (-32, -22, 112);
    # Slicer shows RAS: (32, 22, 112)
    first = rows[0]
    assert (first["centroid_x_mm"], first["centroid_y_mm"], first["centroid_z_mm"]) == pytest.approx((-32, -22, 112))
    assert (first["centroid_r_mm"], first["centroid_a_mm"], first["centroid_s_mm"]) == pytest.approx((32, 22, 112))
    assert first["input_suv_peak"] > first["suv_peak"]            # input 10 % higher in that lesion
    with open(paths["lesions_csv"], newline="") as f:
        header = next(csv.reader(f))
    assert header[-6:] == ["centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "organ", "input_suv_max",
                           "input_suv_peak"]
    text = pdf_text(paths["report_pdf"])
    assert "Input SUVmax" in text and "8.80" in text and "4.00" in text
    assert "32.0, 22.0, 112.0" in text and "Site" in text
    table = text[text.index("highest SUVmax first"):]
    # the liver lesion (SUVmax 8) before the lung lesion (SUVmax 5, centroid RAS (29, -37, 141))
    assert table.index("32.0, 22.0, 112.0") < table.index("29.0, -37.0, 141.0")
    assert table.index("liver") < table.index("lung")


def test_percist_liver_threshold_and_mediastinal_blood_pool_are_reported(tmp_path):
    """Uniform organs make the references exact: liver 2.0 (SD 0): PERCIST 1.5 x 2.0 + 2 x 0 = 3.00;
    blood pool 1.6: 2.0 x 1.6 + 0 = 3.20 (Wahl 2009)."""
    pet, lesions, organs, names, _ = organ_phantom()
    paths = make_report(tmp_path, pet, lesions, organs, names, task="quantify", model_id=None,
                        model_version=None, synthetic=False)
    refs = json.loads(paths["report_json"].read_text())["references"]
    assert refs["liver"]["reference_mean"] == pytest.approx(2.0) and refs["liver"]["threshold_suv"] == pytest.approx(3.0)
    assert refs["blood_pool"]["reference_mean"] == pytest.approx(1.6)
    assert refs["blood_pool"]["threshold_suv"] == pytest.approx(3.2)
    text = pdf_text(paths["report_pdf"])
    assert "PERCIST threshold 1.5 x mean + 2 x SD = 3.00 SUVbw" in text
    assert "Mediastinal blood pool" in text and "= 3.20 SUVbw" in text
    assert "within the EANM liver range" in text


def test_summary_json_keys_stay_those_of_the_baseline_demo(tmp_path):
    """The baseline demo comparison diffs summary.json: new report facts go to report.json only."""
    pet, lesions, organs, names, low = organ_phantom()
    paths = make_report(tmp_path, pet, lesions, organs, names, task="denoise-segment", model_id="m",
                        model_version="1", synthetic=True, input_pet=low)
    keys = set(json.loads(paths["summary_json"].read_text()))
    assert keys == {"tmtv_ml", "ttlg", "lesion_count", "thresholds", "lesion_mask_given", "organ_map_given",
                    "voxel_spacing_mm", "grid_size", "voxel_volume_ml", "suv_units", "definitions", "software",
                    "created_utc", "research_use_only", "liver_reference"}


def test_report_without_lesions_has_no_lesion_panel_and_formatted_task_details(tmp_path):
    """ct-to-pet: organs but no lesion mask: two MIP panels (no empty scatter), no lesion caption; the
    task details print kVp 120 as 120, not 120.0000."""
    from PIL import Image
    import io as _io
    from PETDiffusionLib.report.pdf import _mip_figure
    pet, lesions, organs, names, _ = organ_phantom()
    paths = make_report(tmp_path, pet, None, organs, names, task="ct-to-pet", model_id="cpdm", model_version="0.2.0",
                        synthetic=True, extra={"kVp": 120.0, "kVp source": "default", "steps": 5, "nrmse": 0.12345})
    text = pdf_text(paths["report_pdf"])
    assert "kVp: 120" in text and "kVp: 120." not in text and "nrmse: 0.1235" in text and "steps: 5" in text
    assert "lesion contours" not in text and "Lesions: not measured" in text
    without = Image.open(_io.BytesIO(_mip_figure(pet, None, None, True)))
    with_lesions = Image.open(_io.BytesIO(_mip_figure(pet, lesions, [
        {"lesion_id": 1, "volume_ml": 0.2, "suv_max": 8.0, "centroid_x_mm": -32, "centroid_y_mm": -22,
         "centroid_z_mm": 112}], True)))
    assert without.size[0] / without.size[1] == pytest.approx(5.2 / 3.1, rel=0.02)      # two panels
    assert with_lesions.size[0] / with_lesions.size[1] == pytest.approx(7.3 / 3.1, rel=0.02)  # three


def test_model_output_report_takes_the_suv_rule_and_patient_facts_from_the_measured_input(shared_data, tmp_path):
    """The denoised PET carries no DICOM facts; the low-count input it came from does (io.dicom
    metadata): weight, height and the SUV rule reach the header through input_pet."""
    measured = read_image(shared_data.joinpath(*STS001_PET_DICOM))
    output = sitk.GetImageFromArray(sitk.GetArrayFromImage(measured) * 0.9)
    output.CopyInformation(measured)
    output.SetMetaData("PETDiffusion.units", "SUVbw")
    mask = sitk.Cast(output > 10.0, sitk.sitkUInt8)
    paths = make_report(tmp_path, output, mask, task="denoise-segment", model_id="m", model_version="1",
                        synthetic=True, input_pet=measured)
    study = json.loads(paths["report_json"].read_text())["study"]
    assert study["weight_kg"] == 71.0 and study["height_m"] == 1.63
    assert study["suv_type"] == "SUVbw" and study["suv_rule"].startswith("Units GML")
    text = " ".join(pdf_text(paths["report_pdf"]).split())
    assert "SUV type: SUVbw - Units GML" in text and "71.0 kg" in text
    rows = json.loads(paths["report_json"].read_text())["lesions"]
    top = max(rows, key=lambda r: r["suv_max"])
    assert top["input_suv_max"] == pytest.approx(top["suv_max"] / 0.9, rel=1e-5)
