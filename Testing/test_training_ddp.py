"""DDP through torchrun: two CPU processes on the gloo backend train one tiny model together."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent('''
    import os, sys
    import torch
    from safetensors.torch import save_file
    from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
    from PETDiffusionLib.models.card import build_network
    from PETDiffusionLib.training.loop import Trainer, TrainConfig

    torch.set_num_threads(1)
    run_dir = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    low = torch.rand(8, 1, 8, 8, generator=g)
    data = torch.utils.data.StackDataset(pet_low=low, pet=2 * low)
    diffusion = ConditionalDiffusion(num_train_timesteps=20)
    net = build_network({"class": "torch.nn.Conv2d", "args": {"in_channels": 2, "out_channels": 1,
                                                              "kernel_size": 3, "padding": 1}})
    # each rank starts from different weights: DDP must broadcast rank 0's
    torch.manual_seed(int(os.environ["RANK"]) + 100)
    torch.nn.init.normal_(net.weight)

    def loss_fn(batch, nets):
        conv = nets["denoiser"]
        loss = diffusion.training_loss(lambda x, t: conv(x), batch["pet"], batch["pet_low"])
        return loss, {}

    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=2, grad_accum=2, progress_bar=False,
                      device="cpu", seed=int(os.environ["RANK"]))
    trainer = Trainer(cfg, {"denoiser": net}, loss_fn, data, run_dir=run_dir)
    assert trainer.world_size == 2
    trainer.fit()
    rank = trainer.rank
    state = {k: v.contiguous() for k, v in trainer.networks["denoiser"].state_dict().items()}
    state.update({"ema." + k: v.contiguous() for k, v in trainer.ema["denoiser"].state_dict().items()})
    save_file(state, os.path.join(run_dir, f"rank{rank}.safetensors"))
    trainer.export(os.path.join(run_dir, "model"), {"id": "ddp", "task": "denoise-segment",
                                                     "version": "0"})
    trainer.close()
''')


def test_two_gloo_processes_finish_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys() and "ema.weight" in w0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert (tmp_path / "model" / "card.json").is_file()  # exported once, by rank 0
    assert (tmp_path / "checkpoint" / "state.pt").is_file()


STAGES_WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    import numpy as np
    import torch
    from PETDiffusionLib.models.card import build_network
    from PETDiffusionLib.training.loop import (Stage, Trainer, TrainConfig, init_process_group,
                                               run_stages)

    torch.set_num_threads(1)
    run_dir = Path(sys.argv[1])
    rank = int(os.environ["RANK"])

    def prepare(folder):
        # written by rank 0 only; the training stage of every rank reads it
        with open(folder / "calls.txt", "a") as f:
            f.write(f"rank {rank}\\n")
        np.save(folder / "data.npy", np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 1, 4, 4))
        return {"cases": 4}

    def train(folder):
        data = torch.from_numpy(np.load(run_dir / "prepare" / "data.npy"))
        net = build_network({"class": "torch.nn.Conv2d", "args": {"in_channels": 1,
                             "out_channels": 1, "kernel_size": 1}})
        def batch_fn(step, rng):
            return data[rng.integers(0, 4, 2)]
        def loss_fn(batch, nets):
            return (nets["net"](batch) - 2 * batch).abs().mean(), {}
        t = Trainer(TrainConfig(max_steps=2, progress_bar=False, device="cpu"), {"net": net},
                    loss_fn, batch_fn, run_dir=folder)
        t.fit()
        w = float(t.networks["net"].weight.sum())
        (folder / f"weight_rank{rank}.txt").write_text(repr(w))
        return {"steps": t.step}

    init_process_group("cpu")  # joined first, as torchrun scripts often do; then one rank is late:
    if rank == 1:              # it must not find rank 0's prepare summary and skip that stage
        import time
        time.sleep(3)
    out = run_stages(run_dir, [Stage("prepare", prepare, rank0_only=True), Stage("train", train)])
    (run_dir / f"out_rank{rank}.json").write_text(json.dumps(out))
''')


def test_stages_under_torchrun_prepare_once_and_train_on_every_rank(tmp_path):
    script = tmp_path / "stages.py"
    script.write_text(STAGES_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "prepare" / "calls.txt").read_text() == "rank 0\n"     # prepared once
    import json
    outs = [json.loads((run / f"out_rank{r}.json").read_text()) for r in (0, 1)]
    assert outs[0]["prepare"]["cases"] == outs[1]["prepare"]["cases"] == 4
    assert outs[0]["train"]["steps"] == outs[1]["train"]["steps"] == 2
    w = [(run / "train" / f"weight_rank{r}.txt").read_text() for r in (0, 1)]
    assert w[0] == w[1]                                                   # DDP kept them equal
    assert json.loads((run / "train" / "summary.json").read_text())["steps"] == 2
