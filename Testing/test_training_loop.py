"""The Trainer: a few steps of a tiny conditional diffusion model, checkpoint, resume, export."""
from __future__ import annotations

import json

import pytest
import torch

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.models.card import build_network
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.training.loop import TrainConfig, Trainer, warmup_cosine

NET = {"class": "torch.nn.Conv2d",
       "args": {"in_channels": 2, "out_channels": 1, "kernel_size": 3, "padding": 1}}


class TimeIgnoringConv(torch.nn.Module):
    """Adapts a Conv2d to the net(x, t) calling convention."""

    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def __call__(self, x, t):  # noqa: D401 - thin adapter
        return self.conv(x)


def tiny_data(n: int = 6) -> torch.utils.data.Dataset:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 1, 16, 16, generator=g)
    full = 2 * low + 0.05 * torch.randn(n, 1, 16, 16, generator=g)
    return torch.utils.data.StackDataset(pet_low=low, pet=full)


class Crash(Exception):
    pass


def make_trainer(run_dir, max_steps: int, val_fn=None, crash_after_micro_steps: int = 0) -> Trainer:
    torch.manual_seed(0)
    diffusion = ConditionalDiffusion(num_train_timesteps=50)
    calls = [0]

    def loss_fn(batch, nets):
        calls[0] += 1
        if crash_after_micro_steps and calls[0] > crash_after_micro_steps:
            raise Crash("simulated crash")
        loss = diffusion.training_loss(TimeIgnoringConv(nets["denoiser"]), batch["pet"],
                                       batch["pet_low"], loss="l1")
        return loss, {"l1": loss.item()}
    cfg = TrainConfig(lr=1e-2, max_steps=max_steps, batch_size=2, grad_accum=2, warmup=2,
                      ema_decay=0.9, ckpt_every=3, val_every=3, progress_bar=False, seed=1)
    return Trainer(cfg, {"denoiser": build_network(NET)}, loss_fn, tiny_data(), val_fn=val_fn,
                   run_dir=run_dir)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.networks["denoiser"].state_dict().items()}


def test_warmup_then_cosine_learning_rate():
    assert warmup_cosine(0, 4, 100, 0.0) == 0.25 and warmup_cosine(3, 4, 100, 0.0) == 1.0
    assert abs(warmup_cosine(52, 4, 100, 0.0) - 0.5) < 1e-9  # half way through the cosine
    assert warmup_cosine(100, 4, 100, 0.1) == 0.1


def test_training_resumes_exactly_where_it_stopped_and_exports_a_loadable_model(tmp_path):
    straight = make_trainer(tmp_path / "a", max_steps=6)
    straight.fit()
    w_straight = weights(straight)

    seen_val = []
    # a run that crashes in its 5th optimizer step (grad_accum 2: micro-step 9) after the
    # checkpoint and validation of step 3
    first = make_trainer(tmp_path / "b", max_steps=6, crash_after_micro_steps=8,
                         val_fn=lambda nets, step: seen_val.append(step) or {"x": 1.0})
    with pytest.raises(Crash):
        first.fit()
    assert first.step == 4
    assert (tmp_path / "b" / "checkpoint" / "weights.safetensors").is_file()
    assert (tmp_path / "b" / "checkpoint" / "state.pt").is_file()
    resumed = make_trainer(tmp_path / "b", max_steps=6)
    assert resumed.load_checkpoint() == 3
    resumed.step = 0  # fit(resume=True) reloads the checkpoint itself
    resumed.fit(resume=True)
    assert resumed.step == 6
    for k, v in weights(resumed).items():
        assert torch.allclose(v, w_straight[k], atol=1e-6), k
    assert seen_val == [3]  # validation every 3 steps (the end of the resumed run has no val_fn)

    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and "loss" in records[-1]

    folder = resumed.export(tmp_path / "model", {"id": "tiny", "task": "denoise-segment",
                                                  "version": "0.0.1"})
    nets, card = load_model_folder(folder)
    assert card["training"]["steps"] == 6
    for k, v in resumed.ema["denoiser"].state_dict().items():
        assert torch.equal(nets["denoiser"].state_dict()[k], v)
    # the EMA differs from the raw weights (decay 0.9 over 6 steps)
    assert not torch.equal(resumed.ema["denoiser"].weight, resumed.networks["denoiser"].weight)


def test_training_reduces_the_loss(tmp_path):
    t = make_trainer(tmp_path / "c", max_steps=1)
    first = t.fit()["loss"]
    t.config.max_steps, t.config.ckpt_every, t.config.val_every = 30, 0, 0
    last = t.fit()["loss"]
    assert last < first


# ------------------------------------------------------------------ batch functions, steps, stages
from PETDiffusionLib.errors import InputError  # noqa: E402
from PETDiffusionLib.training.loop import Stage, StepInfo, TrainOptions, run_stages  # noqa: E402


def batch_fn(step, rng):
    """Random 8x8 pairs drawn from the step's own generator (as the recipes draw slices)."""
    low = torch.from_numpy(rng.random((2, 1, 8, 8)).astype("float32"))
    return {"pet_low": low, "pet": 2 * low}


