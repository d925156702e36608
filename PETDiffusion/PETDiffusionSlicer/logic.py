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
import tempfile
from pathlib import Path
from typing import Mapping

import SimpleITK as sitk
import slicer

from . import display, nodes
from .runner import (LogCallback, ProgressCallback, TaskError, TaskRun, last_error_line, prefetch_spec,
                     run_library, task_spec)

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
        self._spec_error: str | None = None
        self._prefetch = None
        self.lastRun: TaskRun | None = None

    # -- the task's spec (parameters, defaults, ranges) ----------------------------------------
    def prefetchSpec(self):
        """Start reading the task's spec in a background thread (the panel does it when it opens, so
        that Apply never waits for a new Python process); the thread, or None when already known."""
        if self._spec is not None or (self._prefetch is not None and self._prefetch.is_alive()):
            return self._prefetch

        def done(spec, error):
            self._spec, self._spec_error = (spec if spec is not None else self._spec), error
        self._prefetch = prefetch_spec(self.task, done)
        return self._prefetch

    def specReady(self) -> bool:
        """True when :meth:`spec` answers at once (known, or a prefetch finished, with or without error)."""
        return self._spec is not None or (self._prefetch is not None and not self._prefetch.is_alive())

    def spec(self) -> dict:
        if self._spec is None and self._prefetch is not None:
            self._prefetch.join()
        if self._spec is None:
            self._spec = task_spec(self.task)   # cached on disk after the first time (runner.task_spec)
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
                timeout: float | None = None, show: bool = True, spec: dict | None = None,
                input_source=None) -> TaskRun:
        """Start the task on input nodes (role -> volume node). With ``waitForCompletion`` block,
        load the outputs as nodes and return; raises TaskError with the library's message on failure.
        Otherwise return the running TaskRun: call ``run.poll()`` (a timer does it in the panel).

        A PET that is not in SUV but was loaded from Slicer's DICOM database reaches the library as
        its DICOM series (:func:`dicom_pet_source`), which the library converts to SUV with its rules
        (factor and rule in the report's SUV type line). ``input_source`` replaces that choice."""
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
                      on_progress=on_progress, on_log=on_log, temp_root=temp_root, results_dir=results_dir,
                      input_source=input_source or dicom_pet_source)
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
    def exportReport(self, run: TaskRun, folder: str | Path, dicom_source: str | Path | None = None) -> list[Path]:
        """Copy the run's report (PDF), tables (CSV), JSON summaries and manifest into ``folder``,
        write each segmentation as .seg.nrrd and, when the reference volume's DICOM series is known
        (``dicom_source``, or the Slicer DICOM database for a volume loaded from DICOM), DICOM SEG
        files made by the library (``petdiffusion report --dicom-source``). Returns the files written."""
        if run is None or run.state != "completed" or run.output_dir is None:
            raise TaskError("there is no finished run to export; click Apply first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        outputs = (run.manifest or {}).get("outputs", {})
        for name, info in outputs.items():
            src = run.output_dir / info["file"]
            if info.get("kind") in EXPORT_KINDS and src.is_file():
                shutil.copy2(src, folder / src.name)
                written.append(folder / src.name)
        for extra in sorted(run.output_dir.glob("*.dcm")) + [run.output_dir / "manifest.json"]:
            if extra.is_file() and (folder / extra.name) not in written:
                shutil.copy2(extra, folder / extra.name)
                written.append(folder / extra.name)
        for name, node in run.output_nodes.items():
            if node.IsA("vtkMRMLSegmentationNode"):
                written.append(_write_segmentation(node, folder / f"{name}.seg.nrrd"))
        with tempfile.TemporaryDirectory(prefix="PETDiffusion-dicom-") as tmp:
            source = Path(dicom_source) if dicom_source else _dicom_files_of(run.inputs.get(self.reference_role), Path(tmp))
            if source is not None:
                written += self._writeDicomSeg(run, folder, source)
        return written

    def _writeDicomSeg(self, run: TaskRun, folder: Path, source: Path) -> list[Path]:
        """DICOM SEG of the run's label map outputs, referencing the source series (library writer)."""
        manifest = run.manifest or {}
        outputs = manifest.get("outputs", {})
        labels = {n: run.output_dir / o["file"] for n, o in outputs.items() if o.get("kind") == "labelmap"}
        pets = [n for n, o in outputs.items() if o.get("kind") == "volume" and o.get("units") == "SUVbw"]
        if not labels or not pets:
            return []
        pet_name = sorted(pets, key=lambda n: (not n.startswith("pet_"), n))[0]
        with tempfile.TemporaryDirectory(prefix="PETDiffusion-seg-") as tmp:
            tmp = Path(tmp)
            args = ["report", "--pet", str(run.output_dir / outputs[pet_name]["file"]), "--out", str(tmp / "out"),
                    "--dicom-source", str(source), "--task", self.task]
            if outputs[pet_name].get("synthetic"):
                args.append("--synthetic")
            if manifest.get("model_id"):
                args += ["--model-id", str(manifest["model_id"])]
            if "lesions" in labels:
                args += ["--lesions", str(labels["lesions"])]
            if "organs" in labels:
                args += ["--organs", str(labels["organs"])]
                names = manifest.get("organ_labels")
                if names:
                    (tmp / "organ_names.json").write_text(json.dumps(names))
                    args += ["--organ-names", str(tmp / "organ_names.json")]
            returncode, output = run_library(args)
            if returncode != 0:
                raise TaskError(last_error_line(output) or "DICOM SEG export failed")
            written = []
            for dcm in sorted((tmp / "out").glob("*.dcm")):
                shutil.copy2(dcm, folder / dcm.name)
                written.append(folder / dcm.name)
            return written


def recompute_from_segments(pet_node, lesion_segmentation, out_dir: str | Path, *, organs=None,
                            task: str = "quantify", table_node=None) -> dict:
    """The Segment Editor round trip: after the user edited the lesion segmentation, measure the
    edited segments again with the library (``petdiffusion report``: lesion table, TMTV, TLG, the
    PDF report) on the PET's grid. Each segment is one lesion, numbered in segment order (a single
    segment is split into its 18-connected parts, as a binary mask is). ``organs``: an organ
    segmentation or label map node (organ of each lesion, PERCIST references).

    Writes the report files into ``out_dir``; fills ``table_node`` (or a new table node) from the new
    lesions.csv. Returns {"table": node, "summary": summary.json as a dict, "files": [paths]}.
    """
    if pet_node is None or lesion_segmentation is None:
        raise ValueError("select the PET and the lesion segmentation")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="PETDiffusion-recompute-") as tmp:
        tmp = Path(tmp)
        pet_file = nodes.write_volume_node(pet_node, tmp / "pet.nrrd")
        label, names = nodes.label_image_from_segmentation(lesion_segmentation, pet_node)
        sitk.WriteImage(label, str(tmp / "lesions.nrrd"), useCompression=True)
        args = ["report", "--pet", str(pet_file), "--lesions", str(tmp / "lesions.nrrd"),
                "--out", str(tmp / "out"), "--task", task]
        if pet_node.GetAttribute(nodes.SYNTHETIC_ATTRIBUTE) == "1":
            args.append("--synthetic")
        if organs is not None:
            if organs.IsA("vtkMRMLSegmentationNode"):
                organ_label, organ_names = nodes.label_image_from_segmentation(organs, pet_node)
            else:
                organ_label, organ_names = nodes.image_from_volume_node(organs), nodes.label_names_of(organs)
            sitk.WriteImage(sitk.Cast(organ_label, sitk.sitkUInt16), str(tmp / "organs.nrrd"), useCompression=True)
            (tmp / "organ_names.json").write_text(json.dumps({str(k): v for k, v in organ_names.items()}))
            args += ["--organs", str(tmp / "organs.nrrd"), "--organ-names", str(tmp / "organ_names.json")]
        returncode, output = run_library(args)
        if returncode != 0:
            message = last_error_line(output) or "recomputing the lesion table failed"
            raise TaskError(message.replace(str(tmp / "lesions.nrrd"), f'"{lesion_segmentation.GetName()}"'))
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for item in sorted((tmp / "out").iterdir()):
            shutil.copy2(item, out_dir / item.name)
            files.append(out_dir / item.name)
    summary = json.loads((out_dir / "summary.json").read_text())
    csv_path = out_dir / "lesions.csv"
    if table_node is None:
        table_node = nodes.table_node_from_csv(csv_path, f"{lesion_segmentation.GetName()} lesions (edited)")
    else:
        fresh = nodes.table_node_from_csv(csv_path, "__recomputed")
        table_node.GetTable().DeepCopy(fresh.GetTable())
        for col in nodes.table_columns(fresh):
            if fresh.GetColumnUnitLabel(col):
                table_node.SetColumnUnitLabel(col, fresh.GetColumnUnitLabel(col))
        table_node.Modified()
        nodes.scene().RemoveNode(fresh)
    return {"table": table_node, "summary": summary, "files": files}


