"""PET Denoise and Segment: low-count PET -> denoised PET, lesion and organ segmentations, TLG/MTV tables.

Thin Slicer face over ``PETDiffusionLib`` task ``denoise-segment`` (AMDiff), which runs in a separate
process (PETDiffusionSlicer.runner). Research use only.
"""

import json
import os
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest)

from PETDiffusionSlicer import about, sampledata
from PETDiffusionSlicer.logic import TaskLogic, recompute_from_segments
from PETDiffusionSlicer.resources import icon_path
from PETDiffusionSlicer.widget import TaskWidget

TASK_ID = "denoise-segment"


#
# PETDenoiseSegment
#
class PETDenoiseSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PET Denoise and Segment"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text("PETDenoiseSegment", (
            "Denoises a low-count (low-dose or short-scan) PET in SUV and segments lesions and organs in one "
            "step (AMDiff: a semantic-informed diffusion denoiser with a dual-branch segmenter). Returns the "
            "denoised PET (model output, marked synthetic), lesion and organ segmentations with standard "
            "terminology, and lesion/organ tables (SUVmax, SUVpeak, SUVmean in SUVbw, MTV in mL, TLG in "
            "SUVbw*mL) with the low-count input's SUVmax/SUVpeak beside them. After editing the lesions in "
            "Segment Editor, 'Recompute from edited segments' measures them again. Export report writes the "
            "PDF/CSV/JSON report."))
        self.parent.acknowledgementText = about.acknowledgement_text("PETDenoiseSegment")
        icon = icon_path("PETDenoiseSegment")
        if icon:
            self.parent.icon = qt.QIcon(icon)
        sampledata.register_after_startup()   # phantom and sarcoma PET/CT in the Sample Data module


