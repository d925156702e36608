"""Model folders: save (atomic, hash filled in), load (hash checked), list the shipped ones.

Shipped models live in ``PETDiffusionLib/models/<model-id>/``; further folders of models can be
named in the environment variable ``PETDIFFUSION_MODEL_PATH`` (``os.pathsep``-separated); a user's
own model loads by its folder path. Weights are safetensors only; pickles are never loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from PETDiffusionLib.errors import ModelError
from PETDiffusionLib.io.atomic import staging_dir
from PETDiffusionLib.models.card import (CARD_NAME, INTENDED_USE, SPEC_ATTRIBUTE, WEIGHTS_NAME,
                                         build_network, read_card, validate_card)

log = logging.getLogger(__name__)

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent
MODEL_PATH_ENV = "PETDIFFUSION_MODEL_PATH"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_of(networks: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """{"<net>.<param>": tensor} on the CPU, contiguous and unshared (safetensors needs both)."""
    out = {}
    for name, net in networks.items():
        if "." in name:
            raise ValueError(f"network name {name!r} must not contain '.'")
        for key, value in net.state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().clone().contiguous()
    return out


def save_model_folder(folder: str | os.PathLike, networks: dict[str, nn.Module], card: dict) -> Path:
    """Write ``folder``/card.json and model.safetensors atomically; returns the folder.

    ``card["networks"][name]`` may be left out for networks built by ``build_network`` (they know
    their spec). ``weights_sha256`` is filled in; ``intended_use`` defaults to research only.
    """
    folder = Path(folder)
    card = json.loads(json.dumps(card))  # a deep copy that is certainly JSON
    specs = dict(card.get("networks", {}))
    for name, net in networks.items():
        if name not in specs:
            spec = getattr(net, SPEC_ATTRIBUTE, None)
            if spec is None:
                raise ValueError(f"card['networks'] lacks {name!r} and the network was not built by "
                                 "build_network: give its class and constructor args")
            specs[name] = spec
    unknown = set(specs) - set(networks)
    if unknown:
        raise ValueError(f"card['networks'] names {sorted(unknown)} but no such network was given")
    card["networks"] = specs
    card.setdefault("intended_use", INTENDED_USE)
    card["weights_sha256"] = ""
    validate_card(card, folder)
    with staging_dir(folder) as stage:
        weights = stage / WEIGHTS_NAME
        save_file(state_dict_of(networks), str(weights),
                  metadata={"model_id": str(card["id"]), "format": "pt"})
        card["weights_sha256"] = sha256_file(weights)
        (stage / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log.info("saved model %s to %s", card["id"], folder)
    return folder


def model_search_dirs() -> list[Path]:
    dirs = [SHIPPED_MODELS_DIR]
    for p in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep):
        if p:
            dirs.append(Path(p))
    return dirs


def list_models() -> list[dict]:
    """Shipped (and PETDIFFUSION_MODEL_PATH) models: id, task, version, path, intended use."""
    found = []
    for d in model_search_dirs():
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if not (sub / CARD_NAME).is_file():
                continue
            try:
                card = read_card(sub)
            except ModelError as exc:
                log.warning("skipping %s: %s", sub, exc)
                continue
            found.append({"id": card["id"], "task": card["task"], "version": card["version"],
                          "path": str(sub), "intended_use": card["intended_use"]})
    return found


def resolve_model(folder_or_id: str | os.PathLike) -> Path:
    """A folder path as given, else a model id looked up in the model search folders."""
    path = Path(folder_or_id)
    if (path / CARD_NAME).is_file():
        return path
    for d in model_search_dirs():
        if (d / str(folder_or_id) / CARD_NAME).is_file():
            return d / str(folder_or_id)
    known = ", ".join(m["id"] for m in list_models()) or "none"
    raise ModelError(f"{folder_or_id}: no such model folder or model id (shipped models: {known})")


def verify_weights(folder: str | Path, card: dict) -> Path:
    """Check model.safetensors against the card's sha256; ModelError with a clear message if not."""
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing")
    actual = sha256_file(weights)
    if actual != card["weights_sha256"]:
        raise ModelError(
            f"{weights}: sha256 mismatch (card says {card['weights_sha256']}, file has {actual}); "
            "the weights were changed or corrupted after the model was saved; refusing to load "
            "them. Re-download or re-export the model.")
    return weights


def load_model_folder(folder_or_id: str | os.PathLike, device: str | torch.device = "cpu",
                      task: str | None = None) -> tuple[dict[str, nn.Module], dict]:
    """Networks (in eval mode, on ``device``) and the card of a model folder or shipped model id.

    ``task``: the task the caller runs; a card for another task is refused before any weights load
    (a user's own model folder given to the wrong panel)."""
    folder = resolve_model(folder_or_id)
    card = read_card(folder)
    if task is not None and card.get("task") != task:
        raise ModelError(f"{folder_or_id}: the model is for task {card.get('task')!r}, not {task!r}")
    weights = verify_weights(folder, card)
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from exc
    networks: dict[str, nn.Module] = {}
    for name, spec in card["networks"].items():
        net = build_network(spec, folder / CARD_NAME)
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{weights}: weights of network {name!r} do not fit the class and "
                             f"arguments in the card: {exc}") from exc
        networks[name] = net.to(device).eval()
    extra = {k.split(".", 1)[0] for k in tensors} - set(networks)
    if extra:
        raise ModelError(f"{weights}: holds weights for networks {sorted(extra)} the card does not name")
    return networks, card
