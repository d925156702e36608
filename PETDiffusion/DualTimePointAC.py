"""Dual-time-point PET Attenuation Correction: thin Slicer face over ``PETDiffusionLib`` task ``dual-timepoint-ac``, which runs in a separate
process (PETDiffusionSlicer.runner). Research use only; every model output is labelled synthetic.
"""

from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest)

from PETDiffusionSlicer import about
from PETDiffusionSlicer.logic import TaskLogic
from PETDiffusionSlicer.resources import icon_path
from PETDiffusionSlicer.widget import TaskWidget

TASK_ID = "dual-timepoint-ac"


#
# DualTimePointAC
#
class DualTimePointAC(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Dual-time-point PET Attenuation Correction"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text("DualTimePointAC", (
            "Attenuation-corrects the delayed scan of a dual-time-point PET without a second CT: the delayed non-attenuation-corrected (NAC) PET and the first scan's CT give an AC PET in SUVbw. Default method physics: STMDiff's contrastive slice matching, the CT registered to the NAC and a reprojection attenuation correction on the NAC's own grid; stmdiff: the paper's latent diffusion (spatiotemporal matching diffusion). With the first scan's AC PET, a retention-index table of its hot regions."))
        self.parent.acknowledgementText = about.acknowledgement_text("DualTimePointAC")
        icon = icon_path("DualTimePointAC")
        if icon:
            self.parent.icon = qt.QIcon(icon)


#
# Parameter node
#
@parameterNodeWrapper
class DualTimePointACParameterNode:
    # Ranges and defaults are the task spec's (`petdiffusion spec dual-timepoint-ac`; checked by
    # Testing/test_slicer_spec.py).
    inputNAC: vtkMRMLScalarVolumeNode
    inputCT: vtkMRMLScalarVolumeNode
    firstPET: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(["physics", "stmdiff"])] = "physics"
    scatterFraction: str = "auto"
    k: Annotated[int, WithinRange(1, 5)] = 2
    steps: Annotated[int, WithinRange(2, 1000)] = 2
    samples: Annotated[int, WithinRange(1, 32)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    lesionThreshold: Annotated[float, WithinRange(0.5, 50.0)] = 2.5
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    modelPath: str = ""   # a model folder of one's own; empty = the shipped model


#
# Widget: GUI wiring only
#
class DualTimePointACWidget(TaskWidget):
    ui_file = "UI/DualTimePointAC.ui"
    title = "Dual-time-point PET Attenuation Correction"
    input_field = "inputNAC"
    input_guesses = {'inputCT': 'ct'}
    tooltip_ready = "Run Dual-time-point PET Attenuation Correction"
    tooltip_missing = "Select the input volume(s)"

    def createLogic(self):
        return DualTimePointACLogic()


#
# Logic: usable without the widget (Python console, tests)
#
class DualTimePointACLogic(ScriptedLoadableModuleLogic, TaskLogic):
    """Example (Python console)::

        logic = slicer.util.getModuleLogic("DualTimePointAC")
        run = logic.process({"nac": volumeNode}, {"seed": 0}, waitForCompletion=True)
        run.output_nodes["pet_ac"]
    """

    task = TASK_ID
    input_roles = ('nac', 'ct', 'first_pet')
    reference_role = 'nac'
    # task parameter -> parameter node field
    parameter_fields = {"method": "method", "scatter_fraction": "scatterFraction", "k": "k", "steps": "steps", "samples": "samples", "seed": "seed", "lesion_threshold": "lesionThreshold"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TaskLogic.__init__(self, TASK_ID)

    def getParameterNode(self):
        return DualTimePointACParameterNode(super().getParameterNode())

    def processParameterNode(self, p, **kw):
        params = {name: getattr(p, field) for name, field in self.parameter_fields.items()}
        model = p.modelPath.strip() or None
        return self.process({"nac": p.inputNAC, "ct": p.inputCT, "first_pet": p.firstPET}, params, device=p.device, model=model, **kw)


#
# Test: runs only inside Slicer (Testing/test_slicer_*.py covers the same machinery with pytest)
#
class DualTimePointACTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_error_reaches_user()

    def _tinyVolume(self):
        import numpy as np
        node = slicer.util.addVolumeFromArray(np.ones((8, 16, 16), np.float32), name="tiny volume")
        node.SetSpacing(4.0, 4.0, 4.0)
        return node

    def test_library_error_reaches_user(self):
        from PETDiffusionSlicer.runner import TaskError
        logic = DualTimePointACLogic()
        try:
            logic.process({"nac": self._tinyVolume()}, {"k": 6}, waitForCompletion=True)
        except TaskError as exc:
            self.assertIn("k", str(exc))
        else:
            self.fail("k = 6 should be refused by the library (maximum 5)")
        self.delayDisplay("library error reached the user")
