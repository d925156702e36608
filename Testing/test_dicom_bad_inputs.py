"""Bad DICOM input: each case gives a clear InputError naming the folder or file, and the `suv`
command leaves no output file behind (issue 2 acceptance)."""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETDiffusionLib.cli.main import main
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.dicom import find_series, read_dicom_image, read_series
from PETDiffusionLib.io.dicom_export import PETHeader, write_dicom_series
from PETDiffusionLib.io.images import set_units

INJECTION = datetime(2025, 3, 4, 9, 0)


def small_pet(folder: Path, slices: int = 6) -> list[Path]:
    """A 8×8×slices PET in SUVbw (SUV 1 everywhere) written as BQML with full SUV headers."""
    img = sitk.GetImageFromArray(np.ones((slices, 8, 8), np.float32))
    img.SetSpacing((3.0, 3.0, 2.5))
    set_units(img, "SUVbw")
    header = PETHeader(weight_kg=80, dose_bq=300e6, injection_time=INJECTION,
                       series_time=INJECTION + timedelta(minutes=60))
    return write_dicom_series(img, folder, "PT", pet=header, synthetic=True, description="test")


def _suv_cli(folder: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["suv", str(folder), "--out", str(out)])
    return code, capsys.readouterr().err


def _no_output_left(out: Path) -> None:
    assert not out.exists()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir()), "temporary file left"


def test_a_clean_small_series_reads_as_suv_1(tmp_path):
    small_pet(tmp_path / "pet")
    arr = sitk.GetArrayFromImage(read_dicom_image(tmp_path / "pet"))
    assert np.allclose(arr, 1.0, atol=1e-4)


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM image series found: the folder is empty"):
        find_series(tmp_path / "empty")
    code, err = _suv_cli(tmp_path / "empty", tmp_path / "out" / "suv.nii.gz", capsys)
    assert code == 2 and "empty" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "out" / "suv.nii.gz").exists()


def test_folder_with_only_non_dicom_files_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="holds 1 file.*no DICOM image"):
        find_series(tmp_path)


def test_non_dicom_files_mixed_in_are_skipped(tmp_path):
    small_pet(tmp_path / "pet")
    (tmp_path / "pet" / "README.txt").write_text("scanner export notes")
    (tmp_path / "pet" / "thumbs.db").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "pet" / "sub").mkdir()
    (tmp_path / "pet" / "sub" / "DICOMDIR.bak").write_bytes(b"\x00" * 10)
    series = find_series(tmp_path / "pet")
    assert len(series) == 1 and series[0].n_slices == 6


def test_two_series_in_one_folder_are_listed_and_refused(tmp_path, capsys):
    small_pet(tmp_path / "both" / "a")
    small_pet(tmp_path / "both" / "b")
    with pytest.raises(InputError, match="2 series found, expected one") as err:
        read_dicom_image(tmp_path / "both")
    assert str(err.value).count("SYNTHETIC test") == 2
    out = tmp_path / "out.nii.gz"
    code, err_text = _suv_cli(tmp_path / "both", out, capsys)
    assert code == 2 and "2 series found" in err_text
    assert not out.exists()


def test_a_missing_slice_is_a_gap_error_unless_allowed(tmp_path, capsys):
    files = small_pet(tmp_path / "pet")
    files[2].unlink()
    with pytest.raises(InputError, match="gap: about 1 missing slice"):
        read_series(tmp_path / "pet")
    filled = read_series(tmp_path / "pet", allow_gaps=True)
    assert filled.GetSize() == (8, 8, 6)
    assert float(sitk.GetArrayFromImage(filled)[2].max()) == 0.0
    out = tmp_path / "out" / "suv.nii.gz"
    out.parent.mkdir()
    code, err = _suv_cli(tmp_path / "pet", out, capsys)
    assert code == 2 and "missing slice" in err
    _no_output_left(out)


def test_duplicate_positions_are_refused(tmp_path):
    files = small_pet(tmp_path / "pet")
    ds = pydicom.dcmread(files[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "pet" / "copy.dcm")
    with pytest.raises(InputError, match="duplicate slice positions"):
        read_series(tmp_path / "pet")


def test_mixed_orientations_are_refused(tmp_path):
    files = small_pet(tmp_path / "pet")
    ds = pydicom.dcmread(files[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(files[3])
    with pytest.raises(InputError, match="mixed orientations"):
        read_series(tmp_path / "pet")


def test_a_truncated_file_is_named(tmp_path, capsys):
    files = small_pet(tmp_path / "pet")
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match="truncated DICOM file") as err:
        find_series(tmp_path / "pet")
    assert files[4].name in str(err.value)
    out = tmp_path / "out" / "suv.nii.gz"
    out.parent.mkdir()
    code, err_text = _suv_cli(tmp_path / "pet", out, capsys)
    assert code == 2 and files[4].name in err_text
    _no_output_left(out)


def test_a_file_cut_inside_its_header_is_named(tmp_path):
    files = small_pet(tmp_path / "pet")
    files[0].write_bytes(files[0].read_bytes()[:400])
    with pytest.raises(InputError, match="truncated") as err:
        find_series(tmp_path / "pet")
    assert files[0].name in str(err.value)


def test_missing_suv_tags_are_named_and_no_output_is_written(tmp_path, capsys):
    files = small_pet(tmp_path / "pet")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PatientWeight
        del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose
        ds.save_as(f)
    info = find_series(tmp_path / "pet")[0]
    assert info.suv_ok is False
    assert any("PatientWeight" in m for m in info.suv_missing)
    out = tmp_path / "out" / "suv.nii.gz"
    out.parent.mkdir()
    code, err = _suv_cli(tmp_path / "pet", out, capsys)
    assert code == 2
    assert "PatientWeight" in err and "RadionuclideTotalDose" in err and "--weight-kg" in err
    _no_output_left(out)
    # supplying them by hand works
    assert main(["suv", str(tmp_path / "pet"), "--out", str(out), "--weight-kg", "80",
                 "--dose-mbq", "300"]) == 0
    assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), 1.0, atol=1e-4)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_series(tmp_path / "nowhere")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_sheared_stack_from_gantry_tilt_is_refused(tmp_path):
    files = small_pet(tmp_path / "pet")
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]  # each slice shifted 0.5 mm in y
        ds.save_as(f)
    with pytest.raises(InputError, match="sheared"):
        read_series(tmp_path / "pet")
