"""Physiological FDG uptake is not a lesion (quant/physiology.py), the autoPET FP/FN volumes
(quant/metrics.py), the RTSTRUCT reader (io/rtstruct.py) on the real whole-body study, and the
denoise-segment task dropping bladder and kidney activity from the demo phantom (issue 13)."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.dicom import read_pet_suv
from PETDiffusionLib.io.rtstruct import list_rois, rasterise_roi, series_frame_of_reference
from PETDiffusionLib.quant.metrics import false_negative_volume_ml, false_positive_volume_ml
from PETDiffusionLib.quant.physiology import suppress_physiological
from PETDiffusionLib.tasks.denoise_segment.demo import simulate_demo_case
from PETDiffusionLib.tasks.denoise_segment.pipeline import (ORGAN_NAMES, denoise_segment_image,
                                                            load_model)

SPACING = (4.0, 4.0, 5.0)             # x, y, z mm: the shipped model's working grid
SHAPE = (160, 64, 64)                 # z, y, x: 800 mm of body, z index 0 inferior
KIDNEY = [k for k, v in ORGAN_NAMES.items() if v == "kidney"][0]
LIVER = [k for k, v in ORGAN_NAMES.items() if v == "liver"][0]
MID_X = 32                            # the body's midline (x index)


def _ellipsoid(centre_zyx_mm, semi_zyx_mm) -> np.ndarray:
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    dz, dy, dx = SPACING[2], SPACING[1], SPACING[0]
    return (((z * dz - centre_zyx_mm[0]) / semi_zyx_mm[0]) ** 2
            + ((y * dy - centre_zyx_mm[1]) / semi_zyx_mm[1]) ** 2
            + ((x * dx - centre_zyx_mm[2]) / semi_zyx_mm[2]) ** 2) <= 1.0


def _body():
    """An SUV-1 elliptic cylinder (the whole body), kidneys at z 400-460 mm either side of the
    spine, the liver above them on the right; the head's top at z = 800 mm."""
    suv = np.zeros(SHAPE, np.float32)
    suv[_ellipsoid((400, 128, 128), (10000, 100, 110))] = 1.0
    organs = np.zeros(SHAPE, np.uint8)
    kidneys = (_ellipsoid((430, 170, 128 - 60), (30, 20, 15))
               | _ellipsoid((430, 170, 128 + 60), (30, 20, 15)))
    organs[kidneys] = KIDNEY
    organs[_ellipsoid((530, 120, 128 - 55), (50, 50, 45))] = LIVER
    return suv, organs


def _add(suv, les, region, value, core=None):
    suv[region] = value
    les[region if core is None else core] = 1


def test_a_hot_blob_in_a_kidney_is_removed_and_a_tumour_beside_it_kept():
    suv, organs = _body()
    les = np.zeros(SHAPE, np.uint8)
    _add(suv, les, _ellipsoid((430, 170, 128 + 60), (12, 10, 10)), 12.0)      # renal pelvis
    _add(suv, les, _ellipsoid((430, 170, 128 + 60 + 40), (8, 8, 8)), 8.0)     # 25 mm lateral of it
    out, dropped = suppress_physiological(les, suv, organs, ORGAN_NAMES, SPACING)
    assert [d["reason"] for d in dropped] == ["kidney"]
    assert dropped[0]["suvmax"] == 12.0
    assert dropped[0]["centroid_mm"] == pytest.approx([188.0, 170.0, 430.0], abs=2.0)
    tumour = _ellipsoid((430, 170, 128 + 60 + 40), (8, 8, 8))
    assert out[tumour].all() and out.sum() == tumour.sum()


def test_a_bladder_shaped_blob_low_in_the_pelvis_is_removed_and_the_same_blob_in_the_liver_kept():
    suv, organs = _body()
    les = np.zeros(SHAPE, np.uint8)
    # bladder: 150 mL at SUV 30, 120 mm below the kidneys' lower end, on the midline; the
    # segmenter marks only its core
    bladder = _ellipsoid((280, 100, 128), (30, 30, 40))
    _add(suv, les, bladder, 30.0, _ellipsoid((280, 100, 128), (10, 10, 10)))
    liver_lesion = _ellipsoid((530, 120, 128 - 55), (30, 30, 40))
    _add(suv, les, liver_lesion, 30.0, _ellipsoid((530, 120, 128 - 55), (10, 10, 10)))
    out, dropped = suppress_physiological(les, suv, organs, ORGAN_NAMES, SPACING)
    assert [d["reason"] for d in dropped] == ["bladder"]
    assert dropped[0]["centroid_mm"][2] == pytest.approx(280.0, abs=1.0)
    assert out[_ellipsoid((530, 120, 128 - 55), (10, 10, 10))].all()
    assert not out[bladder].any()


