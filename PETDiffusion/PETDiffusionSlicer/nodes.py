"""MRML nodes <-> SimpleITK images and files: volumes, segmentations and tables.

Only MRML is needed (no Qt): this works in desktop Slicer and with the ``slicer-core`` wheel.

Geometry: Slicer stores a volume's IJK-to-RAS transform as spacing, origin and a 3x3 direction
matrix (columns = I, J, K axis directions in RAS). SimpleITK (ITK) uses LPS, so the first two rows of
the direction and the first two origin coordinates change sign; spacing is the same. Copying the
three parts separately (never re-deriving them from a 4x4 matrix) keeps every double exactly.

Units travel as the node attribute ``PETDiffusion.units`` (SUVbw, HU, ...), the same key the library
writes into image headers (PETDiffusionLib/io/images.py), plus the DICOM-coded voxel value quantity
and units that Slicer shows in its data probe (codes in :data:`UNIT_CODES`).
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from .resources import resource_path

log = logging.getLogger(__name__)

UNITS_ATTRIBUTE = "PETDiffusion.units"          # same key as PETDiffusionLib.io.images.UNITS_KEY
SYNTHETIC_ATTRIBUTE = "PETDiffusion.synthetic"  # "1" for model outputs that are not measurements
TASK_ATTRIBUTE = "PETDiffusion.task"
SYNTHETIC_SUFFIX = " [SYNTHETIC]"

# (quantity, units) as (code value, coding scheme, code meaning).
# SUV: DICOM CID 7180 / quantity DCM 126400 "Standardized Uptake Value", UCUM "{SUVbw}g/ml"
# (DICOM PS3.16 CID 85 "SUV Units"); HU: DCM 112031 "Attenuation Coefficient", UCUM "[hnsf'U]".
UNIT_CODES: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {
    "SUVbw": (("126400", "DCM", "Standardized Uptake Value"),
              ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")),
    "HU": (("112031", "DCM", "Attenuation Coefficient"),
           ("[hnsf'U]", "UCUM", "Hounsfield unit")),
    "Bq/mL": (("130047", "DCM", "Activity Concentration"),   # hedged: displayed as text only
              ("Bq/ml", "UCUM", "Becquerels/milliliter")),
    "1/cm": (("112031", "DCM", "Attenuation Coefficient"),
             ("/cm", "UCUM", "per centimeter")),
}

TERMINOLOGY_FILE = "Terminology/PETDiffusion.term.json"
TERMINOLOGY_CONTEXT = "PETDiffusion PET/CT segmentation category and type"


# ------------------------------------------------------------------------------------------------
# Scene helpers
# ------------------------------------------------------------------------------------------------
def scene() -> "slicer.vtkMRMLScene":
    if getattr(slicer, "mrmlScene", None) is None:
        raise RuntimeError("slicer.mrmlScene is not set")
    return slicer.mrmlScene


def new_headless_scene() -> "slicer.vtkMRMLScene":
    """A scene with the logics node conversion needs, for scripts and tests outside desktop Slicer.

    Inside Slicer the application has all this already; do not call it there.
    """
    sc = slicer.vtkMRMLScene()
    slicer.mrmlScene = sc
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(sc)
    color_logic = slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLScene(sc)
    color_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Colors", color_logic)  # display nodes look their colour tables up here
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    seg_logic.SetMRMLScene(sc)
    seg_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", seg_logic)
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(sc)
    volumes_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Volumes", volumes_logic)
    # Note: without Qt no subject hierarchy plugin gives new nodes an item; place_in_study_of makes one.
    sc._petdiffusion_logics = (app_logic, color_logic, seg_logic, volumes_logic)  # keep them alive with the scene
    return sc


def segmentations_logic():
    if hasattr(slicer, "modules") and hasattr(slicer.modules, "segmentations"):
        return slicer.modules.segmentations.logic()
    logics = getattr(scene(), "_petdiffusion_logics", None)
    if logics:
        return logics[2]
    lg = slicer.vtkSlicerSegmentationsModuleLogic()
    lg.SetMRMLScene(scene())
    return lg


def load_volume_file(path: str | os.PathLike, name: str, label: bool = False):
    """Load an image file as Slicer does (Volumes module logic: LPS file -> RAS node)."""
    if hasattr(slicer, "modules") and hasattr(slicer.modules, "volumes"):
        return slicer.util.loadVolume(str(path), {"name": name, "labelmap": label})
    logics = getattr(scene(), "_petdiffusion_logics", None)
    if not logics:
        raise RuntimeError("call new_headless_scene() first outside Slicer")
    node = logics[3].AddArchetypeVolume(str(path), name, 1 if label else 0, vtk.vtkStringArray())
    if node is None:
        raise ValueError(f"{path}: Slicer could not read this volume")
    return node


def terminology_logic():
    """The Terminologies logic with this extension's context loaded."""
    if hasattr(slicer, "modules") and hasattr(slicer.modules, "terminologies"):
        lg = slicer.modules.terminologies.logic()
    else:
        lg = getattr(terminology_logic, "_logic", None)
        if lg is None:
            lg = slicer.vtkSlicerTerminologiesModuleLogic()
            terminology_logic._logic = lg
    if not lg.IsTerminologyContextLoaded(TERMINOLOGY_CONTEXT):
        path = resource_path(TERMINOLOGY_FILE)
        if lg.LoadTerminologyFromFile(path) != TERMINOLOGY_CONTEXT:
            raise RuntimeError(f"cannot load the terminology file {path}")
    return lg