def dicom_pet_source(role: str, node, work_dir: Path) -> Path | None:
    """For a PET not in SUV (Bq/mL, counts, or no units) loaded from Slicer's DICOM database: its
    DICOM files, copied into ``work_dir``, for the library to read and convert to SUV (PHYSICS.md
    section 1: decay, dose, weight, vendor rules). None for anything else (the node's voxels are used)."""
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        return None
    units = node.GetAttribute(nodes.UNITS_ATTRIBUTE) or ""
    if units in nodes.SUV_UNITS or (role != "pet" and nodes.volume_role(node) != "pet"):
        return None
    if not node.GetAttribute("DICOM.instanceUIDs") or getattr(slicer, "dicomDatabase", None) is None:
        return None
    folder = work_dir / f"{role}_dicom"
    folder.mkdir(parents=True, exist_ok=True)
    return _dicom_files_of(node, folder)


def _dicom_files_of(volume_node, tmp: Path) -> Path | None:
    """A folder with the DICOM files a volume was loaded from (Slicer's DICOM database), or None."""
    uids = volume_node.GetAttribute("DICOM.instanceUIDs") if volume_node is not None and hasattr(volume_node, "GetAttribute") else None
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    folder = tmp / "source"
    folder.mkdir()
    for i, uid in enumerate(uids.split()):
        path = database.fileForInstance(uid)
        if path:
            shutil.copy2(path, folder / f"{i:05d}.dcm")
    return folder if any(folder.iterdir()) else None


def _write_segmentation(seg_node, path: Path) -> Path:
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(seg_node):
        raise TaskError(f"could not write {path}")
    return path


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
