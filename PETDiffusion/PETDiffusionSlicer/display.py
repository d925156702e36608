"""How results are shown: PET colour map and SUV window fused over CT, the compare layout, segmentations.

Display-node settings are plain MRML and work anywhere (tested with slicer-core). What needs the
application (slice views, layouts) is guarded by :func:`has_views` and happens only in desktop Slicer.
"""
from __future__ import annotations

import slicer

from . import nodes

PET_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"   # Slicer's built-in PET-Heat table
SUV_WINDOW = (0.0, 10.0)        # SUVbw; typical FDG reading window (liver ~2, lesions > 2.5)
CT_WINDOW = (-160.0, 240.0)     # HU; soft-tissue window (W 400, L 40)
PET_OVER_CT_OPACITY = 0.5

# A custom layout id, above Slicer's built-in ones (vtkMRMLLayoutNode SlicerLayout* < 1000).
COMPARE_LAYOUT_ID = 71001
COMPARE_VIEWS = ("Red", "Yellow", "Green")   # CT | reference PET | synthetic PET
COMPARE_LABELS = {"Red": "CT", "Yellow": "PET", "Green": "sPET"}
COMPARE_COLORS = {"Red": "#F34A33", "Yellow": "#EDD54C", "Green": "#6EB04B"}   # Slicer's view colours
COMPARE_ORIENTATION = "Axial"


def _compare_view_xml(view: str) -> str:
    # vtkMRMLLayoutLogic::CreateMissingViews applies action="default" properties only to the views it
    # creates, and action="relayout" ones to views that already exist (Slicer's Red/Yellow/Green
    # always do, sagittal and coronal in the four-up layout): each property is given with both.
    props = (("orientation", COMPARE_ORIENTATION), ("viewlabel", COMPARE_LABELS[view]),
             ("viewcolor", COMPARE_COLORS[view]))
    lines = [f'  <property name="{name}" action="{action}">{value}</property>'
             for name, value in props for action in ("default", "relayout")]
    return (f' <item><view class="vtkMRMLSliceNode" singletontag="{view}">\n' + "\n".join(lines)
            + "</view></item>")


COMPARE_LAYOUT_XML = ('<layout type="horizontal">\n' + "\n".join(_compare_view_xml(v) for v in COMPARE_VIEWS)
                      + "\n</layout>\n")


def has_views() -> bool:
    """True in desktop Slicer (an application with a layout manager)."""
    app = getattr(slicer, "app", None)
    return app is not None and hasattr(app, "layoutManager") and app.layoutManager() is not None


def show_pet(volume_node, window: tuple[float, float] = SUV_WINDOW) -> None:
    """PET-Heat colour map, a fixed SUV window (0-10 SUV by default), no interpolation change."""
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    if volume_node.GetScene().GetNodeByID(PET_COLOR_NODE_ID) is not None:
        display.SetAndObserveColorNodeID(PET_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)


def show_ct(volume_node, window: tuple[float, float] = CT_WINDOW) -> None:
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)


def show_segmentation(seg_node, in_3d: bool = True) -> None:
    """Outlines in 2D, and a closed surface for the 3D view."""
    seg_node.CreateDefaultDisplayNodes()
    display = seg_node.GetDisplayNode()
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetOpacity2DFill(0.3)
    display.SetVisibility3D(in_3d)
    if in_3d:
        seg_node.CreateClosedSurfaceRepresentation()


def fuse_pet_over_ct(pet_node, ct_node=None) -> None:
    """PET (PET-Heat, SUV window) over the CT at 50 % opacity in every slice view; the PET alone
    when there is no CT."""
    show_pet(pet_node)
    if ct_node is not None:
        show_ct(ct_node)
    scene = pet_node.GetScene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if ct_node is None:
            composite.SetBackgroundVolumeID(pet_node.GetID())
            composite.SetForegroundVolumeID(None)
        else:
            composite.SetBackgroundVolumeID(ct_node.GetID())
            composite.SetForegroundVolumeID(pet_node.GetID())
            composite.SetForegroundOpacity(PET_OVER_CT_OPACITY)
    if has_views():
        slicer.util.resetSliceViews()


