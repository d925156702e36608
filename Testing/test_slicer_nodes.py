"""MRML conversions with real slicer-core nodes and logics (no Qt): volumes, segmentations, tables,
terminology and display settings, as the Slicer panels use them."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETDiffusion"))

import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402

from PETDiffusionSlicer import display, nodes  # noqa: E402


def oblique_anisotropic(array: np.ndarray) -> sitk.Image:
    """An image with anisotropic spacing, a non-trivial origin and a rotation about two axes."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.78125, 1.3, 3.27))
    img.SetOrigin((-201.5, 117.25, -33.3))
    a, b = math.radians(17.0), math.radians(-9.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    img.SetDirection(tuple((rz @ rx).ravel()))
    return img


def test_pet_volume_round_trip_keeps_values_and_geometry_exactly(scene):
    rng = np.random.default_rng(3)
    suv = (rng.gamma(2.0, 1.5, size=(7, 9, 11))).astype(np.float32)
    img = oblique_anisotropic(suv)
    node = nodes.volume_node_from_image(img, "PET", units="SUVbw")
    back = nodes.image_from_volume_node(node)
    assert back.GetSpacing() == img.GetSpacing()
    assert back.GetOrigin() == img.GetOrigin()
    assert back.GetDirection() == img.GetDirection()
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(back), suv)
    # the node itself is in RAS: LPS x and y flip sign
    assert node.GetOrigin() == pytest.approx((201.5, -117.25, -33.3), abs=0)


def test_ct_volume_round_trip_keeps_integer_hu_exactly(scene):
    hu = np.arange(-1024, -1024 + 5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    img = oblique_anisotropic(hu)
    node = nodes.volume_node_from_image(img, "CT", units="HU")
    back = nodes.image_from_volume_node(node)
    assert back.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(back), hu)
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def test_written_nrrd_loads_in_slicer_with_the_same_ijk_to_ras(scene, tmp_path):
    """Independent check of the LPS/RAS handling: Slicer's own volume reader on the file we write."""
    img = oblique_anisotropic(np.linspace(0, 9, 5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7))
    node = nodes.volume_node_from_image(img, "PET", units="SUVbw")
    path = nodes.write_volume_node(node, tmp_path / "pet.nrrd")
    assert sitk.ReadImage(str(path)).GetMetaData("PETDiffusion.units") == "SUVbw"
    loaded = nodes.load_volume_file(path, "loaded")
    m1, m2 = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m1)
    loaded.GetIJKToRASMatrix(m2)
    assert np.allclose([[m1.GetElement(r, c) for c in range(4)] for r in range(4)],
                       [[m2.GetElement(r, c) for c in range(4)] for r in range(4)], atol=1e-9)
    assert np.array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(node))


def test_units_are_attributes_and_dicom_coded_quantities(scene):
    img = sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32))
    pet = nodes.volume_node_from_image(img, "PET", units="SUVbw")
    ct = nodes.volume_node_from_image(img, "CT", units="HU")
    assert pet.GetAttribute("PETDiffusion.units") == "SUVbw"
    assert (pet.GetVoxelValueQuantity().GetCodeValue(), pet.GetVoxelValueQuantity().GetCodingSchemeDesignator()) == ("126400", "DCM")
    assert (pet.GetVoxelValueUnits().GetCodeValue(), pet.GetVoxelValueUnits().GetCodingSchemeDesignator()) == ("{SUVbw}g/ml", "UCUM")
    assert ct.GetVoxelValueUnits().GetCodeValue() == "[hnsf'U]"
    assert nodes.image_from_volume_node(ct).GetMetaData("PETDiffusion.units") == "HU"


def test_synthetic_volume_is_labelled_in_name_and_attribute(scene):
    img = sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32))
    img.SetMetaData("PETDiffusion.synthetic", "1")
    node = nodes.volume_node_from_image(img, "ct-to-pet pet synthetic", units="SUVbw")
    assert node.GetName() == "ct-to-pet pet synthetic [SYNTHETIC]"
    assert node.GetAttribute("PETDiffusion.synthetic") == "1"