def test_a_bladder_off_the_midline_or_above_the_kidneys_is_not_a_bladder():
    suv, organs = _body()
    les = np.zeros(SHAPE, np.uint8)
    side = _ellipsoid((280, 100, 128 + 80), (30, 30, 30))          # 80 mm lateral: a pelvic mass
    _add(suv, les, side, 30.0, _ellipsoid((280, 100, 128 + 80), (10, 10, 10)))
    out, dropped = suppress_physiological(les, suv, organs, ORGAN_NAMES, SPACING)
    assert dropped == [] and (out == les).all()


def test_brain_at_the_top_and_a_ureter_between_kidney_and_bladder_are_removed():
    suv, organs = _body()
    les = np.zeros(SHAPE, np.uint8)
    brain = _ellipsoid((740, 128, 128), (50, 70, 60))                # 1 L at SUV 8
    _add(suv, les, brain, 8.0, _ellipsoid((760, 128, 128), (10, 10, 10)))
    ureter = _ellipsoid((340, 170, 128 + 40), (40, 4, 4))            # 80 mm long, 8 mm wide
    _add(suv, les, ureter, 9.0)
    node = _ellipsoid((340, 170, 128 - 40), (8, 8, 8))               # a round node at that level
    _add(suv, les, node, 9.0)
    out, dropped = suppress_physiological(les, suv, organs, ORGAN_NAMES, SPACING)
    assert sorted(d["reason"] for d in dropped) == ["brain", "ureter"]
    assert out[node].all() and out.sum() == node.sum()


def test_keep_nothing_when_there_is_no_lesion_and_refuse_mismatched_grids():
    suv, organs = _body()
    out, dropped = suppress_physiological(np.zeros(SHAPE, np.uint8), suv, organs, ORGAN_NAMES,
                                          SPACING)
    assert dropped == [] and out.sum() == 0
    with pytest.raises(InputError, match="not on one grid"):
        suppress_physiological(np.zeros((10, 10, 10)), suv, organs, ORGAN_NAMES, SPACING)


# ------------------------------------------------------------------------------ autoPET volumes
def test_autopet_false_positive_and_false_negative_volumes():
    truth = np.zeros((12, 12, 12), bool)
    truth[1:4, 1:4, 1:4] = True                 # A: 27 voxels
    truth[8:10, 8:10, 8:10] = True              # B: 8 voxels, missed
    pred = np.zeros_like(truth)
    pred[2:5, 2:5, 2:5] = True                  # overlaps A: neither FP nor FN
    pred[1:3, 8:11, 1:3] = True                 # C: 12 voxels touching nothing
    sp = (2.0, 2.0, 2.0)                        # 8 mm3 = 0.008 mL per voxel
    assert false_positive_volume_ml(pred, truth, sp) == pytest.approx(12 * 0.008)
    assert false_negative_volume_ml(pred, truth, sp) == pytest.approx(8 * 0.008)
    assert false_positive_volume_ml(truth, truth, sp) == 0.0


def test_autopet_volumes_use_18_connectivity():
    truth = np.zeros((6, 6, 6), bool)
    truth[2, 2, 2] = True
    edge, corner = truth.copy(), truth.copy()
    edge[2, 3, 3] = True                        # shares an edge: one component, it overlaps truth
    corner[3, 3, 3] = True                      # shares a corner only: its own component
    assert false_positive_volume_ml(edge, truth, (1, 1, 1)) == 0.0
    assert false_positive_volume_ml(corner, truth, (1, 1, 1)) == pytest.approx(0.001)


