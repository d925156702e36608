"""Cubic B-spline upsampling by an integer factor, in torch (separable, one axis at a time).

Interpolating cubic B-splines (Unser, "Splines: a perfect fit for signal and image processing",
IEEE Signal Processing Magazine 16(6), 1999): the samples are first turned into spline coefficients
by the inverse of the filter [1, 4, 1] / 6, whose impulse response is ``-6 z1 / (1 - z1^2) z1^|k|``
with the pole ``z1 = sqrt(3) - 2`` (truncated at PREFILTER_TAPS, where ``|z1|^10 < 2e-6``), and the
spline is then evaluated at the upsampled positions. The positions are those of
``scipy.ndimage.zoom(order=3, grid_mode=True, mode="nearest")`` (voxel edges aligned, as
``F.interpolate(align_corners=False)``), which it matches to about 4e-6 (Testing), at a fraction of
its time (the six 48 x 32 x 32 organ channels to 4 mm on this CPU with both cores busy: 1.9 s
against 9-14 s).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Z1 = math.sqrt(3.0) - 2.0
"""The pole of the cubic B-spline prefilter (Unser 1999, Table I)."""
PREFILTER_TAPS = 10
"""Half-length of the truncated prefilter: |z1|^10 = 1.9e-6 of the centre tap."""


def _bspline3(t: float) -> float:
    """The centred cubic B-spline beta^3(t)."""
    t = abs(t)
    if t < 1.0:
        return 2.0 / 3.0 - t * t + t ** 3 / 2.0
    if t < 2.0:
        return (2.0 - t) ** 3 / 6.0
    return 0.0


def _upsample_axis(x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    moved = x.movedim(dim, -1)
    shape = moved.shape
    rows = moved.reshape(-1, 1, shape[-1]).float()
    prefilter = torch.tensor([Z1 ** abs(k) for k in range(-PREFILTER_TAPS, PREFILTER_TAPS + 1)])
    prefilter = prefilter * (-6.0 * Z1 / (1.0 - Z1 * Z1))
    # coefficients with two extra on each side (edge-replicated samples), for the 5-tap evaluation
    pad = PREFILTER_TAPS + 2
    coef = F.conv1d(F.pad(rows, (pad, pad), mode="replicate"), prefilter.view(1, 1, -1).to(rows))
    # output sample j = factor * i + p lies at input coordinate i + (p + 0.5) / factor - 0.5
    taps = torch.tensor([[_bspline3((p + 0.5) / factor - 0.5 - m) for m in range(-2, 3)]
                         for p in range(factor)])
    out = F.conv1d(coef, taps.view(factor, 1, 5).to(rows))          # [rows, factor, n]
    out = out.permute(0, 2, 1).reshape(*shape[:-1], shape[-1] * factor)
    return out.movedim(-1, dim).to(x.dtype)


def bspline_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[C, *spatial] -> [C, *(factor * spatial)]: cubic B-spline interpolation of every channel."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    for dim in range(1, x.dim()):
        x = _upsample_axis(x, dim, int(factor))
    return x