def _study_with(volume_node):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "PET/CT study")
    item = sh.GetItemByDataNode(volume_node)
    if item:  # desktop Slicer gives every node an item; slicer-core alone does not
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, volume_node)
    return sh, study


def test_label_map_becomes_named_coloured_segments_with_terminology(scene):
    ref_img = oblique_anisotropic(np.zeros((6, 8, 10), np.float32))
    reference = nodes.volume_node_from_image(ref_img, "PET", units="SUVbw")
    sh, study = _study_with(reference)
    labels = np.zeros((6, 8, 10), np.uint16)
    labels[1:4, 2:5, 2:6] = 1      # 3*3*4 = 36 voxels
    labels[2:6, 5:8, 6:10] = 4     # 4*3*4 = 48 voxels
    labels[0, 0, 0:3] = 7          # 3 voxels, no name given
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(ref_img)
    seg = nodes.segmentation_from_label_image(lab_img, {1: "liver", 4: "kidneys", 9: "spleen"}, "organs",
                                              reference_volume=reference)
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["liver", "kidneys", "label 7"]
    assert nodes.segment_voxel_counts(seg, reference) == {"liver": 36, "kidneys": 48, "label 7": 3}

    liver = segmentation.GetNthSegment(0)
    entry = slicer.vtkSlicerTerminologyEntry()
    tl = nodes.terminology_logic()
    assert tl.DeserializeTerminologyEntry(liver.GetTerminology(), entry)
    assert entry.GetTypeObject().GetCodeValue() == "10200004"            # SNOMED CT: liver
    assert entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
    assert entry.GetCategoryObject().GetCodeValue() == "123037004"       # anatomical structure
    assert liver.GetColor() == pytest.approx((221 / 255, 130 / 255, 101 / 255))
    unnamed = slicer.vtkSlicerTerminologyEntry()
    tl.DeserializeTerminologyEntry(segmentation.GetNthSegment(2).GetTerminology(), unnamed)
    assert unnamed.GetTypeObject().GetCodeMeaning() == "Tissue"

    # reference geometry = the PET (needed for DICOM SEG export), placed in the PET's study
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == reference.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    # the temporary label map node is gone
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_lesion_label_map_gets_the_lesion_code(scene):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    seg = nodes.segmentation_from_label_image(sitk.GetImageFromArray(labels), {}, "lesions", lesion=True)
    entry = slicer.vtkSlicerTerminologyEntry()
    nodes.terminology_logic().DeserializeTerminologyEntry(seg.GetSegmentation().GetNthSegment(0).GetTerminology(), entry)
    assert (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue()) == ("49755003", "52988006")


def test_lesion_table_carries_the_lesion_columns_with_units(scene, tmp_path):
    path = tmp_path / "lesions.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "voxel_count", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"])
        w.writerow([1, 120, 3.75, 12.5, 6.25, 9.8, 23.4375])
        w.writerow([2, 40, 1.25, 4.0, 3.0, 3.1, 3.75])
    table = nodes.table_node_from_csv(path, "lesions")
    assert nodes.table_columns(table) == ["lesion_id", "voxel_count", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"]
    assert table.GetNumberOfRows() == 2
    assert table.GetColumnUnitLabel("volume_ml") == "mL"
    assert table.GetColumnUnitLabel("suv_max") == "SUVbw"
    assert table.GetColumnUnitLabel("tlg") == "SUVbw*mL"
    t = table.GetTable()
    assert t.GetColumnByName("lesion_id").GetDataTypeAsString() == "int"
    assert t.GetColumnByName("tlg").GetValue(0) == 23.4375
    assert t.GetColumnByName("suv_peak").GetValue(1) == 3.1


def test_table_units_are_the_ones_the_library_report_prints():
    """The panel's tables and the PDF/CSV report name the same units for every column they share."""
    from PETDiffusionLib.quant.tables import COLUMN_UNITS as LIBRARY_UNITS
    shared = set(LIBRARY_UNITS) & set(nodes.COLUMN_UNITS)
    assert {"suv_max", "suv_peak", "volume_ml", "tlg", "centroid_r_mm", "input_suv_max"} <= shared
    assert {c: nodes.COLUMN_UNITS[c] for c in shared} == {c: LIBRARY_UNITS[c] for c in shared}


def test_pet_display_uses_pet_colour_map_and_suv_window(scene):
    pet = nodes.volume_node_from_image(sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32)), "PET", units="SUVbw")
    display.show_pet(pet)
    d = pet.GetDisplayNode()
    assert d.GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    assert (d.GetWindowLevelMin(), d.GetWindowLevelMax()) == (0.0, 10.0)
    assert not d.GetAutoWindowLevel()
    assert not display.has_views()  # slicer-core: no application, view set-up is skipped


