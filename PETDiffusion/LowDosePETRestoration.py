"""Low-dose PET Restoration: a standard-dose PET (SUV) from a low-dose PET and the same patient's
T1 MR or CT, MFdiff (multi-modality fusion + conditional diffusion).

Thin Slicer face over ``PETDiffusionLib`` task ``restore``, which runs in a separate process
(PETDiffusionSlicer.runner). Research use only; every output is labelled synthetic.
"""

import os
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest)

from PETDiffusionSlicer import about, display
from PETDiffusionSlicer.logic import TaskLogic
from PETDiffusionSlicer.resources import icon_path
from PETDiffusionSlicer.widget import TaskWidget

TASK_ID = "restore"


#
# LowDosePETRestoration
#
class LowDosePETRestoration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Low-dose PET Restoration"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text("LowDosePETRestoration", (
            "Restores a standard-dose PET in SUV from a low-dose (or short-frame) PET in SUV and the "
            "same patient's T1 MR (PET/MR) or CT (PET/CT) with MFdiff: a multi-modality fusion module "
            "and a conditional diffusion model. The guide may have its own grid and field of view; it "
            "is resampled onto the PET. The result lies on the PET grid, is named [SYNTHETIC], carries "
            "PETDiffusion.synthetic = 1 and comes with a per-voxel standard deviation over the samples. "
            "'Compare layout' shows guide | low-dose PET | restored PET side by side, axial, linked."))
        self.parent.acknowledgementText = about.acknowledgement_text("LowDosePETRestoration")
        icon = icon_path("LowDosePETRestoration")
        if icon:
            self.parent.icon = qt.QIcon(icon)


#
# Parameter node
#
@parameterNodeWrapper
class LowDosePETRestorationParameterNode:
    # Ranges and defaults are the task spec's (`petdiffusion spec restore`; checked by
    # Testing/test_slicer_spec.py). steps / start fraction 0: the model card's measured defaults.
    inputPET: vtkMRMLScalarVolumeNode
    inputMR: vtkMRMLScalarVolumeNode
    inputCT: vtkMRMLScalarVolumeNode
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    startFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    samples: Annotated[int, WithinRange(1, 32)] = 2
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    modelPath: str = ""   # a model folder of one's own; empty = the shipped model


#
# Widget: GUI wiring only
#
class LowDosePETRestorationWidget(TaskWidget):
    ui_file = "UI/LowDosePETRestoration.ui"
    title = "Low-dose PET Restoration"
    input_field = "inputPET"
    input_guesses = {"inputPET": "pet", "inputCT": "ct"}
    result_buttons = ("exportButton", "compareButton")
    tooltip_running = "Cancel the running restoration"
    tooltip_ready = "Restore the low-dose PET with the selected guide"
    tooltip_missing = "Select a low-dose PET and an MR or a CT"

    def createLogic(self):
        return LowDosePETRestorationLogic()

    def setup(self) -> None:
        TaskWidget.setup(self)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)

    def doneText(self, run) -> str:
        node = run.output_nodes.get("pet_restored")
        return f"Restored PET: {node.GetName() if node else '-'}"

    def onCompareButton(self) -> None:
        if self._run is None or self._run.state != "completed":
            return
        self.logic.showCompare(self._run)


#
# Logic: usable without the widget (Python console, tests)
#
class LowDosePETRestorationLogic(ScriptedLoadableModuleLogic, TaskLogic):
    """Example (Python console)::

        logic = slicer.util.getModuleLogic("LowDosePETRestoration")
        run = logic.process({"pet": lowDoseNode, "ct": ctNode}, {"samples": 4}, waitForCompletion=True)
        restored = run.output_nodes["pet_restored"]
    """

    task = TASK_ID
    input_roles = ("pet", "mr", "ct")
    reference_role = "pet"
    # task parameter -> parameter node field
    parameter_fields = {"steps": "steps", "start_fraction": "startFraction", "samples": "samples",
                        "seed": "seed"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TaskLogic.__init__(self, TASK_ID)

    def getParameterNode(self):
        return LowDosePETRestorationParameterNode(super().getParameterNode())

    def processParameterNode(self, p, **kw):
        params = {name: getattr(p, field) for name, field in self.parameter_fields.items()}
        model = p.modelPath.strip() or None
        return self.process({"pet": p.inputPET, "mr": p.inputMR, "ct": p.inputCT}, params,
                            device=p.device, model=model, **kw)

    def showCompare(self, run) -> None:
        """Guide | low-dose PET | restored PET (Red, Yellow, Green; axial, linked)."""
        guide = run.inputs.get("ct") or run.inputs.get("mr")
        display.show_compare_layout(guide, run.inputs.get("pet"), run.output_nodes.get("pet_restored"))


#
# Test: runs only inside Slicer (Testing/test_slicer_*.py covers the same machinery with pytest)
#
class LowDosePETRestorationTest(ScriptedLoadableModuleTest):
    """Set PETDIFFUSION_RUN_MODEL_TESTS=1 to also run the model (slow on a CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_missing_guide_reaches_user()
        if os.environ.get("PETDIFFUSION_RUN_MODEL_TESTS") == "1":
            self.setUp()
            self.test_restoration_on_tiny_pet_ct()

    def _tinyPair(self):
        import numpy as np
        from PETDiffusionSlicer import nodes
        suv = np.zeros((8, 32, 32), dtype=np.float32)
        suv[:, 6:26, 6:26] = 1.0
        suv[:, 12:18, 12:18] = 4.0
        hu = np.full((8, 32, 32), -1000.0, dtype=np.float32)
        hu[:, 6:26, 6:26] = 40.0
        pet = slicer.util.addVolumeFromArray(suv, nodeClassName="vtkMRMLScalarVolumeNode", name="tiny PET")
        ct = slicer.util.addVolumeFromArray(hu, nodeClassName="vtkMRMLScalarVolumeNode", name="tiny CT")
        for node in (pet, ct):
            node.SetSpacing(4.0, 4.0, 5.0)
        nodes.set_volume_units(pet, "SUVbw")
        nodes.set_volume_units(ct, "HU")
        return pet, ct

    def test_missing_guide_reaches_user(self):
        from PETDiffusionSlicer.runner import TaskError
        pet, _ = self._tinyPair()
        logic = LowDosePETRestorationLogic()
        try:
            logic.process({"pet": pet}, {}, waitForCompletion=True)
        except TaskError as exc:
            self.assertIn("guide", str(exc))
        else:
            self.fail("a PET without an MR or CT guide should be refused by the library")
        self.delayDisplay("library error reached the user")

    def test_restoration_on_tiny_pet_ct(self):
        pet, ct = self._tinyPair()
        logic = LowDosePETRestorationLogic()
        run = logic.process({"pet": pet, "ct": ct}, {"samples": 2, "seed": 0}, waitForCompletion=True,
                            device="cpu")
        out = run.output_nodes["pet_restored"]
        self.assertEqual(out.GetAttribute("PETDiffusion.synthetic"), "1")
        self.assertIn("[SYNTHETIC]", out.GetName())
        self.assertEqual(out.GetImageData().GetDimensions(), pet.GetImageData().GetDimensions())
        self.assertIn("pet_restored_sd", run.output_nodes)
        logic.showCompare(run)
        self.assertEqual(slicer.app.layoutManager().layout, display.COMPARE_LAYOUT_ID)
        self.delayDisplay("restored PET and compare layout")