def show_compare_layout(ct_node, reference_pet_node, synthetic_pet_node) -> None:
    """CT | reference PET | synthetic PET side by side: Red, Yellow and Green, all axial, labelled
    CT, PET, sPET, slices linked (one position, zoom and pan for the three) and fitted to the CT.

    MRML only (layout node, slice and slice composite nodes, slice logics), so it works on the
    application's views and on views made by other means (tests, trame); the layout manager of
    desktop Slicer follows the layout node.
    """
    show_ct(ct_node)
    for pet in (reference_pet_node, synthetic_pet_node):
        if pet is not None:
            show_pet(pet)
    scene = ct_node.GetScene()
    layout = (slicer.app.layoutManager().layoutLogic().GetLayoutNode() if has_views()
              else scene.GetFirstNodeByClass("vtkMRMLLayoutNode"))
    if layout is not None:
        if not layout.IsLayoutDescription(COMPARE_LAYOUT_ID):
            layout.AddLayoutDescription(COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML)
        else:
            layout.SetLayoutDescription(COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML)
        layout.SetViewArrangement(COMPARE_LAYOUT_ID)
    for view, volume in zip(COMPARE_VIEWS, (ct_node, reference_pet_node, synthetic_pet_node)):
        # The layout XML sets these when the arrangement changes; set them here too, so that a second
        # click (arrangement unchanged, no relayout) or a view turned sagittal by hand is put right.
        node = slice_node(scene, view)
        if node is not None:
            node.SetOrientation(COMPARE_ORIENTATION)
            node.SetLayoutLabel(COMPARE_LABELS[view])
            node.SetLayoutColor(*_rgb(COMPARE_COLORS[view]))
        composite = slice_composite_node(scene, view)
        if composite is None:
            continue
        composite.SetBackgroundVolumeID(volume.GetID() if volume is not None else None)
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)   # one slice position, zoom and pan for all three
    fit_linked_views(scene, COMPARE_VIEWS)


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def slice_node(scene, view: str):
    """The slice node of a view (Red, Yellow, Green), or None."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if node.GetLayoutName() == view:
            return node
    return None


def view_slice_logics(scene, views=COMPARE_VIEWS) -> dict:
    """The slice logic of each view that has one: the slice widgets' in desktop Slicer, else the ones
    :func:`headless_slice_logics` made for this scene (none when nobody made views)."""
    if has_views():
        if hasattr(slicer.app, "processEvents"):
            slicer.app.processEvents()   # let the layout manager build and size the new views
        out = {}
        for view in views:
            widget = slicer.app.layoutManager().sliceWidget(view)
            if widget is not None:
                out[view] = widget.sliceLogic()
        return out
    cache = getattr(scene, "_petdiffusion_slice_logics", {})
    return {view: cache[view] for view in views if view in cache}


def fit_linked_views(scene, views=COMPARE_VIEWS) -> None:
    """Fit the first view to its volumes, then give the others its field of view and position (what
    linked views show: the same slice, zoom and pan)."""
    logics = view_slice_logics(scene, views)
    if not logics:
        return
    first = next(iter(logics.values()))
    first.FitSliceToAll()
    ref = first.GetSliceNode()
    for logic in list(logics.values())[1:]:
        node = logic.GetSliceNode()
        node.SetFieldOfView(*ref.GetFieldOfView())
        node.GetSliceToRAS().DeepCopy(ref.GetSliceToRAS())
        node.UpdateMatrices()


def slice_composite_node(scene, view: str):
    """The slice composite node of a view (Red, Yellow, Green), or None."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == view:
            return node
    return None


def show_results(output_nodes: dict, input_nodes: dict) -> None:
    """Default display after a run: the main PET output (pet_*) fused over the input CT when there
    is one, other SUV volumes with the PET colour map, segmentations in 2D and 3D."""
    ct = input_nodes.get("ct")
    if ct is not None and not hasattr(ct, "IsA"):
        ct = None
    pets = [(not name.startswith("pet_"), name, n) for name, n in output_nodes.items()
            if n.IsA("vtkMRMLScalarVolumeNode") and n.GetAttribute(nodes.UNITS_ATTRIBUTE) == "SUVbw"]
    for node in output_nodes.values():
        if node.IsA("vtkMRMLSegmentationNode"):
            show_segmentation(node)
    for _, _, node in sorted(pets, key=lambda t: t[:2])[1:]:
        show_pet(node)
    if pets:
        fuse_pet_over_ct(sorted(pets, key=lambda t: t[:2])[0][2], ct)


def render_slice_views(scene, views=COMPARE_VIEWS, size: int = 256, orientation: str | None = None,
                       match_view: str | None = "Red") -> list:
    """RGB arrays (size x size x 3, uint8) of what Slicer's slice pipeline shows in ``views``: the
    slice logics reslice and blend each view's layers with their colour maps and windows. Works
    without the application (slicer-core), for reports and documentation figures; in desktop Slicer
    use the views themselves (ScreenCapture) instead.

    Each view keeps the orientation its slice node has (what the layout set) unless ``orientation``
    is given. All views take ``match_view``'s field of view and position (as linked views do).
    """
    import numpy as np
    from vtk.util.numpy_support import vtk_to_numpy

    logics = {}
    for view, logic in headless_slice_logics(scene, views).items():
        node = logic.GetSliceNode()
        if orientation:
            node.SetOrientation(orientation)
        node.SetDimensions(size, size, 1)
        logic.FitSliceToAll()
        logics[view] = logic
    if match_view in logics:
        ref = logics[match_view].GetSliceNode()
        for view, logic in logics.items():
            node = logic.GetSliceNode()
            if view != match_view and node.GetOrientationString() == ref.GetOrientationString():
                node.SetFieldOfView(*ref.GetFieldOfView())
                node.GetSliceToRAS().DeepCopy(ref.GetSliceToRAS())
                node.UpdateMatrices()
    out = []
    for view in views:
        producer = logics[view].GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        nx, ny, _ = image.GetDimensions()
        rgba = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)[::-1]
        out.append(np.ascontiguousarray(rgba[..., :3]))
    return out


def headless_slice_logics(scene, views=COMPARE_VIEWS) -> dict:
    """A slice logic per view (made once per scene, kept on it), as the application makes one per slice
    widget: it creates the view's slice composite node, so call it before setting up the display."""
    cache = getattr(scene, "_petdiffusion_slice_logics", None)
    if cache is None:
        cache = {}
        scene._petdiffusion_slice_logics = cache
    slice_nodes = {scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetLayoutName():
                   scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))}
    for view in views:
        if view not in cache:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.SetSliceNode(slice_nodes[view])
            cache[view] = logic
    return {view: cache[view] for view in views}
