"""Demographics to PET/CT Synthesis: thin Slicer face over ``PETDiffusionLib`` task ``synthesize``, which runs in a separate
process (PETDiffusionSlicer.runner). Research use only; every model output is labelled synthetic.
"""

from typing import Annotated

import qt
import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest)

from PETDiffusionSlicer import about
from PETDiffusionSlicer.logic import TaskLogic
from PETDiffusionSlicer.resources import icon_path
from PETDiffusionSlicer.widget import TaskWidget

TASK_ID = "synthesize"


#
# DemographicsSynthesis
#
class DemographicsSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Demographics to PET/CT Synthesis"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text("DemographicsSynthesis", (
            "Synthesizes a whole-body FDG PET/CT (CT in HU, PET in SUVbw, organ label map and organ table) of a virtual subject from age, sex, height and weight (TotalGen: cascaded 3D diffusion models). Every output is synthetic: a digital twin for research, not a patient."))
        self.parent.acknowledgementText = about.acknowledgement_text("DemographicsSynthesis")
        icon = icon_path("DemographicsSynthesis")
        if icon:
            self.parent.icon = qt.QIcon(icon)


#
# Parameter node
#
@parameterNodeWrapper
class DemographicsSynthesisParameterNode:
    # Ranges and defaults are the task spec's (`petdiffusion spec synthesize`; checked by
    # Testing/test_slicer_spec.py).
    age: Annotated[float, WithinRange(0.0, 120.0)] = 58.0
    sex: Annotated[str, Choice(['M', 'F'])] = 'M'
    height: Annotated[float, WithinRange(50.0, 250.0)] = 177.0
    weight: Annotated[float, WithinRange(2.0, 400.0)] = 83.0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    steps: Annotated[int, WithinRange(1, 200)] = 18
    srSteps: Annotated[int, WithinRange(0, 200)] = 6
    churn: Annotated[float, WithinRange(0.0, 100.0)] = 40.0
    allowOutOfRange: bool = False
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    modelPath: str = ""   # a model folder of one's own; empty = the shipped model


#
# Widget: GUI wiring only
#
class DemographicsSynthesisWidget(TaskWidget):
    ui_file = "UI/DemographicsSynthesis.ui"
    title = "Demographics to PET/CT Synthesis"
    input_field = ""
    input_guesses = {}
    tooltip_ready = "Run Demographics to PET/CT Synthesis"
    tooltip_missing = "Select the input volume(s)"

    def createLogic(self):
        return DemographicsSynthesisLogic()


#
# Logic: usable without the widget (Python console, tests)
#
class DemographicsSynthesisLogic(ScriptedLoadableModuleLogic, TaskLogic):
    """Example (Python console)::

        logic = slicer.util.getModuleLogic("DemographicsSynthesis")
        run = logic.process({}, {"seed": 0}, waitForCompletion=True)
        run.output_nodes["pet"]
    """

    task = TASK_ID
    input_roles = ()
    reference_role = None
    # task parameter -> parameter node field
    parameter_fields = {"age": "age", "sex": "sex", "height": "height", "weight": "weight", "seed": "seed", "steps": "steps", "sr_steps": "srSteps", "churn": "churn", "allow_out_of_range": "allowOutOfRange"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TaskLogic.__init__(self, TASK_ID)

    def getParameterNode(self):
        return DemographicsSynthesisParameterNode(super().getParameterNode())

    def processParameterNode(self, p, **kw):
        params = {name: getattr(p, field) for name, field in self.parameter_fields.items()}
        model = p.modelPath.strip() or None
        return self.process({}, params, device=p.device, model=model, **kw)


#
# Test: runs only inside Slicer (Testing/test_slicer_*.py covers the same machinery with pytest)
#
class DemographicsSynthesisTest(ScriptedLoadableModuleTest):
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
        logic = DemographicsSynthesisLogic()
        try:
            logic.process({}, {"steps": 0}, waitForCompletion=True)
        except TaskError as exc:
            self.assertIn("steps", str(exc))
        else:
            self.fail("steps = 0 should be refused by the library (minimum 1)")
        self.delayDisplay("library error reached the user")
