"""Model folders: card.json + model.safetensors, the hash checked on every load."""
from __future__ import annotations

import json

import pytest
import torch

from PETDiffusionLib.errors import ModelError
from PETDiffusionLib.models.card import INTENDED_USE, build_network
from PETDiffusionLib.models.registry import (MODEL_PATH_ENV, list_models, load_model_folder,
                                             save_model_folder, sha256_file)
from PETDiffusionLib.tasks.runner import load_task_model

UNET = {"class": "monai.networks.nets.DiffusionModelUNet",
        "args": {"spatial_dims": 2, "in_channels": 2, "out_channels": 1, "channels": [8, 8],
                 "attention_levels": [False, False], "num_res_blocks": 1, "norm_num_groups": 4}}
CONV = {"class": "torch.nn.Conv2d", "args": {"in_channels": 1, "out_channels": 1, "kernel_size": 3}}


def card(**extra) -> dict:
    return {"id": "tiny-test", "task": "denoise-segment", "version": "0.0.1",
            "preprocessing": {"suv_cutoff": 20.0}, **extra}


def test_round_trip_restores_every_network_and_the_card(tmp_path):
    nets = {"denoiser": build_network(UNET), "revision": build_network(CONV)}
    folder = save_model_folder(tmp_path / "tiny", nets, card())
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors"]
    loaded, c = load_model_folder(folder)
    assert c["intended_use"] == INTENDED_USE and c["preprocessing"] == {"suv_cutoff": 20.0}
    assert c["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert c["networks"]["denoiser"] == UNET
    for name, net in nets.items():
        assert not loaded[name].training
        for (k1, v1), (k2, v2) in zip(net.state_dict().items(), loaded[name].state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2)
    x, t = torch.randn(1, 2, 16, 16), torch.tensor([3])
    with torch.no_grad():
        assert torch.equal(nets["denoiser"].eval()(x, t), loaded["denoiser"](x, t))


def test_one_changed_byte_is_refused_with_a_clear_message(tmp_path):
    folder = save_model_folder(tmp_path / "m", {"net": build_network(CONV)}, card())
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 mismatch.*changed or corrupted"):
        load_model_folder(folder)


def test_card_without_required_keys_or_with_foreign_class_is_refused(tmp_path):
    folder = save_model_folder(tmp_path / "m", {"net": build_network(CONV)}, card())
    c = json.loads((folder / "card.json").read_text())
    c["networks"]["net"]["class"] = "os.system"
    (folder / "card.json").write_text(json.dumps(c))
    with pytest.raises(ModelError, match="refusing to import"):
        load_model_folder(folder)
    del c["task"]
    (folder / "card.json").write_text(json.dumps(c))
    with pytest.raises(ModelError, match="lacks task"):
        load_model_folder(folder)


def test_unknown_model_id_names_the_shipped_models(tmp_path):
    with pytest.raises(ModelError, match="no such model folder or model id"):
        load_model_folder("no-such-model")


def test_models_on_the_model_path_are_listed_and_load_by_id(tmp_path, monkeypatch):
    save_model_folder(tmp_path / "tiny-test", {"net": build_network(CONV)}, card())
    monkeypatch.setenv(MODEL_PATH_ENV, str(tmp_path))
    listed = [m for m in list_models() if m["id"] == "tiny-test"]
    assert listed and listed[0]["task"] == "denoise-segment"
    nets, c = load_model_folder("tiny-test")
    assert c["id"] == "tiny-test" and isinstance(nets["net"], torch.nn.Conv2d)


def test_failed_save_leaves_no_folder_behind(tmp_path):
    net = torch.nn.Linear(2, 2)  # not built by build_network and no spec in the card
    with pytest.raises(ValueError, match="lacks 'net'"):
        save_model_folder(tmp_path / "bad", {"net": net}, card())
    assert not (tmp_path / "bad").exists()


def test_builder_specs_round_trip_through_a_model_folder(tmp_path):
    from PETDiffusionLib.networks.builders import autoencoder_kl_spec, build, diffusion_unet_spec
    nets = {"unet": build(diffusion_unet_spec(2, 3, channels=(8, 16), norm_num_groups=4)),
            "autoencoder": build(autoencoder_kl_spec(2, 1, channels=(8, 16), norm_num_groups=4))}
    loaded, c = load_model_folder(save_model_folder(tmp_path / "b", nets, card()))
    assert c["networks"]["unet"]["args"]["in_channels"] == 3
    z = loaded["autoencoder"].encode_stage_2_inputs(torch.zeros(1, 1, 16, 16))
    assert z.shape == (1, 4, 8, 8)
    assert loaded["unet"](torch.zeros(1, 3, 16, 16), torch.tensor([1])).shape == (1, 1, 16, 16)


def test_a_model_for_another_task_is_refused_before_its_weights_load(tmp_path):
    folder = save_model_folder(tmp_path / "tiny", {"revision": build_network(CONV)}, card())
    nets, c = load_model_folder(folder, task="denoise-segment")
    assert c["task"] == "denoise-segment" and set(nets) == {"revision"}
    with pytest.raises(ModelError, match="the model is for task 'denoise-segment', not 'ct-to-pet'"):
        load_model_folder(folder, task="ct-to-pet")


@pytest.mark.parametrize("task", ["ct-to-pet", "restore", "dual-timepoint-ac", "synthesize",
                                  "denoise-segment"])
def test_every_task_refuses_a_model_folder_of_another_task(tmp_path, task):
    other = "ct-to-pet" if task != "ct-to-pet" else "denoise-segment"
    folder = save_model_folder(tmp_path / "other", {"revision": build_network(CONV)},
                               {**card(), "task": other})
    with pytest.raises(ModelError, match=f"not '{task}'"):
        load_task_model(task, folder)