def make_fn_trainer(run_dir, max_steps, seen=None, **cfg):
    torch.manual_seed(0)
    net = build_network(NET)

    def loss_fn(batch, nets, info: StepInfo):
        if seen is not None:
            seen.append((info.step, round(info.progress, 4), float(batch["pet_low"].sum())))
        x = torch.cat([batch["pet_low"], batch["pet_low"]], 1)
        pred = nets["denoiser"](x)
        noise = torch.randn(pred.shape, generator=info.generator)
        return (pred - batch["pet"] + 0 * noise).abs().mean(), {}
    conf = TrainConfig(lr=1e-2, max_steps=max_steps, ckpt_every=2, progress_bar=False, seed=3, **cfg)
    return Trainer(conf, {"denoiser": net}, loss_fn, batch_fn, run_dir=run_dir)


def test_a_batch_function_sees_the_same_data_per_step_with_or_without_a_resume(tmp_path):
    seen_a = []
    a = make_fn_trainer(tmp_path / "a", 4, seen_a, min_lr_ratio=1.0)  # constant lr: a 2-step run
    a.fit()                                                            # is a prefix of a 4-step one
    b = make_fn_trainer(tmp_path / "b", 2, min_lr_ratio=1.0)
    b.fit()
    seen_b = []
    b2 = make_fn_trainer(tmp_path / "b", 4, seen_b, min_lr_ratio=1.0)
    b2.fit(resume=True)
    assert [s[0] for s in seen_a] == [0, 1, 2, 3]
    assert seen_b == seen_a[2:]                      # steps 2 and 3: same progress, same data
    assert seen_a[1][1] == 0.25                      # progress = step / max_steps
    for k, v in a.networks["denoiser"].state_dict().items():
        assert torch.allclose(v, b2.networks["denoiser"].state_dict()[k], atol=1e-6), k


def test_a_run_folder_with_a_checkpoint_needs_resume(tmp_path):
    make_fn_trainer(tmp_path / "r", 2).fit()
    with pytest.raises(InputError, match="--resume"):
        make_fn_trainer(tmp_path / "r", 4).fit()


def test_per_network_learning_rates_and_frozen_networks(tmp_path):
    nets = {"a": build_network(NET), "b": build_network(NET), "c": build_network(NET)}
    frozen_before = nets["c"].weight.clone()

    def loss_fn(batch, n):
        x = torch.cat([batch["pet_low"]] * 2, 1)
        return sum(n[k](x).abs().mean() for k in ("a", "b", "c")), {}
    conf = TrainConfig(lr=1e-3, lr_per_network={"b": 5e-2}, frozen=["c"], max_steps=2,
                       progress_bar=False, warmup=0, min_lr_ratio=1.0)
    t = Trainer(conf, nets, loss_fn, batch_fn, run_dir=tmp_path / "g")
    assert {g["name"]: g["lr"] for g in t.optimizer.param_groups} == {"a": 1e-3, "b": 5e-2}
    t.fit()
    assert torch.equal(t.networks["c"].weight, frozen_before)
    with pytest.raises(ValueError, match="unknown networks"):
        Trainer(TrainConfig(frozen=["z"], progress_bar=False), nets, loss_fn, batch_fn,
                run_dir=tmp_path / "h")


def test_the_minute_limit_stops_at_a_checkpoint_that_resume_continues(tmp_path):
    t = make_fn_trainer(tmp_path / "m", 50, max_minutes=1e-9)
    t.fit()
    assert t.step == 0 and (tmp_path / "m" / "checkpoint" / "state.pt").is_file()
    t2 = make_fn_trainer(tmp_path / "m", 3)
    t2.fit(resume=True)
    assert t2.step == 3


def test_stages_run_once_in_their_own_folders_and_only_reruns_the_chosen(tmp_path):
    calls = []

    def make(name, value):
        def run(folder):
            calls.append(name)
            assert folder == tmp_path / "run" / name.replace(":", "_")
            return {"value": value}
        return Stage(name, run)
    stages = [make("prepare", 1), make("bridge:cpdm", 2)]
    out = run_stages(tmp_path / "run", stages)
    assert out["bridge:cpdm"]["value"] == 2 and calls == ["prepare", "bridge:cpdm"]
    assert json.loads((tmp_path / "run" / "bridge_cpdm" / "summary.json").read_text())["value"] == 2
    run_stages(tmp_path / "run", stages)
    assert calls == ["prepare", "bridge:cpdm"]          # both done: skipped
    run_stages(tmp_path / "run", stages, only=["bridge:cpdm"])
    assert calls[-1] == "bridge:cpdm" and len(calls) == 3
    with pytest.raises(InputError, match="unknown stage"):
        run_stages(tmp_path / "run", stages, only=["nope"])
    assert TrainOptions("configs/x.json", stages=["bridge:cpdm"]).command("ct-to-pet") == \
        "petdiffusion train ct-to-pet --config configs/x.json --stage bridge:cpdm"
