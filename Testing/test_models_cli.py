"""`petdiffusion models`, `train` and `evaluate` command lines (in-process)."""
from __future__ import annotations

import json

import pytest

from PETDiffusionLib.cli.main import main
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import MODEL_PATH_ENV, save_model_folder


def test_models_lists_shows_and_verifies(tmp_path, monkeypatch, capsys):
    folder = save_model_folder(tmp_path / "cli-model",
                               {"net": build_network({"class": "torch.nn.Conv2d",
                                                      "args": {"in_channels": 1, "out_channels": 1,
                                                               "kernel_size": 1}})},
                               {"id": "cli-model", "task": "ct-to-pet", "version": "1.0"})
    monkeypatch.setenv(MODEL_PATH_ENV, str(tmp_path))
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"id": "cli-model", "task": "ct-to-pet", "version": "1.0"}.items() <= \
        next(m for m in listed if m["id"] == "cli-model").items()
    assert main(["models", "show", "cli-model"]) == 0
    assert json.loads(capsys.readouterr().out)["intended_use"] == "research model, not for diagnosis"
    assert main(["models", "verify", str(folder)]) == 0
    assert "weights match" in capsys.readouterr().out
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert main(["models", "verify", "cli-model"]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err


def test_train_with_a_missing_config_names_the_file(tmp_path, capsys):
    assert main(["train", "denoise-segment", "--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: config file not found" in capsys.readouterr().err


def test_evaluate_requires_a_cohort(capsys):
    # the default (cohort) mode needs --cohort; the other ct-to-pet modes do not (evaluate.py)
    assert main(["evaluate", "ct-to-pet"]) == 2
    assert "--mode cohort needs --cohort" in capsys.readouterr().err
