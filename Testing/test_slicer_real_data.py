"""Real images through the Slicer side (../shared/data, see its MANIFEST.md): volumes loaded by Slicer's
own reader reach the library unchanged, and a real label map becomes named segments with the right
voxel counts. Sources: IBSI soft-tissue sarcoma PET/CT (TCIA, CC BY 3.0; Vallieres et al. 2015) and
the TotalSegmentator example CT (Apache-2.0)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETDiffusion"))

import slicer  # noqa: E402


from PETDiffusionSlicer import nodes  # noqa: E402


def load_with_slicer(scene, path: Path, name: str):
    """As Slicer loads a file (Volumes module logic, LPS file -> RAS node)."""
    return nodes.load_volume_file(path, name)


@pytest.mark.parametrize("case,image,units", [("STS_001", "PET_image", "SUVbw"), ("STS_001", "CT_image", "HU"),
                                              ("STS_002", "PET_image", "SUVbw")])
def test_real_volume_loaded_by_slicer_reaches_the_library_unchanged(scene, shared_data, tmp_path, case, image, units):
    path = shared_data / "petct_sts" / "nifti" / case / f"{image}.nii.gz"
    node = load_with_slicer(scene, path, image)
    nodes.set_volume_units(node, units)
    written = nodes.write_volume_node(node, tmp_path / "input.nrrd")   # what the runner hands the library
    from PETDiffusionLib.io.images import get_units, read_image
    original, received = sitk.ReadImage(str(path)), read_image(written)
    assert get_units(received) == units
    assert received.GetSize() == original.GetSize()
    assert np.allclose(received.GetSpacing(), original.GetSpacing(), rtol=0, atol=1e-6)
    assert np.allclose(received.GetOrigin(), original.GetOrigin(), rtol=0, atol=1e-4)
    assert np.allclose(received.GetDirection(), original.GetDirection(), rtol=0, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(received),
                          sitk.GetArrayFromImage(original).astype(np.float32))


def test_real_label_map_becomes_segments_with_names_and_voxel_counts(scene, shared_data):
    folder = shared_data / "ct_totalseg_example"
    ct = load_with_slicer(scene, folder / "tests" / "reference_files" / "example_ct_sm.nii.gz", "CT")
    names = {int(k): v for k, v in json.loads((folder / "totalsegmentator_total_class_map.json").read_text()).items()}
    labels = sitk.ReadImage(str(folder / "tests" / "reference_files" / "example_seg.nii.gz"))
    arr = sitk.GetArrayFromImage(labels)
    present = [int(v) for v in np.unique(arr) if v]
    seg = nodes.segmentation_from_label_image(labels, names, "organs", reference_volume=ct)
    counts = nodes.segment_voxel_counts(seg, ct)
    expected = {names[v]: int(np.count_nonzero(arr == v)) for v in present}
    print(f"{len(expected)} structures, e.g. liver {expected.get('liver')} voxels")
    assert counts == expected
    liver = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("liver"))
    assert "^10200004^Liver" in liver.GetTerminology()


def test_real_ct_through_the_runner_gives_a_synthetic_pet_on_the_ct_grid(scene, shared_data, tmp_path):
    """Sarcoma CT (0.98 x 0.98 x 3.27 mm, 198 x 202 x 59) -> ct-to-pet at minimal steps -> node on its grid."""
    from test_slicer_runner import SHIPPED, _tiny_ct_to_pet_model
    from PETDiffusionSlicer.runner import TaskRun
    model = None if (SHIPPED["ct-to-pet"] / "card.json").is_file() else str(_tiny_ct_to_pet_model(tmp_path / "m"))
    ct = load_with_slicer(scene, shared_data / "petct_sts" / "nifti" / "STS_001" / "CT_image.nii.gz", "STS_001 CT")
    nodes.set_volume_units(ct, "HU")
    run = TaskRun("ct-to-pet", {"ct": ct}, {"steps": 2, "seed": 0}, model=model, device="cpu",
                  reference="ct", temp_root=str(tmp_path)).start().wait(timeout=600)
    pet = run.output_nodes["pet_synthetic"]
    print(f"model {run.manifest.get('model_id')}: {run.manifest['seconds']} s in the library")
    assert pet.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    assert np.allclose(pet.GetSpacing(), ct.GetSpacing()) and np.allclose(pet.GetOrigin(), ct.GetOrigin())
    suv = slicer.util.arrayFromVolume(pet)
    assert np.all(np.isfinite(suv)) and suv.min() >= 0
    assert run.manifest["kvp_source"].startswith("default")     # a NIfTI CT carries no kVp
    assert pet.GetAttribute("PETDiffusion.synthetic") == "1"


def test_real_sarcoma_pet_and_ct_through_denoise_segment_to_nodes_on_the_pet_grid(scene, shared_data, tmp_path):
    """STS_001 PET (SUVbw) + CT -> denoise-segment at 2 steps -> denoised PET, segmentations, tables."""
    from test_slicer_runner import SHIPPED, _tiny_denoise_segment_model
    from PETDiffusionSlicer.logic import TaskLogic
    model = None if (SHIPPED["denoise-segment"] / "card.json").is_file() else \
        str(_tiny_denoise_segment_model(tmp_path / "m"))
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    pet = load_with_slicer(scene, folder / "PET_image.nii.gz", "STS_001 PET")
    nodes.set_volume_units(pet, "SUVbw")
    ct = load_with_slicer(scene, folder / "CT_image.nii.gz", "STS_001 CT")
    nodes.set_volume_units(ct, "HU")
    run = TaskLogic("denoise-segment").process({"pet": pet, "ct": ct}, {"steps": 2, "seed": 0},
                                               waitForCompletion=True, model=model, device="cpu",
                                               temp_root=str(tmp_path), timeout=600)
    denoised = run.output_nodes["pet_denoised"]
    assert denoised.GetImageData().GetDimensions() == pet.GetImageData().GetDimensions()
    assert np.allclose(denoised.GetOrigin(), pet.GetOrigin()) and np.allclose(denoised.GetSpacing(), pet.GetSpacing())
    assert run.output_nodes["organs"].GetSegmentation().GetNumberOfSegments() >= 1
    lesions = run.output_nodes["lesions"].GetSegmentation().GetNumberOfSegments()
    gtv = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "PET_mask.nii.gz"))) > 0
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(run.output_files["lesions"]))) > 0
    dice = 2 * np.count_nonzero(gtv & pred) / max(1, np.count_nonzero(gtv) + np.count_nonzero(pred))
    print(f"model {run.manifest.get('model_id')}, {run.manifest['seconds']} s in the library; "
          f"lesion segments {lesions}, Dice with the expert GTV {dice:.2f} (reported, not asserted)")