# ------------------------------------------------------------------------------------------------
# Volumes
# ------------------------------------------------------------------------------------------------
_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])


def volume_geometry_lps(node) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) of a volume node in ITK's LPS convention."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    ras_dir = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    lps_dir = _LPS_FLIP @ ras_dir  # exact: only sign changes
    ox, oy, oz = node.GetOrigin()
    return tuple(node.GetSpacing()), (-ox, -oy, oz), tuple(float(v) for v in lps_dir.ravel())


def set_volume_geometry_lps(node, spacing, origin, direction) -> None:
    lps_dir = np.asarray(direction, dtype=float).reshape(3, 3)
    ras_dir = _LPS_FLIP @ lps_dir
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(ras_dir[r, c]))
    node.SetIJKToRASDirectionMatrix(m)
    node.SetSpacing(*[float(s) for s in spacing])
    ox, oy, oz = origin
    node.SetOrigin(-float(ox), -float(oy), float(oz))


def image_from_volume_node(node) -> sitk.Image:
    """A SimpleITK image with the node's voxels (same dtype) and geometry; units in metadata."""
    if node is None or node.GetImageData() is None:
        raise ValueError(f"volume {node.GetName() if node else None!r} holds no image data")
    if node.GetTransformNodeID():
        log.warning("volume %s is under a transform; the transform is not applied", node.GetName())
    arr = slicer.util.arrayFromVolume(node)  # (k, j, i) = ITK's (z, y, x) array order
    img = sitk.GetImageFromArray(np.array(arr, copy=True))
    spacing, origin, direction = volume_geometry_lps(node)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    for key in (UNITS_ATTRIBUTE, SYNTHETIC_ATTRIBUTE):
        value = node.GetAttribute(key)
        if value:
            img.SetMetaData(key, value)
    return img


def set_volume_units(node, units: str | None, synthetic: bool = False) -> None:
    """Units as a node attribute and, where there is a DICOM code, as coded quantity and units."""
    if units:
        node.SetAttribute(UNITS_ATTRIBUTE, units)
        codes = UNIT_CODES.get(units)
        if codes:
            quantity, unit = (slicer.vtkCodedEntry(), slicer.vtkCodedEntry())
            quantity.SetValueSchemeMeaning(*codes[0])
            unit.SetValueSchemeMeaning(*codes[1])
            node.SetVoxelValueQuantity(quantity)
            node.SetVoxelValueUnits(unit)
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "1" if synthetic else "0")


