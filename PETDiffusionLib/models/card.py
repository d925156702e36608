"""Model cards: the ``card.json`` of a model folder, and networks rebuilt from it.

A model is a folder (ARCHITECTURE.md, "Contracts"):

    <model-id>/card.json          this card
    <model-id>/model.safetensors  weights of every network, keys "<network name>.<parameter>"

Card keys (required ones marked *):
    id*, task*, version*              e.g. "amdiff-phantom-2d", "denoise-segment", "0.1.0"
    networks*                         {name: {"class": "dotted.path.Class", "args": {...}}}
    weights_sha256*                   sha256 of model.safetensors (filled by save_model_folder)
    intended_use*                     "research model, not for diagnosis" unless stated otherwise
    preprocessing                     constants the task needs (SUV cut-off, HU window, spacing ...)
    diffusion                         schedule, timesteps, default sampler and steps
    training                          {"data": ..., "command": ..., "steps": ...}
    evaluation                        figures measured on named data
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from PETDiffusionLib.errors import ModelError

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
INTENDED_USE = "research model, not for diagnosis"
REQUIRED_KEYS = ("id", "task", "version", "networks", "weights_sha256", "intended_use")

ALLOWED_CLASS_PREFIXES = ("PETDiffusionLib.", "monai.networks.", "torch.nn.")
"""A card names its network classes by dotted path; only classes from these packages are built, so
that a card from elsewhere cannot make us import arbitrary code."""

SPEC_ATTRIBUTE = "card_spec"
"""Networks built by :func:`build_network` remember their {"class", "args"} under this attribute."""


def validate_card(card: dict, where: object = "card") -> dict:
    """Check the required keys and the network entries; raise ModelError naming what is wrong."""
    if not isinstance(card, dict):
        raise ModelError(f"{where}: a model card must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise ModelError(f"{where}: model card lacks {', '.join(missing)}")
    nets = card["networks"]
    if not isinstance(nets, dict) or not nets:
        raise ModelError(f"{where}: 'networks' must map network names to {{class, args}}")
    for name, spec in nets.items():
        if not isinstance(spec, dict) or "class" not in spec:
            raise ModelError(f"{where}: network {name!r} has no 'class'")
        if "." in name:
            raise ModelError(f"{where}: network name {name!r} must not contain '.'")
    return card


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        raise ModelError(f"{folder}: not a model folder (no {CARD_NAME})")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model card ({exc})") from exc
    return validate_card(card, path)


def import_class(dotted: str, where: object = "card") -> type:
    if not dotted.startswith(ALLOWED_CLASS_PREFIXES):
        raise ModelError(f"{where}: network class {dotted!r} is not from "
                         f"{', '.join(ALLOWED_CLASS_PREFIXES)}; refusing to import it")
    module, _, name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{where}: network class {dotted!r} not found ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"{where}: {dotted!r} is not a torch.nn.Module class")
    return cls


def build_network(spec: dict[str, Any], where: object = "card") -> nn.Module:
    """``{"class": "monai.networks.nets.DiffusionModelUNet", "args": {...}}`` -> the module.

    The module remembers its spec (attribute ``card_spec``) so that save_model_folder can write it.
    """
    cls = import_class(spec["class"], where)
    args = dict(spec.get("args", {}))
    try:
        net = cls(**args)
    except Exception as exc:  # a constructor rejects its arguments: say which card and class
        raise ModelError(f"{where}: cannot build {spec['class']} from its card arguments: {exc}") from exc
    setattr(net, SPEC_ATTRIBUTE, {"class": spec["class"], "args": args})
    return net
