"""DICOM SEG export: a lesion mask and an organ map drawn on the real STS_001 PET DICOM series read
back with highdicom onto the same voxels in patient space, with standard segment codes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import highdicom as hd

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.report.dicom_seg import source_series, write_dicom_seg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def sts001(shared_data):
    series = source_series(shared_data / "petct_sts" / "dicom" / "STS_001" / "PET" / "image")
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    return series, sitk.ReadImage(str(folder / "PET_mask.nii.gz")), folder


def seg_labels_on_grid(seg: hd.seg.Segmentation, grid: sitk.Image) -> np.ndarray:
    """The SEG's combined label volume placed voxel by voxel on ``grid`` via patient coordinates."""
    vol = seg.get_volume(combine_segments=True)
    idx = np.argwhere(vol.array > 0)
    phys = (vol.affine @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    out = np.zeros(grid.GetSize()[::-1], np.int32)
    d = np.array(grid.GetDirection()).reshape(3, 3)
    cont = (np.linalg.inv(d) @ (phys - np.array(grid.GetOrigin())).T).T / np.array(grid.GetSpacing())
    ijk = np.round(cont).astype(int)
    assert np.allclose(cont, ijk, atol=1e-3), "SEG voxels fall between the grid's voxel centres"
    out[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = vol.array[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def test_lesion_seg_reads_back_onto_the_source_geometry(sts001, tmp_path):
    series, mask, _ = sts001
    path = write_dicom_seg(mask, series, {1: "GTV tumour"}, tmp_path / "lesions.seg.dcm")
    seg = hd.seg.segread(path)
    assert seg.SeriesInstanceUID != series[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    referenced = {r.ReferencedSOPInstanceUID
                  for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in series}
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "GTV tumour"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"   # SCT Neoplasm
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    back = seg_labels_on_grid(seg, mask)
    assert np.array_equal(back > 0, sitk.GetArrayFromImage(mask) > 0)


def test_organ_map_keeps_labels_names_and_organ_codes(sts001, tmp_path):
    series, mask, _ = sts001
    arr = np.zeros(sitk.GetArrayFromImage(mask).shape, np.uint8)
    arr[10:20, 5:15, 5:15] = 3          # "liver"
    arr[30:35, 20:30, 20:30] = 7        # "spleen"
    organs = sitk.GetImageFromArray(arr)
    organs.CopyInformation(mask)
    path = write_dicom_seg(organs, series, {3: "liver", 7: "spleen"}, tmp_path / "organs.seg.dcm",
                           algorithm=None)
    seg = hd.seg.segread(path)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    codes_ = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert labels == ["liver", "spleen"] and codes_ == ["10200004", "78961009"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    back = seg_labels_on_grid(seg, organs)      # segment numbers 1, 2 in label order 3, 7
    assert np.array_equal(back, np.select([arr == 3, arr == 7], [1, 2], 0))


def test_seg_of_mask_on_another_grid_or_empty_is_refused(sts001, tmp_path):
    series, mask, folder = sts001
    ct_mask = sitk.ReadImage(str(folder / "CT_mask.nii.gz"))
    with pytest.raises(InputError, match="not on the grid of the source DICOM series"):
        write_dicom_seg(ct_mask, series, {1: "GTV"}, tmp_path / "x.dcm")
    with pytest.raises(InputError, match="empty"):
        write_dicom_seg(mask * 0, series, {1: "GTV"}, tmp_path / "y.dcm")
    assert list(tmp_path.iterdir()) == []


def test_cli_report_with_dicom_source_adds_lesion_seg_with_table_ids(sts001, shared_data, tmp_path):
    from PETDiffusionLib.cli.main import main
    series, mask, folder = sts001
    rc = main(["report", "--pet", str(folder / "PET_image.nii.gz"), "--lesions",
               str(folder / "PET_mask.nii.gz"), "--dicom-source",
               str(shared_data / "petct_sts" / "dicom" / "STS_001" / "PET" / "image"),
               "--out", str(tmp_path / "r")])
    assert rc == 0
    seg = hd.seg.segread(tmp_path / "r" / "lesions_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion 1"]
    assert np.array_equal(seg_labels_on_grid(seg, mask) > 0, sitk.GetArrayFromImage(mask) > 0)
    # the TID 1500 SR beside it carries the table's numbers for that segment, with PET-IndiC codes
    import csv
    with open(tmp_path / "r" / "lesions.csv", newline="") as f:
        row = next(csv.DictReader(f))
    sr = hd.sr.srread(tmp_path / "r" / "lesions_sr.dcm")
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    assert group.tracking_identifier == "Lesion 1"
    got = {(m.name.value, m.derivation.value if m.derivation else None): m.value
           for m in group.get_measurements()}
    assert got[("126401", "56851009")] == pytest.approx(float(row["suv_max"]), abs=1e-6)
    assert got[("126401", "373098007")] == pytest.approx(float(row["suv_mean"]), abs=1e-6)
    assert got[("126401", "126031")] == pytest.approx(float(row["suv_peak"]), abs=1e-6)
    assert got[("118565006", None)] == pytest.approx(float(row["volume_ml"]), abs=1e-6)
    assert got[("126033", None)] == pytest.approx(float(row["tlg"]), abs=1e-6)
