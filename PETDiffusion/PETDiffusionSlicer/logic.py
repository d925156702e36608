"""What every task panel's Logic does, without any GUI: run a task on nodes, load and show results, export.

A module's Logic (``PETDenoiseSegmentLogic``, ``CTtoPETSynthesisLogic``) is a thin subclass that
names its task and its input roles. Usable from Slicer's Python console and from tests::

    logic = CTtoPETSynthesisLogic()
    run = logic.process({"ct": ctNode}, {"steps": 5, "seed": 0}, waitForCompletion=True)
    run.output_nodes["pet_synthetic"]
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Mapping

from . import display
from .runner import LogCallback, ProgressCallback, TaskError, TaskRun, task_spec

log = logging.getLogger(__name__)

# Output kinds that Export report copies as files (volumes come back as nodes, and as NIfTI on request).
EXPORT_KINDS = ("report", "table", "json")


class TaskLogic:
    task: str = ""
    input_roles: tuple[str, ...] = ()
    reference_role: str | None = None     # the input whose grid and study the outputs share

    def __init__(self, task: str | None = None):
        if task:
            self.task = task
        self._spec: dict | None = None
        self.lastRun: TaskRun | None = None

    # -- the task's spec (parameters, defaults, ranges) ----------------------------------------
    def spec(self) -> dict:
        if self._spec is None:
            self._spec = task_spec(self.task)
        return self._spec

    def parameterSpec(self, name: str) -> dict | None:
        for p in self.spec().get("parameters", []):
            if p["name"] == name:
                return p
        return None

    # -- running ---------------------------------------------------------------------------
    def process(self, inputs: Mapping[str, object], parameters: Mapping[str, object] | None = None, *,
                waitForCompletion: bool = False, device: str | None = None, model: str | None = None,
                on_progress: ProgressCallback | None = None, on_log: LogCallback | None = None,
                temp_root: str | None = None, results_dir: str | None = None,
                timeout: float | None = None, show: bool = True, spec: dict | None = None) -> TaskRun:
        """Start the task on input nodes (role -> volume node). With ``waitForCompletion`` block,
        load the outputs as nodes and return; raises TaskError with the library's message on failure.
        Otherwise return the running TaskRun: call ``run.poll()`` (a timer does it in the panel)."""
        spec = spec if spec is not None else self.spec()
        missing = [i["name"] for i in spec["inputs"] if i.get("required", True) and inputs.get(i["name"]) is None]
        if missing:
            raise ValueError(f"{self.task}: select the input volume(s): {', '.join(missing)}")
        known = {p["name"] for p in spec["parameters"]}
        parameters = dict(parameters or {})
        for name in sorted(set(parameters) - known):
            log.warning("%s has no parameter %r; not passed", self.task, name)
            parameters.pop(name)
        inputs = {k: v for k, v in inputs.items() if k in {i["name"] for i in spec["inputs"]}}
        if device == "auto":
            device = None
        run = TaskRun(self.task, inputs, parameters, spec=spec,
                      model=model or None, device=device, reference=self.reference_role,
                      on_progress=on_progress, on_log=on_log, temp_root=temp_root, results_dir=results_dir)
        self.lastRun = run
        run.start()
        if waitForCompletion:
            run.wait(timeout=timeout)
            if show:
                self.showResults(run)
        return run

    def showResults(self, run: TaskRun) -> None:
        display.show_results(run.output_nodes, run.inputs)

    # -- export ----------------------------------------------------------------------------
    def exportReport(self, run: TaskRun, folder: str | Path) -> list[Path]:
        """Copy the run's report (PDF), tables (CSV), JSON summaries, DICOM SEG files and manifest into
        ``folder``; write each segmentation as a .seg.nrrd too. Returns the files written."""
        if run is None or run.state != "completed" or run.output_dir is None:
            raise TaskError("there is no finished run to export; click Apply first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        outputs = (run.manifest or {}).get("outputs", {})
        for name, info in outputs.items():
            src = run.output_dir / info["file"]
            is_dicom_seg = src.suffix.lower() == ".dcm" or "dicom" in name.lower() or "seg.dcm" in src.name
            if info.get("kind") in EXPORT_KINDS or is_dicom_seg:
                if src.is_dir():
                    shutil.copytree(src, folder / src.name, dirs_exist_ok=True)
                elif src.exists():
                    shutil.copy2(src, folder / src.name)
                written.append(folder / src.name)
        for extra in sorted(run.output_dir.glob("*.dcm")) + [run.output_dir / "manifest.json"]:
            if extra.exists() and (folder / extra.name) not in written:
                shutil.copy2(extra, folder / extra.name)
                written.append(folder / extra.name)
        for name, node in run.output_nodes.items():
            if node.IsA("vtkMRMLSegmentationNode"):
                written.append(_write_segmentation(node, folder / f"{name}.seg.nrrd"))
        written += self._exportDicomSeg(run, folder)
        return written

    def _exportDicomSeg(self, run: TaskRun, folder: Path) -> list[Path]:
        """DICOM SEG through Slicer's DICOM exporter when the reference volume came from DICOM
        (desktop Slicer only; the library writes its own DICOM SEG when its input was a DICOM folder)."""
        reference = run.inputs.get(self.reference_role)
        if not display.has_views() or reference is None or not hasattr(reference, "GetAttribute") \
                or not reference.GetAttribute("DICOM.instanceUIDs"):
            return []
        try:
            import DICOMSegmentationPlugin  # QuantitativeReporting extension
        except ImportError:
            log.info("DICOM SEG from Slicer needs the QuantitativeReporting extension; skipped")
            return []
        import slicer
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        exporter = DICOMSegmentationPlugin.DICOMSegmentationPluginClass()
        written = []
        for name, node in run.output_nodes.items():
            if not node.IsA("vtkMRMLSegmentationNode"):
                continue
            exportables = exporter.examineForExport(sh.GetItemByDataNode(node))
            for exp in exportables:
                exp.directory = str(folder)
            if exportables:
                exporter.export(exportables)
                written.append(folder)
        return written


def _write_segmentation(seg_node, path: Path) -> Path:
    import slicer
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(seg_node):
        raise TaskError(f"could not write {path}")
    return path


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
