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
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys() and "ema.weight" in w0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert (tmp_path / "model" / "card.json").is_file()  # exported once, by rank 0
    assert (tmp_path / "checkpoint" / "state.pt").is_file()
