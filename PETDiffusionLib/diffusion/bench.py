"""`petdiffusion bench samplers` and `petdiffusion bench windows`: the figures issue 5 asks for.

samplers: time per network evaluation and per sample for every sampler at its default steps, with
a small MONAI DiffusionModelUNet (untrained: timing does not depend on the weights).
windows: peak memory of one 3D denoising step (one network call over the whole volume) with and
without sliding windows, for several volume and window sizes. On CUDA the peak is
``torch.cuda.max_memory_allocated``; on the CPU each configuration runs in its own process and the
peak is that process's peak resident set size (``VmHWM``) minus a process that builds the
same network without running it.

These functions write their tables to stdout: they are the output of a command.
"""
from __future__ import annotations

import subprocess
import sys
import time

import torch

from PETDiffusionLib.device import choose_device
from PETDiffusionLib.diffusion.bridge import BrownianBridge
from PETDiffusionLib.diffusion.ddpm import DEFAULT_STEPS, ConditionalDiffusion
from PETDiffusionLib.diffusion.edm import DEFAULT_STEPS as EDM_STEPS
from PETDiffusionLib.diffusion.edm import EDM
from PETDiffusionLib.diffusion.windows import WindowedNet
from PETDiffusionLib.networks.builders import build, diffusion_unet_spec


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def unet(spatial_dims: int, in_channels: int, channels=(32, 64, 64)):
    return build(diffusion_unet_spec(spatial_dims, in_channels, 1, channels))


class CountingNet:
    """Wraps net(x, t), counting calls and synchronising CUDA so that timings are real."""

    def __init__(self, net, device: torch.device):
        self.net, self.device, self.calls = net, device, 0

    def __call__(self, x, t):
        self.calls += 1
        out = self.net(x, t)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out


def bench_samplers(args) -> int:

    device = choose_device(getattr(args, "device", None))
    size = int(getattr(args, "size", 0) or (128 if device.type == "cuda" else 64))
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    torch.manual_seed(0)
    net = unet(2, 2).to(device).eval()
    cond = torch.randn(1, 1, size, size, device=device)
    counting = CountingNet(net, device)
    with torch.no_grad():  # warm-up, then time single evaluations
        for _ in range(3):
            counting(torch.cat([cond, cond], 1), torch.tensor([10], device=device))
        t0 = time.perf_counter()
        n_eval = 10
        for _ in range(n_eval):
            counting(torch.cat([cond, cond], 1), torch.tensor([10], device=device))
        per_eval = (time.perf_counter() - t0) / n_eval
    params = sum(p.numel() for p in net.parameters())
    _out(f"device: {device}; network: MONAI DiffusionModelUNet 2D, channels (32, 64, 64), "
         f"{params / 1e6:.2f} M parameters; input 1x2x{size}x{size}")
    _out(f"one network evaluation: {per_eval * 1e3:.1f} ms")
    _out(f"{'sampler':28s} {'steps':>5s} {'evals':>5s} {'s/sample':>9s} {'ms/eval':>8s}")

    ddpm = ConditionalDiffusion(1000, "cosine")
    bridge = BrownianBridge(1000)
    edm = EDM()
    runs = [("ddim (Song 2021)", DEFAULT_STEPS["ddim"],
             lambda: ddpm.sample(counting, cond, sampler="ddim")),
            ("ddpm (Ho 2020)", DEFAULT_STEPS["ddpm"],
             lambda: ddpm.sample(counting, cond, sampler="ddpm")),
            ("dpmpp2m (Lu 2022)", DEFAULT_STEPS["dpmpp2m"],
             lambda: ddpm.sample(counting, cond, sampler="dpmpp2m")),
            # the same step size over 30 % of the chain: 15 steps instead of 50
            ("ddim from noised input 0.3", 15,
             lambda: ddpm.sample(counting, cond, steps=15, sampler="ddim", start_image=cond,
                                 start_fraction=0.3)),
            ("bridge (BBDM/CPDM)", 200, lambda: bridge.sample(counting, cond, cond=cond)),
            ("edm heun (Karras 2022)", EDM_STEPS,
             lambda: edm.sample(lambda x, c: counting(x, c), cond=cond))]
    for name, steps, fn in runs:
        times = []
        for _ in range(repeat):
            counting.calls = 0
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best = min(times)
        _out(f"{name:28s} {steps:5d} {counting.calls:5d} {best:9.2f} "
             f"{best / counting.calls * 1e3:8.1f}")
    return 0


# ---------------------------------------------------------------------------------------- windows
WINDOW_NET_CHANNELS = (8, 16)


def _window_step(volume: int, window: int, device: torch.device, run: bool = True) -> None:
    torch.manual_seed(0)
    net = unet(3, 2, WINDOW_NET_CHANNELS).to(device).eval()
    if not run:
        return
    x = torch.randn(1, 2, volume, volume, volume, device=device)
    t = torch.tensor([500], device=device)
    call = net if window <= 0 else WindowedNet(net, (window,) * 3, overlap=0.25, batch_size=1)
    with torch.no_grad():
        call(x, t)


def _child_peak_mb(volume: int, window: int, run: bool) -> float:
    code = ("import sys, torch; torch.set_num_threads(2); "
            "from PETDiffusionLib.diffusion.bench import _window_step; "
            f"_window_step({volume}, {window}, torch.device('cpu'), {run}); "
            # VmHWM (proc(5)), the child's own peak: ru_maxrss survives exec and, under the vfork
            # that subprocess uses, starts at the parent's resident size (batch/measure.py)
            "print([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0])")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"window benchmark child failed (volume {volume}, window {window})")
    return int(out.split()[-1]) / 1024.0  # kilobytes


UNWINDOWED_MAX = {"cpu": 48, "cuda": 128}
"""Largest volume edge run without windows: MONAI's DiffusionModelUNet always has self-attention in
its middle block, whose memory is quadratic in the bottleneck's voxel count (measured on the CPU:
0.3 GB at 32^3, 3.0 GB at 48^3, more than 16 GB at 64^3, where the run was stopped)."""


def bench_windows(args) -> int:
    device = choose_device(getattr(args, "device", None))
    volumes = [32, 48, 64, 96] if device.type == "cpu" else [64, 128, 192, 256]
    windows = [16, 32, 0] if device.type == "cpu" else [32, 64, 0]
    _out(f"device: {device}; network: MONAI DiffusionModelUNet 3D, channels {WINDOW_NET_CHANNELS}; "
         "one network call over a 2-channel cubic volume; window overlap 0.25, Gaussian blending")
    _out("peak memory in MB of the network step (window 'none' = the whole volume at once; "
         "skipped where its bottleneck self-attention would not fit, see UNWINDOWED_MAX)")
    header = f"{'volume':>8s} " + " ".join(f"{('none' if w == 0 else f'{w}^3'):>10s}" for w in windows)
    _out(header)
    base = _child_peak_mb(volumes[0], 0, run=False) if device.type == "cpu" else 0.0
    for v in volumes:
        cells = []
        for w in windows:
            if w == 0 and v > UNWINDOWED_MAX.get(device.type, 48):
                cells.append(f"{'skipped':>10s}")
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                start = torch.cuda.memory_allocated(device)
                _window_step(v, w, device)
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
            else:
                peak = _child_peak_mb(v, w, run=True) - base
            cells.append(f"{peak:10.0f}")
        _out(f"{f'{v}^3':>8s} " + " ".join(cells))
    return 0