# ------------------------------------------------------------------------------ RTSTRUCT
def _petwb(shared_data):
    return (shared_data / "petwb_sts001" / "PET" / "image",
            shared_data / "petwb_sts001" / "PET" / "mask" / "1-1.dcm")


def test_rtstruct_tumour_of_the_real_whole_body_study(shared_data):
    image_dir, rt = _petwb(shared_data)
    assert [r.name for r in list_rois(rt)] == ["GTV_Mass", "GTV_Edema"]
    pet, _ = read_pet_suv(image_dir)
    mask = rasterise_roi(rt, "GTV_Mass", pet, series_frame_of_reference(image_dir))
    arr = sitk.GetArrayFromImage(mask)
    volume_ml = arr.sum() * np.prod(pet.GetSpacing()) / 1000.0
    # the polygons' own areas (shoelace) x the 3.27 mm slice step give 365.2 mL; the rasterised
    # mask measured 366.1 mL on the 4.69 mm grid
    assert volume_ml == pytest.approx(365.2, rel=0.02)
    zs = np.nonzero(arr.any((1, 2)))[0]
    assert (zs.min(), zs.max()) == (12, 42)     # 31 contour planes at -842.06 ... -743.96 mm
    suv = sitk.GetArrayFromImage(pet)
    assert 7.0 < suv[arr > 0].max() < 9.0       # the sarcoma's SUVmax 7.9 (full count)


def test_rtstruct_errors_name_the_file(shared_data, tmp_path):
    image_dir, rt = _petwb(shared_data)
    pet, _ = read_pet_suv(image_dir)
    with pytest.raises(InputError, match=r"1-1.dcm.*no ROI named 'GTV'.*'GTV_Mass'"):
        rasterise_roi(rt, "GTV", pet)
    with pytest.raises(InputError, match="1-1.dcm.*frame of reference"):
        rasterise_roi(rt, "GTV_Mass", pet, "1.2.3.4")
    head = pet[:, :, 200:]                      # the top of the body: the thigh tumour is not on it
    with pytest.raises(InputError, match="outside the image's slices"):
        rasterise_roi(rt, "GTV_Mass", head)
    ds = pydicom.dcmread(str(next(image_dir.iterdir())))
    ds.save_as(tmp_path / "pet.dcm")
    with pytest.raises(InputError, match="pet.dcm.*not an RT Structure Set"):
        list_rois(tmp_path / "pet.dcm")


# ------------------------------------------------------------------------------ the task
def test_denoise_segment_drops_the_demo_bladder_and_kidney(tmp_path):
    """The demo phantom's lower half (pelvis to kidneys: 44 of its 80 slices, to keep this quick)
    with the shipped model: bladder and kidney activity leave the lesion mask, no true lesion does;
    keep_physiological gives back the unsuppressed mask."""
    case = simulate_demo_case(tmp_path / "phantom")
    pet = sitk.ReadImage(str(case / "pet_low_10.nii.gz"))[:, :, :44]
    ct = sitk.ReadImage(str(case / "ct.nii.gz"), sitk.sitkFloat32)[:, :, :44]
    nets, card = load_model(None, "cpu")
    res = denoise_segment_image(pet, ct, nets, card, {}, keep_hc=True)
    dropped = res["_info"]["physiological_uptake_removed"]
    # the bladder and kidney components (how many depends on the model), no other rule
    assert {d["reason"] for d in dropped} == {"bladder", "kidney"}
    json.dumps(dropped)                          # goes into manifest.json as it is
    organs = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "organs.nii.gz")))[:44]
    names = json.loads((case / "case.json").read_text())["organ_labels"]
    before = sitk.GetArrayFromImage(res["lesions_unsuppressed"]) > 0
    removed = before & (sitk.GetArrayFromImage(res["lesions"]) == 0)
    true_lesions = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz")))[:44] > 0
    assert removed.any() and not (removed & true_lesions).any()
    where = {names[str(v)] for v in np.unique(organs[removed])}
    assert where <= {"bladder", "bowel", "kidney_left", "kidney_right"}
    kept = denoise_segment_image(pet, ct, nets, card, {"keep_physiological": True})
    assert kept["_info"]["physiological_uptake_removed"] == []
    assert (sitk.GetArrayFromImage(kept["lesions"]) > 0).tolist() == before.tolist()
