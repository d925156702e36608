"""The Slicer runner with a real subprocess (`python -m PETDiffusionLib run ... --progress json`) and
real slicer-core MRML nodes: progress streaming, output nodes, cancel, and library errors.

Models: the shipped model folders when they are present in PETDiffusionLib/models, else tiny
randomly initialised model folders built here the way the training recipes export theirs (the
runner's job is the plumbing, not the model quality). Minimal sampling steps, tiny volumes.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETDiffusion"))

import slicer  # noqa: E402

from PETDiffusionSlicer import nodes  # noqa: E402
from PETDiffusionSlicer.logic import TaskLogic  # noqa: E402
from PETDiffusionSlicer.runner import TaskError, TaskRun, task_spec  # noqa: E402

SHIPPED = {"ct-to-pet": ROOT / "PETDiffusionLib" / "models" / "cpdm-phantom-2p5d",
           "denoise-segment": ROOT / "PETDiffusionLib" / "models" / "amdiff-native-2p5d"}


def _tiny_ct_to_pet_model(folder: Path) -> Path:
    from PETDiffusionLib.models.registry import save_model_folder
    from PETDiffusionLib.methods.cpdm import networks as cpdm
    from PETDiffusionLib.models.card import build_network
    torch.manual_seed(0)
    specs = {"autoencoder": cpdm.autoencoder_spec((8, 8), 2),
             "attention": cpdm.attention_unet_spec(1, (4, 4, 4, 4, 4, 4)),
             "denoiser": cpdm.bridge_unet_spec(2, 1, True, True, (8, 8, 8))}
    nets = {k: build_network(v) for k, v in specs.items()}
    card = {"id": "cpdm-tiny-random", "task": "ct-to-pet", "version": "0.0.1", "networks": specs,
            "intended_use": "test plumbing only: random weights",
            "preprocessing": {"working_spacing_mm": [4.0, 4.0, 4.0], "context_slices": 1, "latent_factor": 2,
                              "latent_scale": 1.0, "use_sigma": True, "use_mu": True},
            "diffusion": {"kind": "brownian_bridge", "num_train_timesteps": 1000, "max_var": 1.0,
                          "objective": "grad", "default_steps": 2, "eta": 1.0}}
    return save_model_folder(folder, nets, card)


def _tiny_denoise_segment_model(folder: Path) -> Path:
    from PETDiffusionLib.models.registry import save_model_folder
    from PETDiffusionLib.training.recipes.denoise_segment import (DenoiseSegmentConfig, build_networks,
                                                                  network_specs)
    torch.manual_seed(0)
    cfg = DenoiseSegmentConfig(denoiser={"context": 1, "channels": [8, 8, 16, 16], "norm_num_groups": 4,
                                         "num_head_channels": 8},
                               revision={"hidden": 4, "layers": 2},
                               segmenter={"channels": [4, 8, 8, 8], "encoder": "conv", "use_ct": True})
    card = {"id": "amdiff-tiny-random", "task": "denoise-segment", "version": "0.0.1",
            "networks": network_specs(cfg), "intended_use": "test plumbing only: random weights",
            "preprocessing": {"suv_cutoff": 20.0, "spacing_mm": [8.0, 8.0, 10.0]},
            "diffusion": {"schedule": "cosine", "prediction": "epsilon", "num_train_timesteps": 250},
            "inference": {"steps": 2, "start_fraction": 0.4, "sampler": "ddim", "slice_batch": 8}}
    return save_model_folder(folder, build_networks(cfg), card)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """task id -> model folder for --model (None = the shipped model, when it is there)."""
    out = {}
    for task, build in (("ct-to-pet", _tiny_ct_to_pet_model), ("denoise-segment", _tiny_denoise_segment_model)):
        out[task] = None if (SHIPPED[task] / "card.json").is_file() else \
            str(build(tmp_path_factory.mktemp("models") / task))
    return out


@pytest.fixture(scope="module")
def specs():
    return {t: task_spec(t) for t in ("ct-to-pet", "denoise-segment")}


@pytest.fixture()
def temp_root(tmp_path):
    root = tmp_path / "temp"
    root.mkdir()
    return root


def _geometry(img: sitk.Image) -> sitk.Image:
    img.SetSpacing((4.0, 4.0, 4.0))
    img.SetOrigin((-64.0, -80.0, 100.0))
    a = math.radians(10.0)   # slightly oblique: outputs must come back on this grid
    img.SetDirection((math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a), 0.0, 0.0, 0.0, 1.0))
    return img


def tiny_ct_node(name="CT") -> object:
    z, y, x = np.mgrid[0:8, 0:32, 0:32]
    body = ((y - 16) / 12.0) ** 2 + ((x - 16) / 13.0) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0)
    hu[(((y - 16) / 4.0) ** 2 + ((x - 10) / 3.0) ** 2 < 1)] = 700.0    # bone
    hu[body & (x > 18) & (y < 14)] = -800.0                             # lung
    img = _geometry(sitk.GetImageFromArray(hu.astype(np.int16)))
    return nodes.volume_node_from_image(img, name, units="HU")


def tiny_pet_node(name="low-count PET") -> object:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:12, 0:32, 0:32]
    body = ((y - 16) / 12.0) ** 2 + ((x - 16) / 13.0) ** 2 < 1
    suv = body * 1.0 + (((z - 6) ** 2 + (y - 14) ** 2 + (x - 18) ** 2) < 6) * 7.0
    suv = np.clip(suv + rng.normal(0, 0.3, suv.shape) * body, 0, None).astype(np.float32)
    return nodes.volume_node_from_image(_geometry(sitk.GetImageFromArray(suv)), name, units="SUVbw")


def in_study(node):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, node)
    return sh, study


def data_nodes(scene) -> int:
    return scene.GetNodesByClass("vtkMRMLStorableNode").GetNumberOfItems()


def same_grid(a, b) -> bool:
    ia, ib = nodes.image_from_volume_node(a), nodes.image_from_volume_node(b)
    return (ia.GetSize() == ib.GetSize() and np.allclose(ia.GetSpacing(), ib.GetSpacing())
            and np.allclose(ia.GetOrigin(), ib.GetOrigin()) and np.allclose(ia.GetDirection(), ib.GetDirection(), atol=1e-6))


def tiny_organs(ct):
    """A two-organ segmentation on the CT's grid (a Slicer user's own organ segmentation)."""
    labels = np.zeros((8, 32, 32), np.uint16)
    labels[2:6, 8:14, 8:14] = 1
    labels[2:6, 18:22, 18:24] = 2
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(nodes.image_from_volume_node(ct))
    return nodes.segmentation_from_label_image(img, {1: "liver", 2: "spleen"}, "my organs", reference_volume=ct)


def test_ct_to_pet_streams_progress_and_creates_synthetic_pet_nodes(scene, models, specs, temp_root, tmp_path):
    ct = tiny_ct_node()
    sh, study = in_study(ct)
    organs = tiny_organs(ct)
    seen = []
    run = TaskRun("ct-to-pet", {"ct": ct, "organs": organs}, {"steps": 2, "seed": 0, "kvp": 120.0}, spec=specs["ct-to-pet"],
                  model=models["ct-to-pet"], device="cpu", reference="ct", temp_root=str(temp_root),
                  results_dir=str(tmp_path / "results"), on_progress=lambda f, s, m: seen.append(f))
    t0 = time.monotonic()
    run.start().wait(timeout=300)
    print(f"ct-to-pet run: {time.monotonic() - t0:.1f} s, {len(seen)} progress events, fractions {seen}")
    assert run.state == "completed"
    distinct = sorted(set(seen))
    assert len(distinct) >= 3 and seen == sorted(seen) and seen[-1] == 1.0

    pet = run.output_nodes["pet_synthetic"]
    assert pet.GetName().endswith("[SYNTHETIC]") and pet.GetAttribute("PETDiffusion.synthetic") == "1"
    assert pet.GetAttribute("PETDiffusion.units") == "SUVbw"
    assert pet.GetVoxelValueUnits().GetCodeValue() == "{SUVbw}g/ml"
    assert same_grid(pet, ct)
    assert np.all(slicer.util.arrayFromVolume(pet) >= 0)
    assert {"attention_map", "attenuation_map"} <= set(run.output_nodes)
    assert run.output_nodes["attenuation_map"].GetAttribute("PETDiffusion.synthetic") == "0"
    assert sh.GetItemParent(sh.GetItemByDataNode(pet)) == study
    # the segmentation input went to the library as a label map with its segment names
    table = run.output_nodes["organs_csv"].GetTable()
    organ_col = table.GetColumnByName("organ")
    assert [organ_col.GetValue(i) for i in range(table.GetNumberOfRows())] == ["liver", "spleen"]
    assert [table.GetColumnByName("voxels").GetValue(i) for i in range(2)] == [4 * 6 * 6, 4 * 4 * 6]
    assert run.output_files["report"].is_file()
    assert list(temp_root.iterdir()) == []                        # inputs and staging removed
    assert (tmp_path / "results" / "manifest.json").is_file()     # outputs kept for Export


def test_denoise_segment_creates_pet_segmentations_and_tables(scene, models, specs, temp_root, tmp_path):
    pet = tiny_pet_node()
    seen = []
    logic = TaskLogic("denoise-segment")
    run = logic.process({"pet": pet}, {"steps": 2, "seed": 0}, waitForCompletion=True, device="cpu",
                        model=models["denoise-segment"], spec=specs["denoise-segment"], temp_root=str(temp_root),
                        results_dir=str(tmp_path / "results"), on_progress=lambda f, s, m: seen.append(f),
                        timeout=300)
    print(f"denoise-segment: {len(seen)} progress events, outputs {sorted(run.output_nodes)}")
    assert len(set(seen)) >= 3 and seen == sorted(seen)
    denoised = run.output_nodes["pet_denoised"]
    assert denoised.GetAttribute("PETDiffusion.synthetic") == "1" and same_grid(denoised, pet)
    organs = run.output_nodes["organs"]
    assert organs.IsA("vtkMRMLSegmentationNode")
    manifest_names = set(run.manifest["organ_labels"].values())
    seg = organs.GetSegmentation()
    names = {seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())}
    assert names and names <= manifest_names          # every segment carries the library's organ name
    assert seg.GetNthSegment(0).GetTerminology().startswith(nodes.TERMINOLOGY_CONTEXT)
    assert run.output_nodes["lesions"].IsA("vtkMRMLSegmentationNode")
    organs_table = run.output_nodes["organs_csv"]
    assert organs_table.IsA("vtkMRMLTableNode") and organs_table.GetNumberOfRows() >= 1
    if "lesions_csv" in run.output_nodes:
        cols = set(nodes.table_columns(run.output_nodes["lesions_csv"]))
        assert {"lesion_id", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"} <= cols
    # a DICOM series on the PET's grid stands in for the PET's own series (written by the library)
    from PETDiffusionLib.io.dicom_export import write_dicom_series
    source = tmp_path / "dicom_source"
    import pydicom
    for f in write_dicom_series(sitk.Cast(nodes.image_from_volume_node(pet) * 100, sitk.sitkInt16), source,
                                modality="CT"):
        # These type 2 attributes (present, may be empty) are in a scanner's series and highdicom
        # copies them into the SEG; the library's exporter leaves them out, so add them empty here.
        ds = pydicom.dcmread(f)
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            setattr(ds, keyword, "")
        ds.save_as(f)
    exported = logic.exportReport(run, tmp_path / "export", dicom_source=source)
    names = {p.name for p in exported}
    print(f"exported: {sorted(names)}")
    assert {"report.pdf", "summary.json", "organs.csv", "manifest.json", "organs.seg.nrrd", "organs_seg.dcm"} <= names
    seg = pydicom.dcmread(tmp_path / "export" / "organs_seg.dcm")
    assert seg.Modality == "SEG"
    assert {s.SegmentLabel for s in seg.SegmentSequence} <= set(run.manifest["organ_labels"].values())
    assert list(temp_root.iterdir()) == []


def test_cancel_stops_the_process_tree_within_2_s_and_leaves_nothing(scene, models, specs, temp_root):
    ct = tiny_ct_node()
    before = data_nodes(scene)
    seen = []
    run = TaskRun("ct-to-pet", {"ct": ct}, {"steps": 1000, "samples": 4}, spec=specs["ct-to-pet"],
                  model=models["ct-to-pet"], device="cpu", temp_root=str(temp_root),
                  on_progress=lambda f, s, m: seen.append(f)).start()
    deadline = time.monotonic() + 120
    while not seen and time.monotonic() < deadline:   # wait until the library is really working
        assert not run.poll(), run.error
        time.sleep(0.05)
    assert seen, "no progress before the deadline"
    pid = run.process.pid
    tree = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    t0 = time.monotonic()
    run.cancel()
    elapsed = time.monotonic() - t0
    print(f"cancel took {elapsed:.3f} s")
    assert elapsed < 2.0
    assert run.state == "cancelled"
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in tree)
    assert data_nodes(scene) == before
    assert list(temp_root.iterdir()) == []


def test_library_error_arrives_as_the_library_message(scene, specs, temp_root):
    ct = tiny_ct_node()
    before = data_nodes(scene)
    logic = TaskLogic("ct-to-pet")
    with pytest.raises(TaskError) as exc:
        logic.process({"ct": ct}, {"steps": 1}, waitForCompletion=True, spec=specs["ct-to-pet"],
                      temp_root=str(temp_root), timeout=120)
    assert str(exc.value) == "parameter steps: 1 is below the minimum 2"
    assert data_nodes(scene) == before and list(temp_root.iterdir()) == []


def test_bad_input_error_names_the_problem(scene, specs, models, temp_root):
    """A PET given where a CT is expected: the library's own message, unchanged."""
    pet_as_ct = tiny_pet_node("not a CT")
    run = TaskRun("ct-to-pet", {"ct": pet_as_ct}, {"steps": 2}, spec=specs["ct-to-pet"],
                  model=models["ct-to-pet"], device="cpu", temp_root=str(temp_root)).start()
    with pytest.raises(TaskError) as exc:
        run.wait(timeout=120)
    print(f"library message: {exc.value}")
    # the temporary file name is replaced by the node's name; the rest is the library's text
    assert str(exc.value).startswith('"not a CT" (--ct): ')
    assert "is this a PET?" in str(exc.value) and run.state == "failed"
    assert not run.output_nodes and list(temp_root.iterdir()) == []


