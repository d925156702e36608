"""What every sampler shares: the result type, seeded noise, N samples -> mean and per-voxel std.

Every diffusion call in this project can draw ``n_samples`` samples and return their mean and
per-voxel standard deviation: an uncertainty map that none of the seed papers gives (issue 5).
Noise is drawn on the CPU from one ``torch.Generator`` seeded with ``seed`` and then moved to the
device, so the same seed gives the same noise on every device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]
"""A callable(fraction in [0, 1]); it may raise :class:`~PETDiffusionLib.errors.Cancelled`."""


@dataclass
class SampleResult:
    """``mean`` and ``std`` have the shape of one sample [B, C, ...]; ``samples`` is [N, B, C, ...].

    ``std`` is the per-voxel standard deviation over the N samples (population std, zero for N=1).
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (device-independent) and moved to ``like``'s device."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(
        device=like.device, dtype=like.dtype)


def report(progress: ProgressFn | None, fraction: float) -> None:
    """Report progress; the callable may raise Cancelled, which propagates."""
    if progress is not None:
        progress(float(fraction))


def draw_samples(one_sample: Callable[[torch.Generator, ProgressFn], torch.Tensor], n_samples: int,
                 seed: int, progress: ProgressFn | None = None) -> SampleResult:
    """Run ``one_sample(generator, progress_of_this_sample)`` N times with one seeded generator.

    Samples are drawn one after another (memory of one sample), from one generator so that the
    same seed reproduces all N samples and different seeds give different ones.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, not {n_samples}")
    gen = make_generator(seed)
    samples = []
    for i in range(n_samples):
        def sub(fraction: float, i: int = i) -> None:
            report(progress, (i + fraction) / n_samples)
        samples.append(one_sample(gen, sub))
    report(progress, 1.0)
    stack = torch.stack(samples)
    return SampleResult(mean=stack.mean(0), std=stack.std(0, unbiased=False), samples=stack)


__all__ = ["SampleResult", "ProgressFn", "draw_samples", "make_generator", "randn", "report"]
