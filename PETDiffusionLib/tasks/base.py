"""What every clinical task declares: its inputs, parameters and outputs (docs/ARCHITECTURE.md).

The CLI subcommand (``petdiffusion run <task>``), the Slicer panel's parameter node, the batch
runner and the report all read this one spec. A task package ``tasks/<task>/`` defines
``SPEC: TaskSpec`` in ``spec.py``, which imports nothing heavier than this module (no torch, so that
``petdiffusion spec`` and ``--help`` answer at once), and its pipeline in ``pipeline.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PETDiffusionLib.errors import InputError
from PETDiffusionLib.progress import Progress

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch


@dataclass(frozen=True)
class ImageInput:
    name: str                      # CLI flag (--pet) and key in the inputs dict
    role: str                      # pet | ct | mr | nac | labels
    units: str | None              # expected units: SUVbw, HU, None (any)
    help: str
    required: bool = True
    is_label: bool = False


@dataclass(frozen=True)
class Parameter:
    name: str                      # CLI flag uses dashes: steps -> --steps
    type: type                     # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None

    def coerce(self, value: Any) -> Any:
        """Convert and range-check a user value; raises InputError naming the parameter."""
        if value is None:
            return self.default
        try:
            if self.type is bool and isinstance(value, str):
                v = value.strip().lower() in ("1", "true", "yes", "on")
            else:
                v = self.type(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"parameter {self.name}: {value!r} is not a valid {self.type.__name__}") from exc
        if self.minimum is not None and v < self.minimum:
            raise InputError(f"parameter {self.name}: {v} is below the minimum {self.minimum}")
        if self.maximum is not None and v > self.maximum:
            raise InputError(f"parameter {self.name}: {v} is above the maximum {self.maximum}")
        if self.choices is not None and v not in self.choices:
            raise InputError(f"parameter {self.name}: {v!r} is not one of {', '.join(map(str, self.choices))}")
        return v


@dataclass(frozen=True)
class Output:
    name: str                      # key in the manifest
    filename: str                  # file in the output folder
    kind: Literal["volume", "labelmap", "table", "report", "json"]
    help: str
    units: str | None = None
    synthetic: bool = False
    optional: bool = False         # written only when asked (uncertainty) or when inputs allow
    label_names: str | None = None # for label maps: the name of the class map in the manifest


@dataclass(frozen=True)
class TaskSpec:
    id: str
    title: str
    paper: str
    description: str
    inputs: tuple[ImageInput, ...]
    parameters: tuple[Parameter, ...]
    outputs: tuple[Output, ...]
    model_id: str | None = None
    slicer_module: str | None = None  # PETDiffusion/<name>.py, Resources/UI/<name>.ui, Icons/<name>.png
    # Headline figures for a cohort's summary.csv (``petdiffusion batch``), read from a finished
    # study's files: "OUTPUT:FIELD" (a JSON output's field), "OUTPUT:ROW:COLUMN" (a CSV output's
    # row whose first column is ROW) or "manifest:FIELD"; see PETDiffusionLib/batch/headline.py.
    headline: tuple[str, ...] = ()

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self) -> dict:
        def conv(obj):
            d = dataclasses.asdict(obj)
            if "type" in d:
                d["type"] = obj.type.__name__
            return d
        return {"id": self.id, "title": self.title, "paper": self.paper,
                "description": self.description, "model_id": self.model_id,
                "slicer_module": self.slicer_module, "headline": list(self.headline),
                "inputs": [conv(i) for i in self.inputs],
                "parameters": [conv(p) for p in self.parameters],
                "outputs": [conv(o) for o in self.outputs]}


@dataclass
class RunContext:
    """What a task's run() gets besides its images and parameters."""
    out_dir: Path                  # staging folder: write outputs here (moved into place on success)
    progress: Progress
    device: "torch.device"
    model_path: Path | None = None # a user's own model folder; None = the shipped model
    model: Any = None              # a model already loaded by pipeline.load_model (batch workers)
    input_paths: dict[str, str] = field(default_factory=dict)
    manifest_extra: dict = field(default_factory=dict)  # model id/version, label names, notes...
