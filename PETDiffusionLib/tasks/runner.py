"""Run one task end to end: read inputs, check parameters, run, write outputs and manifest.json.

The runner owns the output folder (docs/ARCHITECTURE.md, "Contracts"): the task's pipeline returns
its image outputs as SimpleITK images and writes only its tables and reports; the runner writes each
image under the filename, units and synthetic flag its spec declares, checks that the staging folder
then holds exactly the files the spec's outputs name (plus manifest.json), and moves it into place
only when the whole run succeeded (nothing half-written is left behind).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import staging_dir
from PETDiffusionLib.io.images import get_warnings, read_image, read_label, write_image
from PETDiffusionLib.progress import NULL_PROGRESS, Progress
from PETDiffusionLib.tasks.base import Output, RunContext, TaskSpec
from PETDiffusionLib.tasks.registry import task_part, task_spec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def coerce_parameters(spec: TaskSpec, params: dict | None) -> dict[str, Any]:
    """The spec's parameters with the user's values checked and the defaults filled in."""
    params = dict(params or {})
    unknown = set(params) - {p.name for p in spec.parameters}
    if unknown:
        raise InputError(f"task {spec.id}: unknown parameter(s) {', '.join(sorted(unknown))}")
    return {p.name: p.coerce(params.get(p.name)) for p in spec.parameters}


def read_inputs(spec: TaskSpec, input_paths: dict[str, str], progress: Progress) -> dict[str, sitk.Image]:
    extra = set(input_paths) - {i.name for i in spec.inputs}
    if extra:
        raise InputError(f"task {spec.id}: unknown input(s) {', '.join(sorted(extra))}")
    images: dict[str, sitk.Image] = {}
    for inp in spec.inputs:
        path = input_paths.get(inp.name)
        if not path:
            if inp.required:
                raise InputError(f"task {spec.id}: the input --{inp.name} ({inp.help}) is required")
            continue
        progress.update("read inputs", 0.0, f"reading {inp.name}")
        images[inp.name] = read_label(path) if inp.is_label else read_image(path)
    return images


def load_task_model(task_id: str, model_path: str | Path | None = None, device: str | None = None):
    """The task's model loaded once (a batch worker passes it to every ``run_task(..., model=)``)."""
    return task_part(task_id, "pipeline").load_model(Path(model_path) if model_path else None,
                                                     choose_device(device))


def _write_output(o: Output, img: sitk.Image, folder: Path) -> Path:
    units = o.units if o.units is not None else ("label" if o.kind == "labelmap" else None)
    return write_image(img, folder / o.filename, units=units,
                       synthetic=True if o.synthetic else None,
                       description=o.help if o.synthetic else None)


def _check_written(spec: TaskSpec, stage: Path, written: dict[str, Path]) -> dict[str, dict]:
    """Exactly the spec's files: every required output present, nothing the spec does not name."""
    by_name = {o.name: o for o in spec.outputs}
    unknown = set(written) - set(by_name)
    if unknown:
        raise RuntimeError(f"task {spec.id} returned outputs its spec does not name: {sorted(unknown)}")
    outputs = {}
    for o in spec.outputs:
        if o.name in written:
            if Path(written[o.name]).name != o.filename:
                raise RuntimeError(f"task {spec.id} wrote {o.name} as {Path(written[o.name]).name}, "
                                   f"its spec says {o.filename}")
            outputs[o.name] = {"file": o.filename, "kind": o.kind, "units": o.units,
                               "synthetic": o.synthetic}
        elif not o.optional:
            raise RuntimeError(f"task {spec.id} did not write its output {o.name}")
    on_disk = {p.name for p in stage.iterdir()}
    stray = on_disk - {v["file"] for v in outputs.values()}
    if stray:
        raise RuntimeError(f"task {spec.id} left files its spec does not name: {sorted(stray)}")
    return outputs


def run_task(task_id: str, input_paths: dict[str, str], params: dict | None, out_dir: str | Path,
             progress: Progress = NULL_PROGRESS, device: str | None = None,
             model_path: str | None = None, model: Any = None) -> Path:
    """Returns the path of the manifest.json written in ``out_dir``.

    ``model``: a model already returned by the task's ``pipeline.load_model`` (loaded once by a
    batch worker for many studies); by default the pipeline loads ``model_path`` or the shipped model.
    """
    t0 = time.monotonic()
    spec = task_spec(task_id)
    pipeline = task_part(task_id, "pipeline")
    values = coerce_parameters(spec, params)
    images = read_inputs(spec, input_paths, progress)
    dev = choose_device(device)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as stage:
        ctx = RunContext(out_dir=stage, progress=progress, device=dev,
                         model_path=Path(model_path) if model_path else None, model=model,
                         input_paths={k: str(Path(v).resolve()) for k, v in input_paths.items() if v})
        pipeline.check_inputs(images, values, ctx)
        progress.update("load model", 0.02)
        if model is None:
            model = pipeline.load_model(ctx.model_path, dev)
        ctx.model = model
        predicted = pipeline.predict(images, values, model, ctx)
        progress.update("write", 0.86)
        by_name = {o.name: o for o in spec.outputs}
        written = {}
        for name, img in predicted.items():
            if name not in by_name or by_name[name].kind not in ("volume", "labelmap"):
                raise RuntimeError(f"task {task_id}: predict returned {name!r}, which its spec "
                                   "does not declare as a volume or label map")
            written[name] = _write_output(by_name[name], img, stage)
        progress.update("report", 0.9)
        written.update(pipeline.report(images, predicted, values, model, ctx) or {})
        outputs = _check_written(spec, stage, written)
        manifest = {
            "task": task_id, "title": spec.title, "paper": spec.paper,
            "library_version": __version__, "inputs": ctx.input_paths, "parameters": values,
            "device": str(dev), "outputs": outputs,
            "seconds": round(time.monotonic() - t0, 2), "python": platform.python_version(),
            "research_use_only": True,
        }
        warnings = {k: get_warnings(img) for k, img in images.items() if get_warnings(img)}
        if warnings:  # what the reader did to an input (e.g. irregular DICOM slice steps resampled)
            manifest["input_warnings"] = warnings
        manifest.update(ctx.manifest_extra)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    progress.update("done", 1.0)
    return out_dir / MANIFEST
