"""Hostile inputs (issue 19): each one built from a copy (in tmp_path) of the real data in
../shared/data (IBSI DRO_0_0, the IBSI/TCIA sarcoma STS_001 PET/CT, the whole-body petwb_sts001 PET),
run through the real command line (cli.main.main, or a subprocess where a signal is sent). Each bad
input must give exit status 2 with a message naming the file and the problem, and leave nothing at
or beside --out; each odd but valid input must give the right answer.

Then property-based fuzzing (hypothesis) of the SUV plausibility rules and of the DICOM reader over
mutated real headers: no uncaught exception, never a silently implausible SUV.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from PETDiffusionLib.cli.main import main
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.dicom import find_series, read_dicom_image, read_pet_suv
from PETDiffusionLib.io.images import get_warnings, read_image, write_image
from PETDiffusionLib.physics.suv import suv_factor
from PETDiffusionLib.physics.suv_rules import DEFAULT_LIMITS

DRO = "suv_dro_ibsi/DRO/DRO_0_0/PT"          # 20 slices, SUV 0.2 / 1.0 / 4.0, scan 60 min p.i.
STS_PET_DICOM = "petct_sts/dicom/STS_001/PET/image"
STS_NIFTI = "petct_sts/nifti/STS_001"
WB_PET = "petwb_sts001/PET/image"


# ------------------------------------------------------------------------------------ helpers

def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dro_copy(shared_data: Path, dest: Path, mutate=None, slices: int | None = None) -> Path:
    """A copy of DRO_0_0's PET series; ``mutate(ds, index)`` edits each slice's dataset."""
    dest.mkdir(parents=True)
    files = sorted((shared_data / DRO).glob("*.dcm"))[:slices]
    for i, p in enumerate(files):
        if mutate is None:
            shutil.copy(p, dest / p.name)
            continue
        ds = pydicom.dcmread(p)
        mutate(ds, i)
        ds.save_as(dest / p.name)
    return dest


def set_tags(**tags):
    """A mutation that sets (or, for None, deletes) keywords in the dataset and its
    RadiopharmaceuticalInformationSequence item."""
    rp_keys = {"RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime",
               "RadionuclideTotalDose", "RadionuclideHalfLife"}

    def mutate(ds, _i):
        for key, value in tags.items():
            target = ds.RadiopharmaceuticalInformationSequence[0] if key in rp_keys else ds
            if value is None:
                if key in target:
                    delattr(target, key)
            else:
                try:
                    setattr(target, key, value)
                except ValueError:  # pydicom refuses it for the VR: store the raw text
                    target.add_new(pydicom.datadict.tag_for_keyword(key), "LO", value)
    return mutate


def nothing_written(area: Path, before: set[str]) -> None:
    """Nothing new at or beside --out (including hidden staging and temporary files)."""
    now = {p.name for p in area.iterdir()}
    assert now == before, f"left behind: {sorted(now - before)}"


def expect_error(args, capsys, area: Path, *fragments: str, code: int = 2) -> str:
    before = {p.name for p in area.iterdir()}
    rc, out, err = run_cli(args, capsys)
    assert rc == code, f"exit {rc}, stderr: {err}"
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, f"{f!r} not in: {err}"
    nothing_written(area, before)
    return err


def suv_median_in_background(path: Path) -> float:
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return float(np.median(arr[arr > 0.5]))


@pytest.fixture()
def area(tmp_path) -> Path:
    """The folder that holds --out; inputs live elsewhere (tmp_path/in)."""
    a = tmp_path / "outputs"
    a.mkdir()
    return a


@pytest.fixture(scope="module")
def sts_pet_nifti(shared_data) -> Path:
    return shared_data / STS_NIFTI / "PET_image.nii.gz"


def nifti_like(reference: Path, arr_zyx: np.ndarray, out: Path, dtype=np.float32,
               affine=None) -> Path:
    """A NIfTI written with nibabel (so NaN/Inf and odd headers reach the file as they are)."""
    ref = nib.load(str(reference))
    data = np.asarray(arr_zyx).transpose()[...]  # z,y,x -> x,y,z as nibabel stores it
    img = nib.Nifti1Image(data.astype(dtype), ref.affine if affine is None else affine)
    nib.save(img, str(out))
    return out


# ------------------------------------------------------------------------ silently wrong SUV

def test_time_only_injection_30_min_after_the_scan_is_refused_not_taken_as_the_day_before(
        shared_data, tmp_path, area, capsys):
    # issue 19: gave median SUV 5037 instead of 1.0 with no warning
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="113000"))
    expect_error(["suv", pet, "--out", area / "suv.nii.gz"], capsys, area,
                 str(pet), "RadiopharmaceuticalStartTime (0018,1072)", "30.0 min after",
                 "1410.0 min", "--force-decay-minutes")


def test_full_injection_datetime_after_the_scan_is_refused(shared_data, tmp_path, area, capsys):
    # issue 19: only a warning and SUV 4168
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        RadiopharmaceuticalStartDateTime="20250101113000", RadiopharmaceuticalStartTime="113000"))
    expect_error(["suv", pet, "--out", area / "suv.nii.gz"], capsys, area,
                 str(pet), "RadiopharmaceuticalStartDateTime (0018,1078)", "30.0 min after the scan")


def test_injection_date_shifted_by_an_anonymiser_keeps_its_time_of_day_with_a_warning(
        shared_data, tmp_path, area, capsys):
    # TCIA STS_002: injection datetime one day after the series date, time of day right
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        RadiopharmaceuticalStartDateTime="20250102100000"))
    rc, out, _ = run_cli(["suv", pet, "--out", area / "suv.nii.gz"], capsys)
    assert rc == 0 and "date-shifting anonymiser" in out and "decayed 60.00 min" in out
    assert suv_median_in_background(area / "suv.nii.gz") == pytest.approx(1.0, abs=0.01)


def test_a_real_midnight_crossing_is_still_the_day_before(shared_data, tmp_path, area, capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        SeriesTime="003000", AcquisitionTime="003000", RadiopharmaceuticalStartDateTime=None,
        RadiopharmaceuticalStartTime="233000"))
    rc, out, _ = run_cli(["suv", pet, "--out", area / "suv.nii.gz"], capsys)
    assert rc == 0 and "midnight crossing" in out and "decayed 60.00 min" in out
    assert suv_median_in_background(area / "suv.nii.gz") == pytest.approx(1.0, abs=0.01)


def test_a_decay_interval_of_8_hours_is_refused(shared_data, tmp_path, area, capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        RadiopharmaceuticalStartDateTime="20250101030000", RadiopharmaceuticalStartTime="030000"))
    expect_error(["suv", pet, "--out", area / "suv.nii.gz"], capsys, area,
                 str(pet), "480.0 min", "outside the plausible 0-360 min")


def test_force_decay_minutes_overrides_wrong_header_times_consciously(shared_data, tmp_path, area,
                                                                     capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="113000"))
    rc, out, _ = run_cli(["suv", pet, "--out", area / "suv.nii.gz", "--force-decay-minutes", "60"],
                         capsys)
    assert rc == 0 and "decay interval forced to 60 min by hand" in out
    assert suv_median_in_background(area / "suv.nii.gz") == pytest.approx(1.0, abs=0.01)


def test_max_decay_hours_makes_the_rule_configurable(shared_data, tmp_path, area, capsys):
    pet = dro_copy(shared_data, tmp_path / "in")  # 60 min p.i.
    expect_error(["suv", pet, "--out", area / "suv.nii.gz", "--max-decay-hours", "0.5"], capsys,
                 area, "60.0 min", "outside the plausible 0-30 min")


@pytest.mark.parametrize("option, value, fragment", [
    ("--injection-time", "25:99", "is not a real time of day"),
    ("--injection-time", "noon", "is not HH:MM[:SS]"),
    ("--injection-time", "2025-02-30 10:00", "is not a real date and time"),
    ("--injection-time", "2025-01-01 11:30", "after the scan reference"),
    ("--dose-mbq", "0", "--dose-mbq 0 is outside the plausible range 10-2500 MBq"),
    ("--dose-mbq", "-250", "--dose-mbq -250 is outside"),
    ("--weight-kg", "0", "--weight-kg 0 is outside the plausible range 1-350 kg"),
    ("--weight-kg", "70000", "--weight-kg 70000 is outside"),
    ("--force-decay-minutes", "-3", "--force-decay-minutes -3 is outside the plausible range 0-1440"),
])
def test_manual_overrides_are_validated(shared_data, tmp_path, area, capsys, option, value,
                                        fragment):
    pet = dro_copy(shared_data, tmp_path / "in")
    expect_error(["suv", pet, "--out", area / "suv.nii.gz", option, value], capsys, area, fragment)


def test_a_valid_manual_injection_time_gives_the_right_suv(shared_data, tmp_path, area, capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(
        RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime=None))
    rc, out, _ = run_cli(["suv", pet, "--out", area / "suv.nii.gz", "--injection-time", "10:00"],
                         capsys)
    assert rc == 0
    assert suv_median_in_background(area / "suv.nii.gz") == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("tags, fragments", [
    ({"PatientWeight": "-70"}, ("PatientWeight (0010,1030) -70 kg", "--weight-kg")),
    ({"PatientWeight": "500"}, ("PatientWeight (0010,1030) 500 kg", "outside 1-350 kg")),
    ({"RadionuclideTotalDose": "5e10"}, ("RadionuclideTotalDose (0018,1074) 50000 MBq",
                                         "--dose-mbq")),
    ({"RadionuclideHalfLife": "-6586.2"}, ("RadionuclideHalfLife (0018,1075) -6586.2 s",)),
    ({"SeriesTime": "noon"}, ("SeriesTime (0008,0031) 'noon' is malformed",)),
    ({"SeriesDate": "20251399"}, ("SeriesDate (0008,0021) '20251399' is malformed",
                                  "not a real date")),
    ({"RadiopharmaceuticalStartTime": "256000", "RadiopharmaceuticalStartDateTime": None},
     ("RadiopharmaceuticalStartTime (0018,1072) '256000' is malformed",)),
    ({"PatientWeight": None}, ("missing DICOM tag(s) PatientWeight (0010,1030)", "--weight-kg")),
    ({"Units": "PROPCPS"}, ("PET Units PROPCPS cannot be converted to SUV",)),
    ({"DecayCorrection": "SOMETIMES"}, ("DecayCorrection 'SOMETIMES'",)),
    # found by the fuzzing below: a slope that overflows float32 gave an infinite SUV
    ({"RescaleSlope": "1e100"}, ("RescaleSlope 1e+100", "beyond the float32 range")),
    ({"RescaleSlope": "abc"}, ("RescaleSlope 'abc' is not a finite number",)),
])
def test_implausible_or_malformed_headers_name_the_file_the_tag_and_the_value(
        shared_data, tmp_path, area, capsys, tags, fragments):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(**tags))
    expect_error(["suv", pet, "--out", area / "suv.nii.gz"], capsys, area, str(pet), *fragments)


def test_philips_counts_without_scale_factors_give_advice_that_works(shared_data, tmp_path, area,
                                                                    capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(Units="CNTS"))
    err = expect_error(["suv", pet, "--out", area / "suv.nii.gz", "--weight-kg", "70"], capsys,
                       area, "(7053,1009)", "cannot be turned into Bq/mL", "private group 7053")
    assert "supply them by hand" not in err


def test_malformed_dates_in_inspect_are_reported_not_a_traceback(shared_data, tmp_path, capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(SeriesDate="20251399"))
    rc, out, err = run_cli(["inspect", pet], capsys)
    assert rc == 0 and "Traceback" not in err
    assert "SeriesDate (0008,0021) '20251399' is malformed" in out


# ------------------------------------------------------------------------ DICOM geometry

def test_slice_steps_irregular_within_5_percent_are_resampled_with_a_warning(
        shared_data, tmp_path, area, capsys):
    def shift(ds, i):  # slice 10 of 4 mm steps moved by 0.12 mm: steps 3.88 and 4.12 (3 %)
        if i == 10:
            ds.ImagePositionPatient = [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 0.12]
    pet = dro_copy(shared_data, tmp_path / "in", shift)
    rc, out, _ = run_cli(["suv", pet, "--out", area / "suv.nii.gz"], capsys)
    assert rc == 0 and "irregular slice spacing" in out and "resampled onto a regular" in out
    img = sitk.ReadImage(str(area / "suv.nii.gz"))
    assert img.GetSize()[2] == 20 and img.GetSpacing()[2] == pytest.approx(4.0, abs=1e-6)
    assert suv_median_in_background(area / "suv.nii.gz") == pytest.approx(1.0, abs=0.01)


def test_slice_steps_irregular_beyond_5_percent_are_refused(shared_data, tmp_path, area, capsys):
    def shift(ds, i):  # 0.6 mm: steps 3.4 and 4.6 mm (15 %)
        if i == 10:
            ds.ImagePositionPatient = [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 0.6]
    pet = dro_copy(shared_data, tmp_path / "in", shift)
    expect_error(["suv", pet, "--out", area / "suv.nii.gz"], capsys, area,
                 str(pet), "irregular slice spacing", "15.0 % off", "at most 5 %")


def test_the_real_whole_body_pet_with_irregular_steps_reads_and_converts_to_suv(shared_data):
    img, factor = read_pet_suv(shared_data / WB_PET)
    assert img.GetSize() == (128, 128, 267)
    assert img.GetSpacing()[2] == pytest.approx(3.27, abs=0.005)
    assert any("irregular slice spacing" in w and "within 5 %" in w for w in get_warnings(img))
    arr = sitk.GetArrayViewFromImage(img)
    # 71 kg, 388.8 MBq, 45.2 min: body background SUV about 0.5-1.5, max below the SUV range limit
    assert 0.3 < float(np.median(arr[arr > 0.3])) < 1.5 and float(arr.max()) < 100
    assert "decayed 45.18 min" in factor.rule


@pytest.mark.parametrize("tag, value, fragment", [
    ("ImagePositionPatient", "a\\b\\c", "ImagePositionPatient"),
    ("PixelSpacing", [0.0, 0.0], "PixelSpacing (0028,0030) [0.0, 0.0] is not positive"),
])
def test_malformed_geometry_tags_name_the_file(shared_data, tmp_path, area, capsys, tag, value,
                                               fragment):
    def mutate(ds, i):
        if i == 0:
            if tag == "ImagePositionPatient":
                ds[tag].VR = "LO"
            setattr(ds, tag, value)
    pet = dro_copy(shared_data, tmp_path / "in", mutate)
    expect_error(["suv", pet, "--out", area / "suv.nii.gz"], capsys, area, "pet_dro_0_0_slice_000",
                 fragment)


def test_a_folder_of_symlinked_series_folders_is_read(shared_data, tmp_path, area, capsys):
    real = dro_copy(shared_data, tmp_path / "real" / "pet")
    study = tmp_path / "study"
    study.mkdir()
    (study / "pet_link").symlink_to(real, target_is_directory=True)
    rc, _, _ = run_cli(["suv", study, "--out", area / "suv.nii.gz"], capsys)
    assert rc == 0 and suv_median_in_background(area / "suv.nii.gz") == pytest.approx(1.0, abs=0.01)


def test_an_empty_folder_says_so(tmp_path, area, capsys):
    (tmp_path / "empty").mkdir()
    expect_error(["suv", tmp_path / "empty", "--out", area / "suv.nii.gz"], capsys, area,
                 "the folder is empty")


# ------------------------------------------------------------------------ output paths

def test_suv_out_an_existing_folder_is_refused_before_reading(shared_data, tmp_path, area, capsys):
    (area / "pet.nii.gz").mkdir()
    pet = dro_copy(shared_data, tmp_path / "in")
    expect_error(["suv", pet, "--out", area / "pet.nii.gz"], capsys, area, "is an existing folder")


def test_suv_out_without_an_image_suffix(shared_data, tmp_path, area, capsys):
    pet = dro_copy(shared_data, tmp_path / "in")
    expect_error(["suv", pet, "--out", area / "pet.png"], capsys, area, "must end in one of")


def test_quantify_out_an_existing_file_is_refused(sts_pet_nifti, area, capsys):
    (area / "q").write_text("not a folder")
    expect_error(["quantify", "--pet", sts_pet_nifti, "--out", area / "q"], capsys, area,
                 "exists and is a file")


def test_quantify_out_below_a_file_is_refused(sts_pet_nifti, area, capsys):
    (area / "afile").write_text("x")
    expect_error(["quantify", "--pet", sts_pet_nifti, "--out", area / "afile" / "q"], capsys, area,
                 "is a file, not a folder")


def test_a_stale_staging_folder_of_a_killed_run_is_removed_by_the_next_run(sts_pet_nifti, area,
                                                                          capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is no longer running
    stale = area / f".q-staging-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "lesions.nii.gz").write_bytes(b"half written")
    rc, _, err = run_cli(["quantify", "--pet", sts_pet_nifti, "--out", area / "q"], capsys)
    assert rc == 0 and not stale.exists()
    assert sorted(p.name for p in area.iterdir()) == ["q"]
    assert (area / "q" / "summary.json").is_file()


# ------------------------------------------------------------------------ quantify / report input

@pytest.fixture(scope="module")
def sts_arrays(shared_data):
    pet = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / STS_NIFTI / "PET_image.nii.gz")))
    return pet


def test_a_pet_in_bq_per_ml_is_refused_by_quantify(shared_data, tmp_path, area, capsys):
    from PETDiffusionLib.io.dicom import read_series
    bq = read_series(shared_data / DRO)  # the DRO's modality values: Bq/mL, units metadata set
    write_image(bq, tmp_path / "pet_bqml.nrrd")
    expect_error(["quantify", "--pet", tmp_path / "pet_bqml.nrrd", "--out", area / "q"], capsys,
                 area, "pet_bqml.nrrd", "in Bq/mL, not SUV", "petdiffusion suv")


def test_bq_per_ml_values_without_units_are_refused_by_report(shared_data, tmp_path, area,
                                                              sts_pet_nifti, sts_arrays, capsys):
    f = nifti_like(sts_pet_nifti, sts_arrays * 5000.0, tmp_path / "pet.nii.gz")
    expect_error(["report", "--pet", f, "--out", area / "r"], capsys, area,
                 "pet.nii.gz", "implausible for SUV", "activity concentration")


def test_a_ct_in_hu_is_refused_as_pet(shared_data, area, capsys):
    ct = shared_data / STS_NIFTI / "CT_image.nii.gz"
    expect_error(["quantify", "--pet", ct, "--out", area / "q"], capsys, area,
                 "CT_image.nii.gz", "look like a CT in HU")


def test_int16_suv_times_10_is_refused_as_integer_coded(tmp_path, area, sts_pet_nifti, sts_arrays,
                                                        capsys):
    f = nifti_like(sts_pet_nifti, np.round(sts_arrays * 10), tmp_path / "pet_int.nii.gz",
                   dtype=np.int16)
    assert sts_arrays.max() * 10 < 300  # so only the integer coding can tell
    expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area,
                 "pet_int.nii.gz", "stored as whole numbers", "integer-coded")


def test_int16_suv_times_100_is_refused(tmp_path, area, sts_pet_nifti, sts_arrays, capsys):
    f = nifti_like(sts_pet_nifti, np.round(sts_arrays * 100), tmp_path / "pet100.nii.gz",
                   dtype=np.int16)
    expect_error(["report", "--pet", f, "--out", area / "r"], capsys, area, "implausible for SUV")


def test_an_all_zero_pet_is_refused(tmp_path, area, sts_pet_nifti, sts_arrays, capsys):
    f = nifti_like(sts_pet_nifti, np.zeros_like(sts_arrays), tmp_path / "zero.nii.gz")
    expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area, "zero.nii.gz",
                 "the PET is empty")


@pytest.mark.parametrize("threshold, fragment", [
    ("-1", "must be a positive SUV"), ("0", "must be a positive SUV"), ("nan", "positive SUV"),
    ("0%", "between 0 and 100 %"), ("150%", "between 0 and 100 %"), ("high", "bad threshold"),
])
def test_bad_thresholds_are_refused_before_reading(sts_pet_nifti, area, capsys, threshold,
                                                   fragment):
    expect_error(["quantify", "--pet", sts_pet_nifti, "--threshold", threshold, "--out",
                  area / "q"], capsys, area, "--threshold", fragment)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_and_inf_in_nifti_are_seen(tmp_path, area, sts_pet_nifti, sts_arrays, capsys, suffix):
    arr = sts_arrays.copy()
    arr[3, 4, 5], arr[6, 7, 8] = np.nan, np.inf
    f = nifti_like(sts_pet_nifti, arr, tmp_path / f"pet_nan{suffix}")
    assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(str(f)))).all()  # ITK hides them
    expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area,
                 f"pet_nan{suffix}", "2 non-finite voxel(s) (1 NaN, 1 infinite)")


def test_nan_in_a_lesion_mask_is_seen(tmp_path, area, sts_pet_nifti, shared_data, capsys):
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / STS_NIFTI / "PET_mask.nii.gz")))
    mask = mask.astype(np.float32)
    mask[0, 0, 0] = np.nan
    f = nifti_like(sts_pet_nifti, mask, tmp_path / "mask.nii.gz")
    expect_error(["quantify", "--pet", sts_pet_nifti, "--lesions", f, "--out", area / "q"],
                 capsys, area, "mask.nii.gz", "non-finite")


def test_pixdim_zero_is_refused_not_read_as_1_mm(tmp_path, area, sts_pet_nifti, sts_arrays, capsys):
    # issue 19: TMTV 3.61 instead of 259 mL
    f = nifti_like(sts_pet_nifti, sts_arrays, tmp_path / "p0.nii.gz")
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[88:92] = struct.pack("<f", 0.0)  # NIfTI-1 header: pixdim[3] at byte 88 (nifti1.h)
    f.write_bytes(gzip.compress(bytes(raw)))
    assert struct.unpack("<f", gzip.decompress(f.read_bytes())[88:92])[0] == 0.0
    expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area,
                 "p0.nii.gz", "pixdim[3] = 0", "would read it as 1 mm")


@pytest.mark.parametrize("shape, fragment", [((40, 40), "found a 2D image"),
                                             ((3, 20, 20, 20), "found a 4D image")])
def test_non_3d_images_are_refused(tmp_path, area, capsys, shape, fragment):
    f = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(f))
    expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area, "odd.nii.gz",
                 fragment)


def test_a_non_orthogonal_direction_keeps_itks_reason(tmp_path, area, sts_pet_nifti, sts_arrays,
                                                      capsys):
    affine = np.diag([4.0, 4.0, 3.27, 1.0])
    affine[0, 1] = 3.0  # sheared axes
    f = nifti_like(sts_pet_nifti, sts_arrays, tmp_path / "skew.nii.gz", affine=affine)
    err = expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area, "skew.nii.gz",
                       "orthonormal direction cosines")
    assert ".cxx" not in err


def test_a_corrupt_gzip_keeps_the_reason(tmp_path, area, sts_pet_nifti, capsys):
    data = sts_pet_nifti.read_bytes()
    f = tmp_path / "cut.nii.gz"
    f.write_bytes(data[: len(data) // 2])
    err = expect_error(["quantify", "--pet", f, "--out", area / "q"], capsys, area, "cut.nii.gz",
                       "cannot read")
    assert ".cxx" not in err and len(err.split("cannot read", 1)[1]) > 10


@pytest.mark.parametrize("suffix, fragment", [
    (".nii", "the file is truncated or its header damaged"),
    (".nii.gz", "a damaged header, or far beyond any PET/CT volume")])
def test_an_absurd_size_in_the_header_is_named_not_an_allocation_failure(
        tmp_path, area, sts_pet_nifti, sts_arrays, capsys, suffix, fragment):
    f = nifti_like(sts_pet_nifti, sts_arrays, tmp_path / "big.nii")
    raw = bytearray(f.read_bytes())
    raw[42:48] = struct.pack("<hhh", 30000, 30000, 30000)  # NIfTI-1 header: dim[1..3] at byte 42
    f.unlink()
    out = tmp_path / f"big{suffix}"
    out.write_bytes(gzip.compress(bytes(raw)) if suffix == ".nii.gz" else bytes(raw))
    err = expect_error(["quantify", "--pet", out, "--out", area / "q"], capsys, area,
                       f"big{suffix}", "30000x30000x30000 voxels", fragment)
    assert "allocate" not in err


def test_a_pet_marked_as_ct_is_refused(shared_data, tmp_path, area, capsys):
    ct = read_image(shared_data / STS_NIFTI / "CT_image.nii.gz")
    write_image(ct, tmp_path / "ct.nrrd", units="HU")
    expect_error(["report", "--pet", tmp_path / "ct.nrrd", "--out", area / "r"], capsys, area,
                 "ct.nrrd", "marked as CT (HU)")


# ------------------------------------------------------------------------ de-identified exports

IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "MRN-778899", "PatientBirthDate": "19580412",
            "InstitutionName": "Saint Example Hospital", "AccessionNumber": "ACC-44556",
            "ReferringPhysicianName": "Who^Referring", "InstitutionAddress": "1 Main Street",
            "StationName": "PETCT-STATION-7", "DeviceSerialNumber": "SN-123456",
            "PatientIdentityRemoved": "NO"}


@pytest.fixture()
def identified_sts_pet(shared_data, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "identified_pet"
    out.mkdir()
    uids = {}
    for p in sorted((shared_data / STS_PET_DICOM).glob("*.dcm")):
        ds = pydicom.dcmread(p)
        for k, v in IDENTITY.items():
            setattr(ds, k, v)
        ds.save_as(out / p.name)
        uids = {k: str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                              "FrameOfReferenceUID", "SOPInstanceUID")}
    return out, uids


def test_seg_and_sr_from_report_are_de_identified(identified_sts_pet, area, capsys):
    pet, uids = identified_sts_pet
    rc, _, err = run_cli(["report", "--pet", pet, "--dicom-source", pet, "--out", area / "r"], capsys)
    assert rc == 0, err
    for name in ("lesions_seg.dcm", "lesions_sr.dcm"):
        raw = (area / "r" / name).read_bytes()
        for value in [v for k, v in IDENTITY.items() if k != "PatientIdentityRemoved"]:
            for part in value.split("^"):
                assert part.encode() not in raw, f"{name} carries {part}"
        for key, uid in uids.items():
            assert uid.encode() not in raw, f"{name} carries the original {key}"
        ds = pydicom.dcmread(area / "r" / name)
        assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientID) == "anonymous"
        assert {c.CodeValue for c in ds.DeidentificationMethodCodeSequence} == {
            "113100", "113106", "113108"}  # basic profile, full dates, patient characteristics
    seg = pydicom.dcmread(area / "r" / "lesions_seg.dcm")
    sr = pydicom.dcmread(area / "r" / "lesions_sr.dcm")
    # new UIDs, consistently mapped: the SR's evidence names the SEG's study and the SEG's source
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    evidence_series = {s.SeriesInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                       for s in e.ReferencedSeriesSequence}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID in evidence_series


def test_keep_identity_keeps_the_source_identity_and_says_it_truthfully(identified_sts_pet,
                                                                       tmp_path):
    """What `report --keep-identity` passes to the SEG writer: the source datasets as they are."""
    from PETDiffusionLib.report.dicom_seg import source_series, write_dicom_seg
    pet, uids = identified_sts_pet
    suv = read_image(pet)
    lesion = sitk.Cast(suv > 2.5, sitk.sitkUInt8)
    seg = pydicom.dcmread(write_dicom_seg(lesion, source_series(pet), {1: "Lesion 1"},
                                          tmp_path / "seg.dcm"))
    assert str(seg.PatientName) == "Doe^Jane" and seg.StudyInstanceUID == uids["StudyInstanceUID"]
    assert seg.PatientIdentityRemoved == "NO" and "DeidentificationMethod" not in seg


# ------------------------------------------------------------------------ tasks, events, signals

@pytest.mark.parametrize("shape, fragment", [((64, 64), "found a 2D image"),
                                             ((2, 40, 40, 20), "found a 4D image")])
def test_run_refuses_2d_and_4d_images_before_any_work(tmp_path, area, capsys, shape, fragment):
    # issue 19: a traceback from DICOMOrient
    f = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(f))
    expect_error(["run", "denoise-segment", "--pet", f, "--out", area / "o", "--progress", "none"],
                 capsys, area, "odd.nii.gz", fragment)


def test_run_out_an_existing_file_is_refused_before_inference(sts_pet_nifti, area, capsys):
    (area / "o").write_text("x")
    t0 = time.monotonic()
    expect_error(["run", "denoise-segment", "--pet", sts_pet_nifti, "--out", area / "o",
                  "--progress", "none"], capsys, area, "exists and is a file")
    assert time.monotonic() - t0 < 30  # refused before the diffusion model ran


def test_progress_json_sends_an_error_event(tmp_path, area, sts_pet_nifti, sts_arrays, capsys):
    arr = sts_arrays.copy()
    arr[1, 1, 1] = np.nan
    f = nifti_like(sts_pet_nifti, arr, tmp_path / "nan.nii.gz")
    before = {p.name for p in area.iterdir()}
    rc, out, _ = run_cli(["run", "denoise-segment", "--pet", f, "--out", area / "o", "--progress",
                          "json"], capsys)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rc == 2 and events[-1]["event"] == "error"
    assert "nan.nii.gz" in events[-1]["message"] and "non-finite" in events[-1]["message"]
    nothing_written(area, before)


def _start_run(pet: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "PETDiffusionLib", "run", "denoise-segment",
                             "--pet", str(pet), "--out", str(out), "--progress", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_staging(area: Path, proc: subprocess.Popen, timeout_s: float = 90.0) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        found = [p for p in area.glob(f".o-staging-{proc.pid}-*")]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never started writing")


def test_sigterm_mid_inference_leaves_nothing(sts_pet_nifti, area):
    """SIGTERM (Slicer's cancel, schedulers) while the model runs: the run removes its staging
    folder and ends with 143 (a SIGKILLed run's folder is removed by the next run: see
    test_a_stale_staging_folder_of_a_killed_run_is_removed_by_the_next_run)."""
    proc = _start_run(sts_pet_nifti, area / "o")
    _wait_for_staging(area, proc)
    time.sleep(0.5)  # inside the inference
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated by signal 15" in err and "Traceback" not in err
    assert list(area.iterdir()) == []


# ------------------------------------------------------------------------ property-based fuzzing

def _dro_headers(shared_data) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True)
            for p in sorted((shared_data / DRO).glob("*.dcm"))[:2]]


TEXT_VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "nan", "inf", "1e30", "abc", "20250101", "20251399", "250000",
                     "115960", "110000.5", "2300", "23", "20250101103000", "19991231235959",
                     "BQML", "CNTS", "GML", "START", "ADMIN", "NONE", "70", "70000", "368080000",
                     "368.08", "6586.2", "1.75", "175", "CT", "MR", "PT", "0\\0\\0"]),
    st.text(alphabet="0123456789.:-+e ", max_size=14))
FUZZ_TAGS = ["PatientWeight", "PatientSize", "SeriesDate", "SeriesTime", "AcquisitionDate",
             "AcquisitionTime", "Units", "DecayCorrection", "RadiopharmaceuticalStartTime",
             "RadiopharmaceuticalStartDateTime", "RadionuclideTotalDose", "RadionuclideHalfLife"]


def _mutated(headers, changes):
    out = []
    for ds in headers:
        ds = pydicom.Dataset(ds)  # shallow copy of the top level
        rp = pydicom.Dataset(ds.RadiopharmaceuticalInformationSequence[0])
        for tag, value in changes:
            target = rp if tag.startswith("Radio") else ds
            if value is None:
                if tag in target:
                    delattr(target, tag)
            else:
                # store the raw text whatever the VR would accept, as a damaged file would
                target.add_new(pydicom.datadict.tag_for_keyword(tag), "LO", value)
        ds.RadiopharmaceuticalInformationSequence = pydicom.Sequence([rp])
        out.append(ds)
    return out


# derandomize: CI sees the same examples every run (a failure is reproducible, never flaky); the
# examples found by random runs so far are pinned with @example
@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.sampled_from(FUZZ_TAGS), st.one_of(st.none(), TEXT_VALUES)),
                        min_size=1, max_size=4))
@example(changes=[("PatientWeight", None), ("Units", "GML")])  # SUVbw stored: no weight needed
def test_fuzzed_suv_headers_give_a_clear_error_or_a_plausible_factor(shared_data, changes):
    headers = _mutated(_dro_headers(shared_data), changes)
    try:
        f = suv_factor(headers, "bw", path="fuzzed")
    except InputError as exc:
        assert str(exc)  # a message for the user, never another exception
        return
    lim = DEFAULT_LIMITS
    assert math.isfinite(f.factor) and f.factor > 0
    if f.pixel_units != "GML" or f.weight_kg is not None:  # GML is SUVbw already: factor 1
        assert f.weight_kg is not None and lim.weight_kg[0] <= f.weight_kg <= lim.weight_kg[1]
    else:
        assert f.factor == 1.0
    if f.pixel_units in ("BQML", "CNTS") and f.injected_dose_bq is not None:
        assert lim.dose_mbq[0] <= f.injected_dose_bq / 1e6 <= lim.dose_mbq[1]
        if f.reference_time is not None and f.injection_time is not None:
            dt = (f.reference_time - f.injection_time).total_seconds() / 60
            assert 0 <= dt <= lim.max_decay_minutes


@pytest.fixture(scope="module")
def dro_three_slices(shared_data, tmp_path_factory) -> Path:
    return dro_copy(shared_data, tmp_path_factory.mktemp("dro3") / "pet", slices=3)


@settings(max_examples=30, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(FUZZ_TAGS + ["ImagePositionPatient",
                                                               "PixelSpacing", "Modality",
                                                               "SliceThickness", "RescaleSlope",
                                                               "RescaleIntercept", "KVP"]),
                                  st.one_of(st.none(), TEXT_VALUES)), min_size=1, max_size=3),
       which=st.sampled_from([0, 1, 2, None]))
def test_fuzzed_dicom_series_read_or_fail_clearly(dro_three_slices, tmp_path_factory, changes,
                                                  which):
    folder = tmp_path_factory.mktemp("fuzz") / "pet"
    folder.mkdir()
    for i, p in enumerate(sorted(dro_three_slices.glob("*.dcm"))):
        ds = pydicom.dcmread(p)
        if which is None or which == i:
            for tag, value in changes:
                target = ds.RadiopharmaceuticalInformationSequence[0] if tag.startswith("Radio") \
                    else ds
                if value is None:
                    if tag in target:
                        delattr(target, tag)
                else:
                    target.add_new(pydicom.datadict.tag_for_keyword(tag), "LO", value)
        ds.save_as(folder / p.name)
    try:
        find_series(folder)
        img = read_dicom_image(folder)
    except InputError as exc:
        assert str(exc)
        return
    arr = sitk.GetArrayViewFromImage(img)
    assert np.isfinite(arr).all()
    if img.GetMetaData("PETDiffusion.modality") == "PT":
        assert float(arr.max()) <= 300.0  # never a silently implausible SUV


# ------------------------------------------------------------------------ the shared checks

def test_check_ct_hu_accepts_the_real_ct_and_refuses_a_pet_nan_and_units(shared_data, tmp_path):
    from PETDiffusionLib.io.checks import check_ct_hu, check_suv_image
    ct = read_image(shared_data / STS_NIFTI / "CT_image.nii.gz")
    pet = read_image(shared_data / STS_NIFTI / "PET_image.nii.gz")
    check_ct_hu(ct, "ct.nii.gz")
    check_suv_image(pet, "pet.nii.gz")
    with pytest.raises(InputError, match="pet.nii.gz: does not look like a CT in HU: no air"):
        check_ct_hu(pet, "pet.nii.gz")
    with pytest.raises(InputError, match="do not look like a CT in HU"):
        check_ct_hu(pet, "pet.nii.gz", require_air=False)
    arr = sitk.GetArrayFromImage(ct)
    arr[1, 2, 3] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(ct)
    with pytest.raises(InputError, match="the CT holds 1 NaN or infinite voxel"):
        check_ct_hu(bad, "ct.nrrd")
    pet.SetMetaData("PETDiffusion.units", "SUVbw")
    with pytest.raises(InputError, match="labelled 'SUVbw', not HU"):
        check_ct_hu(pet, "pet.nii.gz")


def test_run_on_a_dicom_series_with_a_malformed_time_names_the_tag(shared_data, tmp_path, area,
                                                                   capsys):
    pet = dro_copy(shared_data, tmp_path / "in", set_tags(SeriesTime="noon"))
    expect_error(["run", "denoise-segment", "--pet", pet, "--out", area / "o", "--progress",
                  "none"], capsys, area, str(pet), "SeriesTime (0008,0031) 'noon' is malformed")


def test_stopping_ends_the_child_processes():
    from PETDiffusionLib.cli.main import _end_children
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    _end_children(timeout_s=10)  # terminates and reaps it
    assert child.poll() is not None and time.monotonic() - t0 < 10


def test_a_staging_folder_of_a_run_still_alive_is_reported_not_removed(tmp_path, caplog):
    from PETDiffusionLib.io.atomic import staging_dir
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = tmp_path / f".o-staging-{alive.pid}-abcd"
        busy.mkdir()
        with staging_dir(tmp_path / "o") as stage:
            (stage / "a.txt").write_text("done")
        assert busy.is_dir() and (tmp_path / "o" / "a.txt").read_text() == "done"
        assert f"another run (process {alive.pid}) is writing" in caplog.text
    finally:
        alive.kill()
        alive.wait()


def test_report_dicom_source_with_irregular_steps_is_refused_before_any_work(shared_data, area,
                                                                             capsys):
    wb = shared_data / WB_PET
    err = expect_error(["report", "--pet", wb, "--dicom-source", wb, "--out", area / "r"], capsys,
                       area, str(wb), "slice steps are irregular (3.190 to 3.290 mm)",
                       "leave out --dicom-source")
    assert "segmented" not in err  # refused before the lesions were segmented
