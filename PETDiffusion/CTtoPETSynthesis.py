"""CT to PET Synthesis: a synthetic FDG PET (SUV) from a CT, CPDM (Brownian bridge diffusion).

Thin Slicer face over ``PETDiffusionLib`` task ``ct-to-pet``, which runs in a separate process
(PETDiffusionSlicer.runner). Research use only; every output is labelled synthetic.
"""

import os
from typing import Annotated, Union

import qt
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest)

from PETDiffusionSlicer import about, display
from PETDiffusionSlicer.logic import TaskLogic
from PETDiffusionSlicer.resources import icon_path
from PETDiffusionSlicer.widget import TaskWidget

TASK_ID = "ct-to-pet"


#
# CTtoPETSynthesis
#
class CTtoPETSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CT to PET Synthesis"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text("CTtoPETSynthesis", (
            "Synthesizes an FDG PET volume in SUV from a CT (CPDM: a Brownian bridge diffusion model guided "
            "by an attention map and an attenuation map). The result lies on the CT grid, is named "
            "[SYNTHETIC] and carries the attribute PETDiffusion.synthetic = 1. 'Compare layout' shows CT | "
            "reference PET | synthetic PET side by side, axial, linked."))
        self.parent.acknowledgementText = about.acknowledgement_text("CTtoPETSynthesis")
        icon = icon_path("CTtoPETSynthesis")
        if icon:
            self.parent.icon = qt.QIcon(icon)


#
# Parameter node
#
@parameterNodeWrapper
class CTtoPETSynthesisParameterNode:
    # Ranges and defaults are the task spec's (`petdiffusion spec ct-to-pet`; checked by
    # Testing/test_slicer_spec.py). kVp: the spec's default is the DICOM tag, else 120.
    inputCT: vtkMRMLScalarVolumeNode
    inputOrgans: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    referencePET: vtkMRMLScalarVolumeNode
    kvp: Annotated[float, WithinRange(70.0, 150.0)] = 120.0
    steps: Annotated[int, WithinRange(2, 1000)] = 5
    samples: Annotated[int, WithinRange(1, 32)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    modelPath: str = ""   # a model folder of one's own; empty = the shipped model


#
# Widget: GUI wiring only
#
class CTtoPETSynthesisWidget(TaskWidget):
    ui_file = "UI/CTtoPETSynthesis.ui"
    title = "CT to PET Synthesis"
    input_field = "inputCT"
    input_guesses = {"inputCT": "ct", "referencePET": "pet"}
    result_buttons = ("exportButton", "compareButton")
    tooltip_running = "Cancel the running synthesis"
    tooltip_ready = "Synthesize PET from the CT"
    tooltip_missing = "Select a CT volume"

    def createLogic(self):
        return CTtoPETSynthesisLogic()

    def setup(self) -> None:
        TaskWidget.setup(self)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)

    def doneText(self, run) -> str:
        node = run.output_nodes.get("pet_synthetic")
        return f"Synthetic PET: {node.GetName() if node else '-'}"

    def onCompareButton(self) -> None:
        if self._run is None or self._run.state != "completed":
            return
        self.logic.showCompare(self._run, self._parameterNode.referencePET)

#
# Logic: usable without the widget (Python console, tests)
#
class CTtoPETSynthesisLogic(ScriptedLoadableModuleLogic, TaskLogic):
    """Example (Python console)::

        logic = slicer.util.getModuleLogic("CTtoPETSynthesis")
        run = logic.process({"ct": ctNode}, {"steps": 5, "seed": 0}, waitForCompletion=True)
        petNode = run.output_nodes["pet_synthetic"]
    """

    task = TASK_ID
    input_roles = ("ct",)
    reference_role = "ct"
    # task parameter -> parameter node field
    parameter_fields = {"kvp": "kvp", "steps": "steps", "samples": "samples", "seed": "seed"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TaskLogic.__init__(self, TASK_ID)

    def getParameterNode(self):
        return CTtoPETSynthesisParameterNode(super().getParameterNode())

    def processParameterNode(self, p, **kw):
        params = {name: getattr(p, field) for name, field in self.parameter_fields.items()}
        model = p.modelPath.strip() or None
        return self.process({"ct": p.inputCT, "organs": p.inputOrgans}, params, device=p.device, model=model, **kw)

    def showCompare(self, run, referencePET=None) -> None:
        display.show_compare_layout(run.inputs.get("ct"), referencePET, run.output_nodes.get("pet_synthetic"))


#
# Test: runs only inside Slicer (Testing/test_slicer_*.py covers the same machinery with pytest)
#
class CTtoPETSynthesisTest(ScriptedLoadableModuleTest):
    """Set PETDIFFUSION_RUN_MODEL_TESTS=1 to also run the model (slow on a CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_error_reaches_user()
        if os.environ.get("PETDIFFUSION_RUN_MODEL_TESTS") == "1":
            self.setUp()
            self.test_synthesis_on_tiny_ct()

    def _tinyCT(self):
        import numpy as np
        hu = np.full((8, 32, 32), -1000.0, dtype=np.float32)
        hu[:, 6:26, 6:26] = 40.0          # soft tissue
        hu[:, 12:20, 10:14] = 700.0        # bone
        node = slicer.util.addVolumeFromArray(hu, nodeClassName="vtkMRMLScalarVolumeNode", name="tiny CT")
        node.SetSpacing(2.0, 2.0, 3.0)
        from PETDiffusionSlicer import nodes
        nodes.set_volume_units(node, "HU")
        return node

    def test_library_error_reaches_user(self):
        from PETDiffusionSlicer.runner import TaskError
        ct = self._tinyCT()
        logic = CTtoPETSynthesisLogic()
        try:
            logic.process({"ct": ct}, {"steps": 1}, waitForCompletion=True)
        except TaskError as exc:
            self.assertIn("steps", str(exc))
        else:
            self.fail("steps = 1 should be refused by the library (minimum 2)")
        self.delayDisplay("library error reached the user")

    def test_synthesis_on_tiny_ct(self):
        ct = self._tinyCT()
        logic = CTtoPETSynthesisLogic()
        run = logic.process({"ct": ct}, {"steps": 2, "seed": 0}, waitForCompletion=True, device="cpu")
        pet = run.output_nodes["pet_synthetic"]
        self.assertEqual(pet.GetAttribute("PETDiffusion.synthetic"), "1")
        self.assertIn("[SYNTHETIC]", pet.GetName())
        self.assertEqual(pet.GetImageData().GetDimensions(), ct.GetImageData().GetDimensions())
        self.delayDisplay("synthetic PET created")
        logic.showCompare(run, referencePET=None)
        self.assertEqual(slicer.app.layoutManager().layout, display.COMPARE_LAYOUT_ID)
        green = slicer.app.layoutManager().sliceWidget("Green").mrmlSliceCompositeNode()
        self.assertEqual(green.GetBackgroundVolumeID(), pet.GetID())
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            names = {p.name for p in logic.exportReport(run, folder)}
        self.assertIn("manifest.json", names)
        self.delayDisplay("compare layout and export")