def test_segmentation_display_shows_2d_and_3d(scene):
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    seg = nodes.segmentation_from_label_image(sitk.GetImageFromArray(labels), {1: "liver"}, "organs")
    display.show_segmentation(seg)
    d = seg.GetDisplayNode()
    assert d.GetVisibility2DFill() and d.GetVisibility2DOutline() and d.GetVisibility3D()
    surface = vtk.vtkPolyData()
    seg.GetClosedSurfaceRepresentation(seg.GetSegmentation().GetNthSegmentID(0), surface)
    assert surface.GetNumberOfPoints() > 0


def test_show_results_puts_the_pet_output_over_the_ct_with_the_pet_colour_map(scene):
    one = sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32))
    ct = nodes.volume_node_from_image(sitk.Cast(one, sitk.sitkInt16), "CT", units="HU")
    unc = nodes.volume_node_from_image(one, "uncertainty", units="SUVbw")
    pet = nodes.volume_node_from_image(one, "pet synthetic", units="SUVbw", synthetic=True)
    display.show_results({"uncertainty": unc, "pet_synthetic": pet}, {"ct": ct})
    assert pet.GetDisplayNode().GetColorNodeID() == display.PET_COLOR_NODE_ID
    assert unc.GetDisplayNode().GetColorNodeID() == display.PET_COLOR_NODE_ID
    ct_display = ct.GetDisplayNode()
    assert ct_display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert (ct_display.GetWindowLevelMin(), ct_display.GetWindowLevelMax()) == display.CT_WINDOW


def test_label_map_node_names_come_from_its_colour_table(scene):
    labels = np.zeros((3, 4, 5), np.int16)
    labels[0, 0, :2] = 1
    labels[2, 3, :] = 2
    node = nodes.volume_node_from_image(sitk.GetImageFromArray(labels), "organs", label=True)
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "my organ colours")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(4)
    colors.SetColor(1, "liver", 0.8, 0.5, 0.4, 1.0)
    colors.SetColor(2, "spleen", 0.6, 0.4, 0.6, 1.0)
    colors.SetColor(3, "unused", 0.1, 0.1, 0.1, 1.0)
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    assert nodes.label_names_of(node) == {1: "liver", 2: "spleen"}


@pytest.mark.parametrize("name,code", [
    ("liver", "10200004"), ("lung_left", "39607008"), ("kidney_right", "64033007"), ("spleen", "78961009"),
    ("heart_blood_pool", "80891009"), ("heart_myocardium", "80891009"), ("aorta", "15825003"),
    ("vertebrae", "272673000"), ("ribs", "272673000"), ("bone_marrow", "14016003"), ("muscle", "127954009"),
    ("fat", "55603005"), ("bowel", "113276009"), ("body", "85756007")])
