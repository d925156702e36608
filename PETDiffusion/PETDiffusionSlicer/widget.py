"""The GUI wiring both PETDiffusion panels share: parameter node <-> .ui binding, Apply/Cancel, progress
polling, status line, report export. Desktop Slicer only (imports qt and the application); each
module's Widget sets the class attributes and adds its own buttons. Nothing here computes anything:
the module's Logic (PETDiffusionSlicer.logic.TaskLogic) runs the task."""

import logging

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from PETDiffusionSlicer import dependencies, nodes
from PETDiffusionSlicer.resources import resource_path


def vtk_modified_event():
    import vtk
    return vtk.vtkCommand.ModifiedEvent


class TaskWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    ui_file = ""                 # e.g. "UI/PETDenoiseSegment.ui"
    title = ""                   # the module title, for dependency and error dialogs
    input_field = ""             # the parameter node field that must be set before Apply
    input_guesses = {}           # parameter node field -> role ("pet", "ct") preselected by what volumes say they are
    result_buttons = ("exportButton",)  # enabled once a run has completed
    tooltip_running = "Cancel the running task"
    tooltip_ready = "Run the task"
    tooltip_missing = "Select an input volume"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._timer = None

    def createLogic(self):
        raise NotImplementedError

    def doneText(self, run) -> str:
        """One line about a completed run for the status label."""
        return ""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resource_path(self.ui_file))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        self.logic.prefetchSpec()   # in a thread: the first Apply does not wait for `petdiffusion spec`

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollTimer)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified_event(), self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._run.cancel()
            self._finishRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        # Preselect inputs by modality and units (PETDiffusionSlicer.nodes.volume_role), never "the
        # first volume": a CT is not offered as the PET.
        for field, role in self.input_guesses.items():
            if not getattr(self._parameterNode, field):
                node = nodes.guess_volume(slicer.mrmlScene, role)
                if node:
                    setattr(self._parameterNode, field, node)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk_modified_event(), self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk_modified_event(), self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._run is not None and self._run.state == "running"
        # a task without image inputs (demographics synthesis) is ready as soon as the panel is
        ready = bool(self._parameterNode and (not self.input_field or getattr(self._parameterNode, self.input_field)))
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = (self.tooltip_running if running else
                                       self.tooltip_ready if ready else self.tooltip_missing)

    def _setResultButtons(self, enabled: bool) -> None:
        for name in self.result_buttons:
            getattr(self.ui, name).enabled = enabled

    def onApplyButton(self) -> None:
        if self._run is not None and self._run.state == "running":
            self._run.cancel()
            self._finishRun()
            return
        if not self.logic.specReady():
            # the task description is still being read (first opening only): try again shortly
            self.ui.statusLabel.text = "Reading the task description (first time only)..."
            qt.QTimer.singleShot(300, self.onApplyButton)
            return
        status = dependencies.ensure_dependencies(self.title)
        if not status.ok:
            # not an error: the user declined, or must install the PyTorch extension first
            self.ui.statusLabel.text = status.message
            slicer.util.showStatusMessage(status.message, 8000)
            return
        with slicer.util.tryWithErrorDisplay(f"Could not start {self.title}.", waitCursor=True):
            self.ui.statusLabel.text = "Starting..."
            self._run = self.logic.processParameterNode(self._parameterNode, on_progress=self.onProgress,
                                                        on_log=self.onLog)
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.value = 0
            self.ui.progressBar.visible = True
            self._setResultButtons(False)
            self._timer.start()
            self._checkCanApply()

    def onPollTimer(self) -> None:
        if self._run is None or self._run.poll():
            self._finishRun()

    def onProgress(self, fraction: float, stage: str, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = f"{stage}: {message}" if message else stage

    def onLog(self, level: str, message: str) -> None:
        logging.getLogger(type(self).__module__).log(
            logging.WARNING if level == "warning" else logging.INFO, message)
        if level in ("warning", "error"):
            self.ui.statusLabel.text = message

    def _finishRun(self) -> None:
        self._timer.stop()
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.visible = False
        run = self._run
        if run is not None and run.state == "completed":
            self.logic.showResults(run)
            seconds = (run.manifest or {}).get("seconds")
            self.ui.statusLabel.text = f"Done ({seconds} s). {self.doneText(run)}"
            self._setResultButtons(True)
        elif run is not None and run.state == "failed":
            self.ui.statusLabel.text = f"Failed: {run.error}"
            slicer.util.errorDisplay(run.error, windowTitle=self.title)
        elif run is not None and run.state == "cancelled":
            self.ui.statusLabel.text = "Cancelled."
        self._checkCanApply()

    def onExportButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Export report to folder")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            files = self.logic.exportReport(self._run, folder)
            self.ui.statusLabel.text = f"Exported {len(files)} file(s) to {folder}"
