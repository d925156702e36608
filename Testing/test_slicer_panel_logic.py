"""The panels' logic that keeps the GUI responsive and the user's edits measured, on real slicer-core
nodes and real library processes: the task spec is read once and then from a cache, processes start
through Slicer's console-process launcher, the PET and CT inputs are recognised by what the volumes
say they are, and the Segment Editor round trip recomputes the lesion table, TMTV and TLG."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETDiffusion"))

import slicer  # noqa: E402

from PETDiffusionSlicer import nodes, runner  # noqa: E402
from PETDiffusionSlicer.logic import TaskLogic, recompute_from_segments  # noqa: E402


# ------------------------------------------------------------------------------------------------
# the spec: one library process, then a file
# ------------------------------------------------------------------------------------------------
def test_task_spec_is_fetched_once_then_read_from_the_cache(tmp_path):
    t0 = time.monotonic()
    spec = runner.task_spec("ct-to-pet", cache_dir=tmp_path)
    first = time.monotonic() - t0
    cached = list(tmp_path.glob("ct-to-pet-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == spec
    assert cached[0].name == f"ct-to-pet-{runner.spec_cache_key()}.json"
    # what the second call returns comes from that file (a marker written into it comes back)
    cached[0].write_text(json.dumps({**spec, "marker": 1}))
    t0 = time.monotonic()
    again = runner.task_spec("ct-to-pet", cache_dir=tmp_path)
    second = time.monotonic() - t0
    assert again["marker"] == 1 and {p["name"] for p in again["parameters"]} == {p["name"] for p in spec["parameters"]}
    assert second < first / 3          # a file read, not a new Python process


def test_spec_cache_key_changes_when_a_task_file_changes(tmp_path):
    lib = tmp_path / "PETDiffusionLib"
    (lib / "tasks" / "demo").mkdir(parents=True)
    (lib / "__init__.py").write_text("__version__ = '1'\n")
    spec = lib / "tasks" / "demo" / "spec.py"
    spec.write_text("SPEC = 1\n")
    before = runner.spec_cache_key(tmp_path)
    assert runner.spec_cache_key(tmp_path) == before
    spec.write_text("SPEC = 22\n")
    assert runner.spec_cache_key(tmp_path) != before


def test_the_panel_logic_prefetches_its_spec_in_a_thread():
    logic = TaskLogic("denoise-segment")
    thread = logic.prefetchSpec()
    assert thread is not None and thread.daemon
    thread.join(timeout=120)
    assert logic.specReady() and logic._spec_error is None
    assert logic.parameterSpec("steps")["maximum"] == 250
    assert logic.prefetchSpec() is thread or logic.prefetchSpec() is None   # no second fetch


# ------------------------------------------------------------------------------------------------
# processes through Slicer's console-process launcher
# ------------------------------------------------------------------------------------------------
def test_library_processes_start_through_slicers_console_launcher():
    """slicer.util.launchConsoleProcess (hides the console window on Windows) is what starts them;
    its merged output still carries the library's error line."""
    assert hasattr(slicer.util, "launchConsoleProcess")
    proc, merged = runner.launch_process(runner.library_command("spec", "ct-to-pet"),
                                         runner.subprocess_environment(None))
    out, err = proc.communicate(timeout=120)
    assert merged and err is None and proc.returncode == 0
    assert "ct-to-pet" in json.loads(out)
    code, output = runner.run_library(["spec", "no-such-task"], timeout=120)
    assert code != 0 and "no-such-task" in runner.last_error_line(output)


# ------------------------------------------------------------------------------------------------
# which volume is the PET, which the CT
# ------------------------------------------------------------------------------------------------
def _volume(name, units=None):
    node = nodes.volume_node_from_image(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)), name,
                                        units=units)
    return node