def test_library_organ_names_map_to_snomed_types(name, code):
    """The simulator's and the segmenter's organ names (PETDiffusionLib.phantom, networks.amdiff)."""
    entry_text, rgb = nodes.terminology_for_name(name)
    entry = slicer.vtkSlicerTerminologyEntry()
    nodes.terminology_logic().DeserializeTerminologyEntry(entry_text, entry)
    assert entry.GetTypeObject().GetCodeValue() == code
    assert all(0 <= c <= 1 for c in rgb)


def test_colour_table_has_every_terminology_type_with_its_codes(scene):
    import json
    table = nodes.load_color_table()
    assert nodes.load_color_table() is table            # once per scene
    data = json.loads((ROOT / "Resources" / "Terminology" / "PETDiffusion.term.json").read_text())
    types = [t for c in data["SegmentationCodes"]["Category"] for t in c["Type"]]
    assert table.GetNumberOfColors() == len(types) + 1
    for i, t in enumerate(types, start=1):
        assert table.GetColorName(i) == t["3dSlicerLabel"]
        assert table.GetTerminologyType(i).GetCodeValue() == t["CodeValue"]
        rgba = [0.0] * 4
        table.GetColor(i, rgba)
        assert [round(c * 255) for c in rgba[:3]] == t["recommendedDisplayRGBValue"]


def make_views(scene):
    """The views desktop Slicer would make: a layout node, slice nodes and a slice logic per view."""
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout = layout_logic.GetLayoutNode()
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    slice_logics = display.headless_slice_logics(scene, ("Red", "Yellow", "Green"))
    return layout_logic, layout, slice_logics


def slice_view_state(scene) -> dict:
    """view -> (orientation, label) of the Red, Yellow and Green slice nodes."""
    return {v: (display.slice_node(scene, v).GetOrientationString(), display.slice_node(scene, v).GetLayoutLabel())
            for v in display.COMPARE_VIEWS}


def test_four_up_views_are_axial_sagittal_coronal_before_the_compare_layout(scene):
    """The starting point desktop Slicer gives: the four-up layout made the views first."""
    make_views(scene)
    assert slice_view_state(scene) == {"Red": ("Axial", "R"), "Yellow": ("Sagittal", "Y"), "Green": ("Coronal", "G")}


def test_compare_layout_description_alone_turns_existing_views_axial_and_labels_them(scene):
    """The layout XML itself (as the layout logic applies it to views that already exist), without
    the explicit settings show_compare_layout adds."""
    layout_logic, layout, _ = make_views(scene)   # the layout logic must live: it applies the XML
    layout.AddLayoutDescription(display.COMPARE_LAYOUT_ID, display.COMPARE_LAYOUT_XML)
    layout.SetViewArrangement(display.COMPARE_LAYOUT_ID)
    assert slice_view_state(scene) == {"Red": ("Axial", "CT"), "Yellow": ("Axial", "PET"), "Green": ("Axial", "sPET")}
    yellow = display.slice_node(scene, "Yellow")
    assert yellow.GetLayoutColor() == pytest.approx((0xED / 255, 0xD5 / 255, 0x4C / 255))