#
# Parameter node
#
@parameterNodeWrapper
class PETDenoiseSegmentParameterNode:
    # Ranges and defaults are the task spec's (`petdiffusion spec denoise-segment`; checked by
    # Testing/test_slicer_spec.py). steps = 0, startFraction = 0 and lesionThreshold = 0 mean "the model card's default".
    inputPET: vtkMRMLScalarVolumeNode
    inputCT: vtkMRMLScalarVolumeNode
    steps: Annotated[int, WithinRange(0, 250)] = 0
    samples: Annotated[int, WithinRange(1, 16)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    lesionThreshold: Annotated[float, WithinRange(0.0, 0.95)] = 0.0
    lesionMinMl: Annotated[float, WithinRange(0.0, 100.0)] = 0.2
    keepPhysiological: bool = False
    sampler: Annotated[str, Choice(["ddim", "ddpm", "dpmpp2m"])] = "ddim"
    startFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    modelPath: str = ""   # a model folder of one's own; empty = the shipped model


#
# Widget: GUI wiring only
#
class PETDenoiseSegmentWidget(TaskWidget):
    ui_file = "UI/PETDenoiseSegment.ui"
    title = "PET Denoise and Segment"
    input_field = "inputPET"
    input_guesses = {"inputPET": "pet", "inputCT": "ct"}
    result_buttons = ("exportButton", "recomputeButton")
    tooltip_ready = "Denoise the PET and segment lesions and organs"
    tooltip_missing = "Select a low-count PET volume"

    def createLogic(self):
        return PETDenoiseSegmentLogic()

    def setup(self) -> None:
        TaskWidget.setup(self)
        self.ui.recomputeButton.connect("clicked(bool)", self.onRecomputeButton)

    def doneText(self, run) -> str:
        return self.logic.summaryText(run)

    def onRecomputeButton(self) -> None:
        """Segment Editor round trip: the lesion table, TMTV and TLG from the edited lesion segments."""
        if self._run is None or self._run.state != "completed":
            return
        with slicer.util.tryWithErrorDisplay("Recomputing from the edited segments failed.", waitCursor=True):
            result = self.logic.recomputeFromEditedSegments(self._run)
            s = result["summary"]
            self.ui.statusLabel.text = (f"Recomputed from the edited segments: {s['lesion_count']} lesion(s), "
                                        f"TMTV {float(s['tmtv_ml']):.1f} mL, TLG {float(s['ttlg']):.1f} SUVbw*mL; "
                                        f"report in {result['files'][0].parent}")

#
# Logic: usable without the widget (Python console, tests)
#
class PETDenoiseSegmentLogic(ScriptedLoadableModuleLogic, TaskLogic):
    """Example (Python console)::

        logic = slicer.util.getModuleLogic("PETDenoiseSegment")
        run = logic.process({"pet": lowCountPetNode}, {"steps": 5, "seed": 0}, waitForCompletion=True)
        run.output_nodes["pet_denoised"], run.output_nodes["lesions"], run.output_nodes["lesions_table"]
    """

    task = TASK_ID
    input_roles = ("pet", "ct")
    reference_role = "pet"
    # task parameter -> parameter node field
    parameter_fields = {"steps": "steps", "samples": "samples", "seed": "seed", "sampler": "sampler",
                        "start_fraction": "startFraction", "lesion_threshold": "lesionThreshold",
                        "lesion_min_ml": "lesionMinMl", "keep_physiological": "keepPhysiological"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TaskLogic.__init__(self, TASK_ID)

    def getParameterNode(self):
        return PETDenoiseSegmentParameterNode(super().getParameterNode())

    def processParameterNode(self, p, **kw):
        params = {name: getattr(p, field) for name, field in self.parameter_fields.items()}
        model = p.modelPath.strip() or None
        return self.process({"pet": p.inputPET, "ct": p.inputCT}, params, device=p.device, model=model, **kw)

    def recomputeFromEditedSegments(self, run, out_dir=None) -> dict:
        """After editing the run's lesion segmentation in Segment Editor: the lesion table node, the
        summary (TMTV, TLG) and the report again, from the edited segments, on the denoised PET
        (PETDiffusionSlicer.logic.recompute_from_segments). Files go to <run folder>/edited."""
        out_dir = out_dir or (run.output_dir / "edited")
        result = recompute_from_segments(run.output_nodes["pet_denoised"], run.output_nodes["lesions"], out_dir,
                                         organs=run.output_nodes.get("organs"), task=TASK_ID,
                                         table_node=run.output_nodes.get("lesions_csv"))
        run.output_nodes["lesions_csv"] = result["table"]
        return result

    def summaryText(self, run) -> str:
        """Lesion count, TMTV and TLG from the run's summary.json (as the library computed them)."""
        summary = run.output_files.get("summary_json")
        if summary is None or not summary.exists():
            return ""
        s = json.loads(summary.read_text())
        parts = []
        if "lesion_count" in s:
            parts.append(f"{s['lesion_count']} lesion(s)")
        if "tmtv_ml" in s:
            parts.append(f"TMTV {float(s['tmtv_ml']):.1f} mL")
        if "ttlg" in s:
            parts.append(f"TLG {float(s['ttlg']):.1f} SUVbw*mL")
        return ", ".join(parts)


#
# Test: runs only inside Slicer (Testing/test_slicer_*.py covers the same machinery with pytest)
#
class PETDenoiseSegmentTest(ScriptedLoadableModuleTest):
    """Set PETDIFFUSION_RUN_MODEL_TESTS=1 to also run the model (slow on a CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_error_reaches_user()
        if os.environ.get("PETDIFFUSION_RUN_MODEL_TESTS") == "1":
            self.setUp()
            self.test_denoise_segment_on_tiny_pet()

    def _tinyPET(self):
        import numpy as np
        suv = np.full((16, 32, 32), 0.05, dtype=np.float32)
        suv[:, 6:26, 6:26] = 1.0               # body
        suv[5:11, 10:18, 10:18] = 2.2           # liver-like
        suv[7:10, 20:23, 20:23] = 8.0           # a hot lesion
        rng = np.random.default_rng(0)
        suv = np.clip(suv + rng.normal(0, 0.3, suv.shape).astype(np.float32), 0, None)
        node = slicer.util.addVolumeFromArray(suv, nodeClassName="vtkMRMLScalarVolumeNode", name="tiny low-count PET")
        node.SetSpacing(4.0, 4.0, 4.0)
        from PETDiffusionSlicer import nodes
        nodes.set_volume_units(node, "SUVbw")
        return node

    def test_library_error_reaches_user(self):
        from PETDiffusionSlicer.runner import TaskError
        pet = self._tinyPET()
        logic = PETDenoiseSegmentLogic()
        try:
            logic.process({"pet": pet}, {"steps": 251}, waitForCompletion=True)
        except TaskError as exc:
            self.assertIn("steps", str(exc))
        else:
            self.fail("steps = 251 should be refused by the library (maximum 250)")
        self.delayDisplay("library error reached the user")

    def test_denoise_segment_on_tiny_pet(self):
        pet = self._tinyPET()
        logic = PETDenoiseSegmentLogic()
        run = logic.process({"pet": pet}, {"steps": 2, "seed": 0}, waitForCompletion=True, device="cpu")
        self.assertTrue(run.output_nodes["pet_denoised"].IsA("vtkMRMLScalarVolumeNode"))
        self.assertTrue(run.output_nodes["organs"].IsA("vtkMRMLSegmentationNode"))
        self.assertGreater(run.output_nodes["organs"].GetSegmentation().GetNumberOfSegments(), 0)
        self.assertTrue(run.output_nodes["organs_csv"].IsA("vtkMRMLTableNode"))
        self.delayDisplay("denoised PET and segmentations created")
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            names = {p.name for p in logic.exportReport(run, folder)}
        self.assertTrue({"report.pdf", "organs.csv", "summary.json", "organs.seg.nrrd"} <= names)
        self.delayDisplay("report exported")