def test_pet_and_ct_are_recognised_by_units_codes_and_dicom_modality_never_by_order(scene):
    ct = _volume("CT first in the scene", "HU")
    plain = _volume("an unlabelled volume")
    pet = _volume("the PET", "SUVbw")
    assert (nodes.volume_role(ct), nodes.volume_role(pet), nodes.volume_role(plain)) == ("ct", "pet", None)
    assert nodes.guess_volume(scene, "pet") is pet and nodes.guess_volume(scene, "ct") is ct
    # a synthetic PET is never preselected as the measured input
    scene.RemoveNode(pet)
    _volume("synthetic", "SUVbw").SetAttribute(nodes.SYNTHETIC_ATTRIBUTE, "1")
    assert nodes.guess_volume(scene, "pet") is None             # the CT is not offered as the PET
    # a PET loaded from DICOM in Bq/mL: the coded quantity, or the series modality says PET
    coded = _volume("activity")
    quantity = slicer.vtkCodedEntry()
    quantity.SetValueSchemeMeaning("130047", "DCM", "Activity Concentration")
    coded.SetVoxelValueQuantity(quantity)
    assert nodes.volume_role(coded) == "pet"
    from_dicom = _volume("PET AC")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.CreateItem(sh.GetSceneItemID(), from_dicom)
    sh.SetItemAttribute(item, nodes.DICOM_MODALITY_ATTRIBUTE, "PT")
    assert nodes.volume_role(from_dicom) == "pet"
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert nodes.volume_role(label) is None