def test_compare_layout_shows_ct_reference_and_synthetic_pet_axial_side_by_side_linked_and_fitted(scene):
    views = make_views(scene)
    layout = views[1]
    z, y, x = np.mgrid[0:10, 0:40, 0:60]
    img = sitk.GetImageFromArray(np.where((y - 20) ** 2 + (x - 30) ** 2 < 15 ** 2, 40, -1000).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 3.0))
    ct = nodes.volume_node_from_image(img, "CT", units="HU")
    ref = nodes.volume_node_from_image(img, "PET", units="SUVbw")
    syn = nodes.volume_node_from_image(img, "pet synthetic", units="SUVbw", synthetic=True)
    display.show_compare_layout(ct, ref, syn)
    assert layout.GetViewArrangement() == display.COMPARE_LAYOUT_ID
    assert slice_view_state(scene) == {"Red": ("Axial", "CT"), "Yellow": ("Axial", "PET"), "Green": ("Axial", "sPET")}
    shown = {}
    for view in display.COMPARE_VIEWS:
        composite = display.slice_composite_node(scene, view)
        assert composite is not None and composite.GetLinkedControl()
        assert composite.GetForegroundVolumeID() is None
        shown[view] = composite.GetBackgroundVolumeID()
    assert shown == {"Red": ct.GetID(), "Yellow": ref.GetID(), "Green": syn.GetID()}
    assert syn.GetDisplayNode().GetColorNodeID() == display.PET_COLOR_NODE_ID
    assert ct.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    # fitted: the CT's 120 mm x 80 mm axial extent fills the view's width or height, and the three
    # views show the same field of view and slice (linked)
    fov = [display.slice_node(scene, v).GetFieldOfView() for v in display.COMPARE_VIEWS]
    assert fov[0][0] == pytest.approx(120.0, rel=0.02) or fov[0][1] == pytest.approx(80.0, rel=0.02)
    assert fov[0] == fov[1] == fov[2]
    offsets = {display.slice_node(scene, v).GetSliceOffset() for v in display.COMPARE_VIEWS}
    assert len(offsets) == 1


def test_compare_layout_clicked_again_after_a_view_was_turned_sagittal_puts_it_back(scene):
    make_views(scene)
    one = sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32))
    ct = nodes.volume_node_from_image(one, "CT", units="HU")
    syn = nodes.volume_node_from_image(one, "pet synthetic", units="SUVbw", synthetic=True)
    display.show_compare_layout(ct, None, syn)
    display.slice_node(scene, "Green").SetOrientation("Sagittal")
    display.show_compare_layout(ct, None, syn)
    assert slice_view_state(scene)["Green"] == ("Axial", "sPET")
    assert display.slice_composite_node(scene, "Yellow").GetBackgroundVolumeID() is None


def test_pet_is_fused_over_ct_in_every_slice_view(scene):
    views = make_views(scene)
    one = sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32))
    ct = nodes.volume_node_from_image(one, "CT", units="HU")
    pet = nodes.volume_node_from_image(one, "PET", units="SUVbw")
    display.fuse_pet_over_ct(pet, ct)
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert len(composites) >= 3 and len(views[2]) == len(composites)
    for c in composites:
        assert (c.GetBackgroundVolumeID(), c.GetForegroundVolumeID()) == (ct.GetID(), pet.GetID())
        assert c.GetForegroundOpacity() == display.PET_OVER_CT_OPACITY


def test_slice_views_render_ct_in_grey_and_pet_in_heat_colours(scene):
    make_views(scene)
    z, y, x = np.mgrid[0:6, 0:40, 0:40]
    inside = ((y - 20) ** 2 + (x - 20) ** 2) < 15 ** 2
    ct = nodes.volume_node_from_image(sitk.GetImageFromArray(np.where(inside, 40, -1000).astype(np.int16)), "CT", units="HU")
    pet = nodes.volume_node_from_image(sitk.GetImageFromArray(np.where(inside, 2.0, 0.0).astype(np.float32)), "PET", units="SUVbw")
    display.show_compare_layout(ct, pet, pet)
    ct_rgb, pet_rgb, _ = display.render_slice_views(scene, size=64)
    centre, corner = (32, 32), (1, 1)
    assert ct_rgb.shape == (64, 64, 3)
    r, g, b = (int(c) for c in ct_rgb[centre])
    assert r == g == b and r > 100                 # soft tissue, grey, in the CT window
    assert tuple(ct_rgb[corner]) == (0, 0, 0)      # air below the window
    r, g, b = (int(c) for c in pet_rgb[centre])
    # SUV 2 in a 0-10 window = 51/255 of PET-Heat, whose control point at 50 is (0.7, 0.1, 0): dark red
    assert 160 < r < 200 and 15 < g < 40 and b < 5
    assert tuple(pet_rgb[corner]) == (0, 0, 0)
