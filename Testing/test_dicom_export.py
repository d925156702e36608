"""DICOM export: round trip through the project's reader, SYNTHETIC marking, de-identification."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from PETDiffusionLib.io.deid import deidentify, deidentify_series
from PETDiffusionLib.io.dicom import find_series, read_dicom_image, read_pet_suv
from PETDiffusionLib.io.dicom_export import PETHeader, write_dicom_series
from PETDiffusionLib.io.images import get_units, set_units

HEADER = PETHeader(weight_kg=70, dose_bq=250e6, injection_time=datetime(2025, 1, 1, 10),
                   series_time=datetime(2025, 1, 1, 11), sex="F", height_m=1.68, age_years=61)


def _oblique(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((2.0, 3.0, 4.0))
    img.SetOrigin((-10.0, 20.0, -300.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, 0, s, 0, 1, 0, -s, 0, c))
    return img


def test_pet_suv_round_trip_keeps_values_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    suv = _oblique(rng.uniform(0, 12, (5, 6, 7)))
    set_units(suv, "SUVbw")
    write_dicom_series(suv, tmp_path / "pet", "PT", pet=HEADER, units="BQML")
    back, factor = read_pet_suv(tmp_path / "pet")
    assert factor.decayed_dose_bq / 1e6 == pytest.approx(171.1, abs=0.1)  # PHYSICS.md §1
    assert np.allclose(back.GetOrigin(), suv.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), suv.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetDirection(), suv.GetDirection(), atol=1e-5)
    # int16 with a per-slice slope: error at most half a step, 12/32767/2 SUV
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(suv)).max() < 12 / 32767
    ds = pydicom.dcmread(sorted((tmp_path / "pet").iterdir())[0])
    assert ds.Units == "BQML" and ds.DecayCorrection == "START" and float(ds.PatientWeight) == 70


def test_ct_round_trip_in_hu(tmp_path):
    hu = np.round(np.linspace(-1000, 1500, 4 * 5 * 6)).reshape(4, 5, 6)
    ct = _oblique(hu)
    write_dicom_series(ct, tmp_path / "ct", "CT")
    back = read_dicom_image(tmp_path / "ct")
    assert get_units(back) == "HU"
    assert np.array_equal(sitk.GetArrayFromImage(back), hu.astype(np.float32))


def test_synthetic_series_are_marked_synthetic_in_every_file(tmp_path):
    img = _oblique(np.ones((3, 4, 4)))
    set_units(img, "SUVbw", synthetic=True)
    files = write_dicom_series(img, tmp_path / "syn", "PT", pet=HEADER, description="CT-to-PET",
                               derivation="model ct-to-pet v1")
    for f in files:
        ds = pydicom.dcmread(f)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "SYNTHETIC" in ds.SeriesDescription
        assert "SYNTHETIC" in ds.DerivationDescription and "ct-to-pet" in ds.DerivationDescription
    assert "SYNTHETIC" in find_series(tmp_path / "syn")[0].description


def test_export_is_all_or_nothing(tmp_path):
    img = _oblique(np.full((3, 4, 4), np.nan))
    with pytest.raises(Exception, match="NaN"):
        write_dicom_series(img, tmp_path / "bad", "CT")
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []


def test_deidentify_removes_identity_and_keeps_what_suv_needs():
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "12345", "19600101"
    ds.PatientAddress, ds.InstitutionName = "1 Main St", "General Hospital"
    ds.OtherPatientIDs, ds.ReferringPhysicianName = "A-9", "Who^Dr"
    ds.PatientWeight, ds.PatientSex, ds.PatientAge, ds.PatientSize = "70", "F", "061Y", "1.68"
    ds.SeriesDate, ds.SeriesTime = "20250101", "110000"
    rp = Dataset()
    rp.RadionuclideTotalDose, rp.RadiopharmaceuticalStartTime = "250000000", "100000"
    ds.RadiopharmaceuticalInformationSequence = [rp]
    ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x00, "DS", "0.0005")
    ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", b"secret")
    deidentify(ds)
    for kw in ("PatientAddress", "InstitutionName", "OtherPatientIDs"):
        assert kw not in ds
    assert str(ds.PatientName) == "ANONYMOUS" and ds.PatientID == "ANONYMOUS"
    # Type 2 attributes stay, emptied (PS3.15 action Z)
    assert ds.PatientBirthDate == "" and ds.ReferringPhysicianName == ""
    assert ds.PatientIdentityRemoved == "YES"
    assert (ds.PatientWeight, ds.PatientSex, ds.PatientAge, ds.PatientSize) == (70, "F", "061Y", 1.68)
    assert ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose == 250000000
    assert (0x7053, 0x1000) in ds and (0x0029, 0x1010) not in ds


def test_written_series_carry_the_type_2_patient_and_study_attributes(tmp_path):
    # DICOM PS3.3 C.7.1.1 / C.7.2.1: Type 2 attributes must be present (possibly empty); highdicom's
    # SEG writer copies them from the source series and fails when they are absent.
    img = sitk.GetImageFromArray(np.zeros((3, 8, 8), np.float32))
    files = write_dicom_series(img, tmp_path / "ct", "CT")
    ds = pydicom.dcmread(files[0])
    for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        assert kw in ds, kw


def test_deidentify_series_maps_uids_consistently_and_removes_private_tags_and_names(shared_data):
    files = sorted((shared_data / "petct_sts/dicom/STS_001/PET/image").glob("*.dcm"))[:3]
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    for ds in originals:
        ds.PerformingPhysicianName = "Smith^Operator"
        ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20000907112011")
    copies = deidentify_series(originals, pseudo_id="P-0001")
    study = {c.StudyInstanceUID for c in copies}
    series = {c.SeriesInstanceUID for c in copies}
    assert len(study) == 1 and len(series) == 1  # one study and one series still
    assert study.isdisjoint({o.StudyInstanceUID for o in originals})
    assert {c.SOPInstanceUID for c in copies}.isdisjoint({o.SOPInstanceUID for o in originals})
    assert copies[0].FrameOfReferenceUID != originals[0].FrameOfReferenceUID
    assert copies[0].SOPClassUID == originals[0].SOPClassUID  # registered DICOM UIDs stay
    for c in copies:
        assert str(c.PatientName) == "P-0001" and c.PatientID == "P-0001"
        assert c.PerformingPhysicianName == "" and not any(e.tag.is_private for e in c)
        assert c.PatientIdentityRemoved == "YES" and c.LongitudinalTemporalInformationModified \
            == "UNMODIFIED"
        assert [i.CodeValue for i in c.DeidentificationMethodCodeSequence] == [
            "113100", "113108", "113106"]
    assert str(originals[0].PatientName) == "STS_001"  # the originals are untouched