# ------------------------------------------------------------------------------------------------
# Segment Editor round trip
# ------------------------------------------------------------------------------------------------
def _image(arr, spacing=(2.0, 2.0, 2.0), origin=(-20.0, -20.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _import_segment(seg_node, mask: np.ndarray, name: str, reference):
    """What painting a segment in Segment Editor leaves: a new named segment with those voxels."""
    label = nodes.volume_node_from_image(sitk.Cast(_image(mask.astype(np.int16)), sitk.sitkInt16), "__paint", label=True)
    before = seg_node.GetSegmentation().GetNumberOfSegments()
    assert nodes.segmentations_logic().ImportLabelmapToSegmentationNode(label, seg_node, "")
    slicer.mrmlScene.RemoveNode(label)
    segment = seg_node.GetSegmentation().GetNthSegment(before)
    segment.SetName(name)


def test_edited_lesion_segments_give_a_new_lesion_table_tmtv_tlg_and_report(scene, tmp_path):
    """Three lesions found; the user deletes lesion 2 (a false positive), grows lesion 1 and paints a
    missed one: one button measures the edited segments again, exactly as numpy does."""
    suv = np.full((12, 20, 20), 1.0, np.float32)
    suv[2:5, 2:5, 2:5] = 6.0
    suv[3, 3, 3] = 9.0
    suv[8:10, 14:16, 14:16] = 3.0
    suv[8:11, 2:5, 12:15] = 5.0
    pet = nodes.volume_node_from_image(_image(suv), "denoised PET", units="SUVbw", synthetic=True)
    found = np.zeros(suv.shape, np.uint8)
    found[2:4, 2:4, 2:4] = 1
    found[8:10, 14:16, 14:16] = 2
    found[0:2, 10:12, 10:12] = 3
    seg = nodes.segmentation_from_label_image(_image(found), {1: "lesion", 2: "lesion", 3: "lesion"}, "lesions",
                                              reference_volume=pet, lesion=True)
    table = nodes.table_node_from_rows(["lesion_id", "suv_max"], [["1", "0"]], "lesions table")
    segmentation = seg.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(3)]
    segmentation.RemoveSegment(ids[1])            # deleted: the 3.0 blob is not a lesion
    segmentation.RemoveSegment(ids[0])            # lesion 1 redrawn larger, around the whole 6.0 cube
    grown = np.zeros(suv.shape, bool)
    grown[2:5, 2:5, 2:5] = True
    _import_segment(seg, grown, "lesion 1 (edited)", pet)
    missed = np.zeros(suv.shape, bool)
    missed[8:11, 2:5, 12:15] = True
    _import_segment(seg, missed, "lesion missed", pet)
    result = recompute_from_segments(pet, seg, tmp_path / "edited", task="denoise-segment", table_node=table)

    # expected, by numpy: segments in order: the kept one (0:2 block, SUV 1), grown lesion 1, the missed one
    voxel_ml = 8.0 / 1000.0
    regions = []
    for mask in (found == 3, grown, missed):
        regions.append((mask.sum() * voxel_ml, suv[mask].max(), suv[mask].mean() * mask.sum() * voxel_ml))
    s = result["summary"]
    assert s["lesion_count"] == 3
    assert s["tmtv_ml"] == pytest.approx(sum(r[0] for r in regions), rel=1e-9)
    assert s["ttlg"] == pytest.approx(sum(r[2] for r in regions), rel=1e-5)
    assert result["table"] is table and table.GetNumberOfRows() == 3
    t = table.GetTable()
    got = sorted(t.GetColumnByName("suv_max").GetValue(i) for i in range(3))
    assert got == pytest.approx(sorted(r[1] for r in regions), abs=1e-5)        # 1.0, 5.0, 9.0
    assert table.GetColumnUnitLabel("tlg") == "SUVbw*mL"
    names = {p.name for p in result["files"]}
    assert {"report.pdf", "report.json", "lesions.csv", "summary.json"} <= names
    report = json.loads((tmp_path / "edited" / "report.json").read_text())
    assert report["synthetic"] is True and report["task"] == "denoise-segment"
    # the grown lesion (segment 2, SUVmax 9) first, then the missed one (5), then the kept block (1)
    assert report["lesion_ids_by_suvmax"] == [2, 3, 1]
    assert {r["lesion_id"]: r["suv_max"] for r in report["lesions"]} == pytest.approx({1: 1.0, 2: 9.0, 3: 5.0})


def test_recompute_refuses_without_a_segmentation(scene, tmp_path):
    pet = nodes.volume_node_from_image(_image(np.ones((4, 4, 4), np.float32)), "PET", units="SUVbw")
    with pytest.raises(ValueError, match="lesion segmentation"):
        recompute_from_segments(pet, None, tmp_path)
    assert not (tmp_path / "edited").exists()


# ------------------------------------------------------------------------------------------------
# sample data
# ------------------------------------------------------------------------------------------------
def test_sarcoma_sample_files_are_the_ibsi_files_by_sha256(shared_data):
    import hashlib
    from PETDiffusionSlicer import sampledata
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    for f, local in zip(sampledata.SARCOMA.files, ("PET_image.nii.gz", "CT_image.nii.gz")):
        assert hashlib.sha256((folder / local).read_bytes()).hexdigest() == f.sha256
        assert f.uri.endswith(f"/ibsi_validation/nifti/STS_001/{local}") and sampledata.IBSI_REVISION in f.uri
    assert "CC BY 3.0" in sampledata.SARCOMA.licence and "10.7937/K9/TCIA.2015.7GO2GSKS" in sampledata.SARCOMA.citation
    assert "Apache-2.0" in sampledata.PHANTOM.licence


def test_sample_data_loads_with_units_so_the_panels_preselect_pet_and_ct(scene, shared_data, tmp_path):
    """The phantom is made by the library; both samples load as Slicer loads files and carry their
    units, so the panels offer the PET as PET and the CT as CT."""
    from PETDiffusionSlicer import sampledata
    paths = sampledata.make_phantom_pair(tmp_path / "phantom")
    pet, ct = (sampledata._load(f, paths[f.file_name]) for f in sampledata.PHANTOM.files)
    assert (nodes.volume_role(pet), nodes.volume_role(ct)) == ("pet", "ct")
    assert slicer.util.arrayFromVolume(pet).shape == (80, 64, 64)
    assert nodes.guess_volume(scene, "pet") is pet and nodes.guess_volume(scene, "ct") is ct
    folder = shared_data / "petct_sts" / "nifti" / "STS_001"
    real_pet = sampledata._load(sampledata.SARCOMA.files[0], folder / "PET_image.nii.gz")
    assert real_pet.GetAttribute(nodes.UNITS_ATTRIBUTE) == "SUVbw" and nodes.volume_role(real_pet) == "pet"
    assert float(slicer.util.arrayFromVolume(real_pet).max()) == pytest.approx(25.41, abs=0.01)