def test_library_lesion_table_becomes_a_table_node_with_the_lesion_columns(scene, tmp_path):
    """`petdiffusion quantify` (the library's own lesion table) -> table node, values and units kept."""
    import subprocess
    suv = np.full((10, 20, 20), 1.0, np.float32)
    suv[3:6, 5:9, 5:10] = 6.0                        # 3*4*5 = 60 voxels
    suv[4, 6, 7] = 9.0                               # its SUVmax
    img = sitk.GetImageFromArray(suv)
    img.SetSpacing((2.0, 2.0, 2.5))                  # 10 mm3 per voxel
    mask = sitk.GetImageFromArray((suv >= 6.0).astype(np.uint8))
    mask.CopyInformation(img)
    sitk.WriteImage(img, str(tmp_path / "pet.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "lesions.nrrd"))
    subprocess.run([sys.executable, "-m", "PETDiffusionLib", "quantify", "--pet", str(tmp_path / "pet.nrrd"),
                    "--lesions", str(tmp_path / "lesions.nrrd"), "--out", str(tmp_path / "q")],
                   check=True, capture_output=True, cwd=ROOT)
    table = nodes.table_node_from_csv(tmp_path / "q" / "lesions.csv", "lesions")
    cols = nodes.table_columns(table)
    assert {"lesion_id", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"} <= set(cols)
    t = table.GetTable()
    assert table.GetNumberOfRows() == 1
    assert t.GetColumnByName("volume_ml").GetValue(0) == pytest.approx(0.6)        # 60 x 10 mm3
    assert t.GetColumnByName("suv_max").GetValue(0) == pytest.approx(9.0)
    assert t.GetColumnByName("suv_mean").GetValue(0) == pytest.approx((59 * 6.0 + 9.0) / 60)
    assert t.GetColumnByName("tlg").GetValue(0) == pytest.approx(0.6 * (59 * 6.0 + 9.0) / 60, rel=1e-3)
    assert (table.GetColumnUnitLabel("volume_ml"), table.GetColumnUnitLabel("suv_peak"),
            table.GetColumnUnitLabel("tlg"), table.GetColumnUnitLabel("centroid_x_mm")) == ("mL", "SUVbw", "SUVbw*mL", "mm")


def test_pet_not_in_suv_reaches_the_library_as_its_dicom_series_and_comes_back_in_suv(scene, models, specs,
                                                                                       temp_root, shared_data):
    """A PET whose node is not in SUV (as Slicer loads a Bq/mL series): the run hands the library the
    DICOM series instead of the node's voxels, and the library converts it with its SUV rules. Here
    the source is the real STS_001 PET series (Units GML); in Slicer it is the series' files in the
    DICOM database (PETDiffusionSlicer.logic.dicom_pet_source)."""
    from PETDiffusionSlicer.logic import dicom_pet_source
    dicom = shared_data / "petct_sts" / "dicom" / "STS_001" / "PET" / "image"
    pet = nodes.load_volume_file(shared_data / "petct_sts" / "nifti" / "STS_001" / "PET_image.nii.gz", "PET Bq/mL")
    nodes.set_volume_units(pet, "Bq/mL")
    # outside desktop Slicer there is no DICOM database: the default source gives None (node voxels used)
    assert dicom_pet_source("pet", pet, temp_root) is None and list(temp_root.iterdir()) == []
    used = []

    def series_of(role, node, work_dir):
        used.append((role, node.GetName()))
        return dicom if role == "pet" else None
    logic = TaskLogic("denoise-segment")
    logic.reference_role = "pet"
    run = logic.process({"pet": pet}, {"steps": 2, "seed": 0}, waitForCompletion=True, spec=specs["denoise-segment"],
                        model=models["denoise-segment"], device="cpu", temp_root=str(temp_root), timeout=600,
                        show=False, input_source=series_of)
    assert used == [("pet", "PET Bq/mL")] and run.input_sources == {"pet": dicom}
    assert run.manifest["inputs"]["pet"] == str(dicom)
    out = run.output_nodes["pet_denoised"]
    assert out.GetAttribute(nodes.UNITS_ATTRIBUTE) == "SUVbw"
    assert slicer.util.arrayFromVolume(out).shape == slicer.util.arrayFromVolume(pet).shape
    assert list(temp_root.iterdir()) == []
