"""The DICOM reader on real scans: IBSI soft-tissue-sarcoma PET/CT (TCIA, CC BY 3.0) against the
NIfTI the IBSI made from the same DICOM, and a Siemens CT in JPEG 2000 (TotalSegmentator example,
Apache-2.0) against the grid of its segmentation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.io.dicom import KVP_KEY, WEIGHT_KEY, find_series, read_dicom_image
from PETDiffusionLib.io.images import get_units, read_image, resample_to


def _assert_same_image(img: sitk.Image, ref: sitk.Image) -> None:
    assert img.GetSize() == ref.GetSize()
    assert np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    assert np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    assert np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    a, b = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref)
    assert np.allclose(a, b, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("patient", ["STS_001", "STS_002"])
def test_sarcoma_pet_dicom_in_suv_equals_the_ibsi_nifti(shared_data, patient):
    # STS_002's injection datetime is a day after its series date (anonymisation shift): the PET
    # is Units GML (already SUVbw), so reading must not depend on it.
    root = shared_data / "petct_sts"
    pet = read_dicom_image(root / "dicom" / patient / "PET/image")
    assert get_units(pet) == "SUVbw"
    _assert_same_image(pet, sitk.ReadImage(str(root / "nifti" / patient / "PET_image.nii.gz")))


@pytest.mark.parametrize("patient", ["STS_001", "STS_002"])
def test_sarcoma_ct_dicom_in_hu_equals_the_ibsi_nifti(shared_data, patient):
    root = shared_data / "petct_sts"
    ct = read_image(root / "dicom" / patient / "CT/image")  # a folder dispatches to the reader
    assert get_units(ct) == "HU"
    _assert_same_image(ct, sitk.ReadImage(str(root / "nifti" / patient / "CT_image.nii.gz")))


def test_find_series_lists_pet_and_ct_of_a_study_with_suv_computable(shared_data):
    series = find_series(shared_data / "petct_sts/dicom/STS_002")
    by_modality = {s.modality: s for s in series}
    assert set(by_modality) == {"PT", "CT"}
    assert by_modality["PT"].suv_ok is True and by_modality["PT"].suv_missing == []
    assert by_modality["CT"].suv_ok is None
    assert by_modality["PT"].size == (30, 27, 48)
    assert by_modality["PT"].spacing == pytest.approx((5.46875, 5.46875, 3.27))


def test_jpeg2000_ct_decodes_onto_the_grid_of_its_segmentation(shared_data):
    ref_dir = shared_data / "ct_totalseg_example/tests/reference_files"
    ct = read_dicom_image(ref_dir / "example_ct_dicom")
    seg = sitk.ReadImage(str(ref_dir / "example_seg_dicom.nii.gz"))
    assert ct.GetMetaData(KVP_KEY) == "120" and ct.HasMetaDataKey(WEIGHT_KEY)
    # The NIfTI stores the rows in the opposite order (y axis flipped); the voxel centres coincide.
    corners = [(i, j, k) for i in (0, 511) for j in (0, 511) for k in (0, 19)]
    a = np.array(sorted(ct.TransformIndexToPhysicalPoint(c) for c in corners))
    b = np.array(sorted(seg.TransformIndexToPhysicalPoint(c) for c in corners))
    assert ct.GetSize() == seg.GetSize() and np.allclose(a, b, atol=1e-4)
    on_seg = sitk.GetArrayFromImage(resample_to(ct, seg))
    assert np.array_equal(on_seg, sitk.GetArrayFromImage(ct)[:, ::-1, :])
    labels = sitk.GetArrayFromImage(seg)
    hu = float(on_seg.min()), float(on_seg.max())
    assert hu[0] >= -1024 and hu[1] > 1000  # air to bone, in HU
    # the organs land where the segmentation says (PHYSICS.md §5): back muscle (autochthon, 86/87)
    # 10..40 HU, vertebrae (T11/T12, 32/33) well above soft tissue
    assert 10 <= float(np.median(on_seg[np.isin(labels, [86, 87])])) <= 40
    assert float(np.median(on_seg[np.isin(labels, [32, 33])])) > 150


def test_single_slice_pet_series_take_their_thickness_and_compute_suv(shared_data):
    # TCIA ACRIN-FLT-Breast: two PET slices from two series, full SUV tags, no start datetime
    series = find_series(shared_data / "pet_slices_acrin")
    assert len(series) == 2
    assert all(s.modality == "PT" and s.n_slices == 1 and s.suv_ok for s in series)
    assert sorted(s.spacing[2] for s in series) == [3.0, 5.0]  # SliceThickness of one slice
    with pytest.raises(Exception, match="2 series found"):
        read_dicom_image(shared_data / "pet_slices_acrin")