def volume_node_from_image(image: sitk.Image, name: str, units: str | None = None,
                           synthetic: bool | None = None, label: bool = False,
                           node=None):
    """Add (or update ``node``) a scalar or label map volume node holding ``image`` exactly.

    ``units``/``synthetic`` default to the image's PETDiffusion metadata. Synthetic volumes get
    " [SYNTHETIC]" appended to their name and the attribute PETDiffusion.synthetic = 1.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: expected a 3D scalar image")
    if units is None and image.HasMetaDataKey(UNITS_ATTRIBUTE):
        units = image.GetMetaData(UNITS_ATTRIBUTE)
    if synthetic is None:
        synthetic = image.HasMetaDataKey(SYNTHETIC_ATTRIBUTE) and image.GetMetaData(SYNTHETIC_ATTRIBUTE) == "1"
    if synthetic and not name.endswith(SYNTHETIC_SUFFIX):
        name += SYNTHETIC_SUFFIX
    if node is None:
        cls = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
        node = scene().AddNewNodeByClass(cls, scene().GenerateUniqueName(name))
        node.CreateDefaultDisplayNodes()
    set_volume_geometry_lps(node, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    if not label:
        set_volume_units(node, units, bool(synthetic))
    return node


def write_volume_node(node, path: str | os.PathLike) -> Path:
    """Write a volume node to NRRD/NIfTI through SimpleITK (units kept as header keys)."""
    path = Path(path)
    sitk.WriteImage(image_from_volume_node(node), str(path), useCompression=False)
    return path


# ------------------------------------------------------------------------------------------------
# Segmentations
# ------------------------------------------------------------------------------------------------
def terminology_for_name(name: str, lesion: bool = False) -> tuple[str, tuple[float, float, float]]:
    """(serialized terminology entry, recommended RGB colour in 0..1) for a segment name.

    Names are matched to this extension's terminology (Resources/Terminology) by keyword (lesion,
    liver, lung, kidney, ...); anything else is coded as Tissue.
    """
    tl = terminology_logic()
    entry = slicer.vtkSlicerTerminologyEntry()
    key = "lesion" if lesion else _slicer_label_for(name)
    if not tl.FindTypeInTerminologyBy3dSlicerLabel(TERMINOLOGY_CONTEXT, key, entry):
        tl.FindTypeInTerminologyBy3dSlicerLabel(TERMINOLOGY_CONTEXT, "tissue", entry)
    rgb = entry.GetTypeObject().GetRecommendedDisplayRGBValue()
    return tl.SerializeTerminologyEntry(entry), tuple(c / 255.0 for c in rgb)


# Keyword -> terminology entry (3dSlicerLabel in Resources/Terminology). Checked in this order, so
# the more specific names come first (heart_blood_pool is heart, bone_marrow is marrow).
_LABEL_SYNONYMS = {
    "lesion": ("lesion", "tumor", "tumour", "gtv"), "liver": ("liver",), "lungs": ("lung",),
    "kidneys": ("kidney",), "spleen": ("spleen",), "heart": ("heart", "myocard"),
    "marrow": ("marrow",), "bone": ("bone", "skeleton", "spine", "vertebra", "pelvis", "rib", "skull", "femur"),
    "aorta": ("aorta", "artery", "vessel"), "muscle": ("muscle",), "brain": ("brain",),
    "bladder": ("bladder",), "stomach": ("stomach",), "trachea": ("trachea",),
    "bowel": ("bowel", "intestin", "colon"), "salivary": ("salivary", "parotid"), "fat": ("fat", "adipose"),
}


def _slicer_label_for(name: str) -> str:
    low = name.lower()
    for label, words in _LABEL_SYNONYMS.items():
        if any(w in low for w in words):
            return label
    return "tissue"


def segmentation_from_label_image(label_image: sitk.Image, names: Mapping[int, str], name: str,
                                  reference_volume=None, lesion: bool = False,
                                  synthetic: bool = False):
    """A segmentation node: one named, coloured segment with terminology per label value.

    ``names`` maps label values to segment names; label values present in the image but not named
    become "label <v>"; named values absent from the image give no segment. The reference geometry
    is the reference volume (so that DICOM SEG export references it) and the node is placed in the
    reference volume's study in the subject hierarchy.
    """
    arr = sitk.GetArrayViewFromImage(label_image)
    present = [int(v) for v in np.unique(arr) if v != 0]
    label_node = volume_node_from_image(sitk.Cast(label_image, sitk.sitkInt16), name + " labels", label=True)
    if synthetic and not name.endswith(SYNTHETIC_SUFFIX):
        name += SYNTHETIC_SUFFIX
    seg_node = scene().AddNewNodeByClass("vtkMRMLSegmentationNode", scene().GenerateUniqueName(name))
    seg_node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    else:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(label_node)
    try:
        if present and not segmentations_logic().ImportLabelmapToSegmentationNode(label_node, seg_node, ""):
            raise RuntimeError(f"importing the label map {name} into a segmentation failed")
    finally:
        scene().RemoveNode(label_node)
    segmentation = seg_node.GetSegmentation()
    # Imported segments are in increasing label order; each keeps its label value.
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        value = int(segment.GetLabelValue())
        seg_name = str(names.get(value, names.get(str(value), f"label {value}")))
        entry, rgb = terminology_for_name(seg_name, lesion=lesion)
        segment.SetName(seg_name)
        segment.SetTerminology(entry)
        segment.SetColor(*rgb)
    seg_node.SetAttribute(SYNTHETIC_ATTRIBUTE, "1" if synthetic else "0")
    if reference_volume is not None:
        place_in_study_of(seg_node, reference_volume)
    return seg_node


def label_image_from_segmentation(seg_node, reference_volume) -> tuple[sitk.Image, dict[int, str]]:
    """The segmentation as a label image on the reference volume's grid (segment i -> label i+1),
    and the label names (the segment names)."""
    label = scene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__export")
    try:
        segmentation = seg_node.GetSegmentation()
        ids = vtk.vtkStringArray()
        names = {}
        for i in range(segmentation.GetNumberOfSegments()):
            ids.InsertNextValue(segmentation.GetNthSegmentID(i))
            names[i + 1] = segmentation.GetNthSegment(i).GetName()
        if not segmentations_logic().ExportSegmentsToLabelmapNode(seg_node, ids, label, reference_volume):
            raise RuntimeError(f"exporting the segmentation {seg_node.GetName()} failed")
        image = image_from_volume_node(label)
        return sitk.Cast(image, sitk.sitkUInt16), names
    finally:
        scene().RemoveNode(label)


def label_names_of(label_node) -> dict[int, str]:
    """Names of the label values present in a label map volume node, from its colour table."""
    display = label_node.GetDisplayNode()
    color = display.GetColorNode() if display is not None else None
    if color is None:
        return {}
    values = np.unique(slicer.util.arrayFromVolume(label_node))
    return {int(v): color.GetColorName(int(v)) for v in values if v != 0 and color.GetColorName(int(v))}


def segment_voxel_counts(seg_node, reference_volume) -> dict[str, int]:
    """Voxels per segment name on the reference volume's grid (exports, counts, cleans up)."""
    label = scene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__count")
    try:
        segmentation = seg_node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        id_array = vtk.vtkStringArray()
        for sid in ids:
            id_array.InsertNextValue(sid)
        ok = segmentations_logic().ExportSegmentsToLabelmapNode(seg_node, id_array, label, reference_volume)
        if not ok:
            raise RuntimeError("exporting the segmentation failed")
        arr = slicer.util.arrayFromVolume(label)
        return {segmentation.GetSegment(sid).GetName(): int(np.count_nonzero(arr == i + 1))
                for i, sid in enumerate(ids)}
    finally:
        scene().RemoveNode(label)


