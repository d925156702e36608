"""Low-dose PET Restoration: thin Slicer face over ``PETDiffusionLib`` task ``restore``, which runs in a separate
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
            "Restores a standard-dose-like PET in SUV from a low-dose (or short) PET, guided by an MR or CT of the same patient (MFdiff: a multi-modality fusion diffusion model). Returns the restored PET (model output, marked synthetic) and its per-voxel standard deviation over the samples."))
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
    # Testing/test_slicer_spec.py).
    inputPET: vtkMRMLScalarVolumeNode
    inputMR: vtkMRMLScalarVolumeNode
    inputCT: vtkMRMLScalarVolumeNode
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    startFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    samples: Annotated[int, WithinRange(1, 32)] = 4
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
    input_guesses = {'inputPET': 'pet', 'inputCT': 'ct'}
    tooltip_ready = "Run Low-dose PET Restoration"
    tooltip_missing = "Select the input volume(s)"

    def createLogic(self):
        return LowDosePETRestorationLogic()


#
# Logic: usable without the widget (Python console, tests)
#
class LowDosePETRestorationLogic(ScriptedLoadableModuleLogic, TaskLogic):
    """Example (Python console)::

        logic = slicer.util.getModuleLogic("LowDosePETRestoration")
        run = logic.process({"pet": volumeNode}, {"seed": 0}, waitForCompletion=True)
        run.output_nodes["pet_restored"]
    """

    task = TASK_ID
    input_roles = ('pet', 'mr', 'ct')
    reference_role = 'pet'
    # task parameter -> parameter node field
    parameter_fields = {"steps": "steps", "start_fraction": "startFraction", "samples": "samples", "seed": "seed"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TaskLogic.__init__(self, TASK_ID)

    def getParameterNode(self):
        return LowDosePETRestorationParameterNode(super().getParameterNode())

    def processParameterNode(self, p, **kw):
        params = {name: getattr(p, field) for name, field in self.parameter_fields.items()}
        model = p.modelPath.strip() or None
        return self.process({"pet": p.inputPET, "mr": p.inputMR, "ct": p.inputCT}, params, device=p.device, model=model, **kw)


#
# Test: runs only inside Slicer (Testing/test_slicer_*.py covers the same machinery with pytest)
#
class LowDosePETRestorationTest(ScriptedLoadableModuleTest):
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
        logic = LowDosePETRestorationLogic()
        try:
            logic.process({"pet": self._tinyVolume()}, {"steps": 1001}, waitForCompletion=True)
        except TaskError as exc:
            self.assertIn("steps", str(exc))
        else:
            self.fail("steps = 1001 should be refused by the library (maximum 1000)")
        self.delayDisplay("library error reached the user")
