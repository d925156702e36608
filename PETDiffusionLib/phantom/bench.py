"""`petdiffusion bench phantom`: seconds for one 128x128x160 case with every derived image."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from PETDiffusionLib.phantom.case import PhantomConfig, simulate_case, write_case
from PETDiffusionLib.physics.acquisition import AcquisitionConfig
from PETDiffusionLib.physics.projector import ProjectorGeometry, get_projector


def bench_phantom_case(args=None) -> str:
    torch.set_num_threads(1)
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    cfg = PhantomConfig()
    acq = AcquisitionConfig()
    t = time.perf_counter()
    get_projector(ProjectorGeometry(cfg.size, 512.0 / cfg.size, acq.n_angles, acq.n_subsets))
    lines = [f"projector matrix built once per process: {time.perf_counter() - t:.2f} s"]
    for r in range(repeat):
        t = time.perf_counter()
        case = simulate_case(12345, r, cfg)
        t_sim = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as d:
            t2 = time.perf_counter()
            write_case(case, Path(d), 12345, r, cfg)
            t_write = time.perf_counter() - t2
        lines.append(f"case {r}: simulate {t_sim:.1f} s (phantom {case.info['seconds']['phantom']:.1f} s), "
              f"write {t_write:.1f} s, total {t_sim + t_write:.1f} s, 1 torch thread, "
              f"{len(case.images) + 2} images")
    return "\n".join(lines)