def place_in_study_of(node, reference_node) -> None:
    """Put ``node`` beside ``reference_node`` in the subject hierarchy (the same study/folder)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene())
    if sh is None:
        return
    ref_item = sh.GetItemByDataNode(reference_node)
    if not ref_item:
        return
    parent = sh.GetItemParent(ref_item)
    if not parent or parent == sh.GetSceneItemID():
        return
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


# ------------------------------------------------------------------------------------------------
# Which volume is the PET, which the CT
# ------------------------------------------------------------------------------------------------
DICOM_MODALITY_ATTRIBUTE = "DICOM.Modality"   # subject hierarchy series attribute (DICOM (0008,0060))
SUV_UNITS = ("SUVbw", "SUVlbm", "SUVbsa", "SUVibw", "SUV", "SUL")   # the library's SUV unit names
#: DICOM-coded voxel quantities (code value) that say what a volume holds; see UNIT_CODES.
PET_QUANTITY_CODES = ("126400", "130047")     # Standardized Uptake Value, Activity Concentration
CT_UNIT_CODES = ("[hnsf'U]",)                 # UCUM Hounsfield unit


def volume_role(node) -> str | None:
    """"pet", "ct" or None for a scalar volume node, from what it says about itself: the
    PETDiffusion.units attribute, its DICOM-coded voxel quantity and units, or the DICOM modality of
    its series in the subject hierarchy (PT, CT). Never from its name or its place in the scene."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        return None
    units = node.GetAttribute(UNITS_ATTRIBUTE) or ""
    if units in SUV_UNITS or units.upper() in ("BQML", "BQ/ML", "GML"):
        return "pet"
    if units == "HU":
        return "ct"
    quantity, unit = node.GetVoxelValueQuantity(), node.GetVoxelValueUnits()
    if quantity is not None and quantity.GetCodeValue() in PET_QUANTITY_CODES:
        return "pet"
    if unit is not None and unit.GetCodeValue() in CT_UNIT_CODES:
        return "ct"
    modality = node.GetAttribute(DICOM_MODALITY_ATTRIBUTE)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene()) if node.GetScene() else None
    if not modality and sh is not None:
        item = sh.GetItemByDataNode(node)
        if item:
            modality = sh.GetItemAttribute(item, DICOM_MODALITY_ATTRIBUTE)
    return {"PT": "pet", "CT": "ct"}.get((modality or "").strip().upper())


