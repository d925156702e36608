"""Run one task end to end: read inputs, check parameters, run, write outputs and manifest.json.

All outputs are written into a staging folder and moved into the output folder only when the whole
run succeeds (ARCHITECTURE.md: nothing half-written is left behind).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.device import choose_device
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import staging_dir
from PETDiffusionLib.io.images import read_image, read_label
from PETDiffusionLib.progress import NULL_PROGRESS, Progress
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.registry import get_task

log = logging.getLogger(__name__)


def run_task(task_id: str, input_paths: dict[str, str], params: dict | None, out_dir: str | Path,
             progress: Progress = NULL_PROGRESS, device: str | None = None,
             model_path: str | None = None) -> Path:
    """Returns the path of the manifest.json written in ``out_dir``."""
    t0 = time.monotonic()
    module = get_task(task_id)
    spec = module.SPEC
    params = dict(params or {})
    unknown = set(params) - {p.name for p in spec.parameters}
    if unknown:
        raise InputError(f"task {task_id}: unknown parameter(s) {', '.join(sorted(unknown))}")
    values = {p.name: p.coerce(params.get(p.name)) for p in spec.parameters}

    images: dict[str, sitk.Image] = {}
    for inp in spec.inputs:
        path = input_paths.get(inp.name)
        if not path:
            if inp.required:
                raise InputError(f"task {task_id}: the input --{inp.name} ({inp.help}) is required")
            continue
        progress.update("read inputs", 0.0, f"reading {inp.name}")
        images[inp.name] = read_label(path) if inp.is_label else read_image(path)
    extra = set(input_paths) - {i.name for i in spec.inputs}
    if extra:
        raise InputError(f"task {task_id}: unknown input(s) {', '.join(sorted(extra))}")

    dev = choose_device(device)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as stage:
        ctx = RunContext(out_dir=stage, progress=progress, device=dev,
                         model_path=Path(model_path) if model_path else None,
                         input_paths={k: str(Path(v).resolve()) for k, v in input_paths.items() if v})
        written = module.run(images, values, ctx)
        outputs = {}
        for o in spec.outputs:
            if o.name in written:
                outputs[o.name] = {"file": Path(written[o.name]).name, "kind": o.kind,
                                   "units": o.units, "synthetic": o.synthetic}
            elif not o.optional:
                raise RuntimeError(f"task {task_id} did not write its output {o.name}")
        manifest = {
            "task": task_id, "title": spec.title, "paper": spec.paper,
            "library_version": __version__, "inputs": ctx.input_paths, "parameters": values,
            "device": str(dev), "outputs": outputs,
            "seconds": round(time.monotonic() - t0, 2), "python": platform.python_version(),
            "research_use_only": True,
        }
        manifest.update(ctx.manifest_extra)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    progress.update("done", 1.0)
    return out_dir / "manifest.json"