def guess_volume(scene, role: str):
    """The volume to preselect for an input role ("pet" or "ct"): the first measured (not synthetic)
    scalar volume whose :func:`volume_role` is ``role``; None when there is none (the user picks)."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if node.GetAttribute(SYNTHETIC_ATTRIBUTE) == "1":
            continue
        if volume_role(node) == role:
            return node
    return None


COLOR_TABLE_FILE = "ColorTables/PETDiffusion.csv"


def load_color_table():
    """The extension's colour table (one entry per terminology type, with its codes), loaded once per
    scene: pick it when drawing an organ label map by hand so its names are the ones the library
    understands (liver, lungs, kidneys, spleen, aorta, ...)."""
    existing = scene().GetFirstNodeByName("PETDiffusion")
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene().AddNewNodeByClass("vtkMRMLColorTableNode", "PETDiffusion")
    storage = slicer.vtkMRMLColorTableStorageNode()
    storage.SetFileName(resource_path(COLOR_TABLE_FILE))
    if not storage.ReadData(node):
        scene().RemoveNode(node)
        raise RuntimeError(f"cannot read the colour table {storage.GetFileName()}")
    return node


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
# Units of the library's quantification columns, as its report prints them (PETDiffusionLib/quant/
# tables.py COLUMN_UNITS; PHYSICS.md section 2): SUV body weight, MTV in mL, TLG = SUVmean x MTV in
# SUVbw*mL. Kept here (the panels do not import the library); Testing/test_slicer_nodes.py checks
# that the two agree.
COLUMN_UNITS = {
    "volume_ml": "mL", "mtv_ml": "mL", "tmtv_ml": "mL", "volume": "mL",
    "suv_max": "SUVbw", "suv_mean": "SUVbw", "suv_peak": "SUVbw", "suv_sd": "SUVbw",
    "suv_median": "SUVbw", "suv_min": "SUVbw", "suv_std": "SUVbw",
    "input_suv_max": "SUVbw", "input_suv_peak": "SUVbw",
    "tlg": "SUVbw*mL", "ttlg": "SUVbw*mL", "tlg_g": "SUVbw*mL",
    "centroid_x_mm": "mm", "centroid_y_mm": "mm", "centroid_z_mm": "mm",
    "centroid_r_mm": "mm", "centroid_a_mm": "mm", "centroid_s_mm": "mm",
    "voxel_count": "voxels", "voxels": "voxels",
}
COLUMN_DESCRIPTIONS = {
    "suv_max": "SUVmax (body weight)", "suv_mean": "SUVmean (body weight)",
    "suv_peak": "SUVpeak: mean SUV in a 1 cm3 sphere (PERCIST)",
    "volume_ml": "metabolic tumour volume", "tlg": "total lesion glycolysis = SUVmean x MTV",
    "centroid_r_mm": "centroid, RAS (as Slicer shows it)", "organ": "organ holding most of the lesion",
    "input_suv_max": "SUVmax of the measured input PET in this lesion",
    "input_suv_peak": "SUVpeak of the measured input PET in this lesion",
}


def _column_units(column: str) -> str | None:
    col = column.lower()
    if col in COLUMN_UNITS:
        return COLUMN_UNITS[col]
    if col.endswith("_ml"):
        return "mL"
    if col.endswith("_mm"):
        return "mm"
    if col.startswith("suv"):
        return "SUVbw"
    return None


def table_node_from_rows(header: list[str], rows: Iterable[list[str]], name: str,
                         units: Mapping[str, str] | None = None):
    """A table node; numeric columns become double (integer-valued id/count columns int) columns."""
    rows = [list(r) for r in rows]
    node = scene().AddNewNodeByClass("vtkMRMLTableNode", scene().GenerateUniqueName(name))
    table = node.GetTable()
    for c, col in enumerate(header):
        values = [r[c] if c < len(r) else "" for r in rows]
        arr = _vtk_column(values)
        arr.SetName(col)
        table.AddColumn(arr)
    table.SetNumberOfRows(len(rows))
    for col in header:
        unit = (units or {}).get(col) or _column_units(col)
        if unit:
            node.SetColumnUnitLabel(col, unit)
        if col.lower() in COLUMN_DESCRIPTIONS:
            node.SetColumnDescription(col, COLUMN_DESCRIPTIONS[col.lower()])
    node.Modified()
    return node


def _vtk_column(values: list[str]):
    def as_float(v):
        try:
            return float(v)
        except ValueError:
            return None
    floats = [as_float(v) if v != "" else float("nan") for v in values]
    if values and all(f is not None for f in floats):
        if all(f == int(f) for f in floats if np.isfinite(f)) and all(np.isfinite(floats)) \
                and all("." not in v and "e" not in v.lower() for v in values):
            arr = vtk.vtkIntArray()
            for f in floats:
                arr.InsertNextValue(int(f))
            return arr
        arr = vtk.vtkDoubleArray()
        for f in floats:
            arr.InsertNextValue(f)
        return arr
    arr = vtk.vtkStringArray()
    for v in values:
        arr.InsertNextValue(v)
    return arr


def table_node_from_csv(path: str | os.PathLike, name: str, units: Mapping[str, str] | None = None):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty CSV file")
        rows = [r for r in reader if r]
    return table_node_from_rows(header, rows, name, units)


def table_columns(node) -> list[str]:
    t = node.GetTable()
    return [t.GetColumnName(i) for i in range(t.GetNumberOfColumns())]
