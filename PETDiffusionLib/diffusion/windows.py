"""Running networks over volumes larger than they can see at once.

- 2.5D (AMDiff, CPDM, MFdiff, STMDiff work slice-wise): a 2D network over a volume, each axial slice
  with its neighbours as extra channels (:func:`slices_25d`), slices in batches (:func:`run_slicewise`).
- 3D (AMDiff 128^3 patches, TotalGen super-resolution patches): :class:`WindowedNet` wraps a network
  ``net(x, t)`` so that each call runs window by window with overlap and Gaussian blending. A
  sampler calls it at every denoising step and itself sees the whole volume, so network memory is
  bounded by the window, not the volume.

The Gaussian blending weights come from MONAI (``compute_importance_map``, the map that
``sliding_window_inference`` uses). The window loop is written here because each window can carry a
``margin`` of context that is cropped off after the network call: for a network whose receptive
field radius is at most ``margin`` the windowed result equals the unwindowed one exactly, which
MONAI's inferer (no margin) cannot give. A network with global operations (MONAI's
DiffusionModelUNet always has self-attention in its middle block) sees less context per window, so
its windowed output is an approximation that improves with larger windows and overlap.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map

from PETDiffusionLib.diffusion.sampling import ProgressFn, report

log = logging.getLogger(__name__)

GAUSSIAN_SIGMA_SCALE = 0.125
"""Gaussian blending sigma as a fraction of the window size: MONAI's sliding_window_inference
default (sigma_scale=0.125)."""


def slices_25d(volume: torch.Tensor, context: int) -> torch.Tensor:
    """[Z, Y, X] or [C, Z, Y, X] -> [Z, C*(2k+1), Y, X] with k = ``context``.

    Channel order: for each input channel c, slices z-k ... z+k (channel c*(2k+1) + k is slice z
    itself). Slices beyond the ends replicate the first/last slice.
    """
    if volume.dim() == 3:
        volume = volume[None]
    if volume.dim() != 4:
        raise ValueError(f"slices_25d expects [Z,Y,X] or [C,Z,Y,X], got shape {tuple(volume.shape)}")
    if context < 0:
        raise ValueError(f"context must be >= 0, not {context}")
    c, z = volume.shape[:2]
    offsets = torch.arange(-context, context + 1, device=volume.device)
    idx = (torch.arange(z, device=volume.device)[:, None] + offsets[None]).clamp(0, z - 1)  # [Z, 2k+1]
    out = volume[:, idx]  # [C, Z, 2k+1, Y, X]
    return out.permute(1, 0, 2, 3, 4).reshape(z, c * (2 * context + 1), *volume.shape[2:])


def run_slicewise(fn: Callable[..., torch.Tensor], inputs: torch.Tensor | Sequence[torch.Tensor],
                  batch_size: int, progress: ProgressFn | None = None) -> torch.Tensor:
    """Apply ``fn`` to consecutive batches along dim 0 of ``inputs`` and concatenate the results.

    ``inputs`` is one tensor [Z, ...] or a sequence of tensors sharing dim 0 (then ``fn(*batch)``);
    typically the [Z, C, Y, X] stack from :func:`slices_25d`.
    """
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("run_slicewise: inputs differ in their first dimension")
    batch_size = max(1, int(batch_size))
    outs = []
    for start in range(0, n, batch_size):
        outs.append(fn(*[t[start:start + batch_size] for t in tensors]))
        report(progress, min(start + batch_size, n) / n)
    return torch.cat(outs, 0)


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of size ``window`` covering [0, length) with fractional overlap."""
    if length <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


class WindowedNet:
    """``net(x, t)`` evaluated window by window over the spatial dims of x ([B, C, *spatial]).

    Windows of ``roi_size`` overlap by ``overlap`` (fraction), each is extended by ``margin`` voxels
    of context on every side (zeros beyond the volume, as a zero-padded convolution sees), the
    network runs on ``batch_size`` windows at a time, the margin is cropped off and the outputs are
    blended with Gaussian weights. ``t`` ([B], or None for ``net(x)``) is repeated per window. The
    output must have the input's spatial size (any channel count).
    """

    def __init__(self, net: Callable, roi_size: Sequence[int], overlap: float = 0.25,
                 margin: int = 0, batch_size: int = 1, blend: str = "gaussian"):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {overlap}")
        self.net, self.roi_size = net, tuple(int(r) for r in roi_size)
        self.overlap, self.margin, self.batch_size, self.blend = overlap, int(margin), batch_size, blend

    def __call__(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        spatial = x.shape[2:]
        if len(spatial) != len(self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} does not match the input's spatial shape "
                             f"{tuple(spatial)}")
        # a volume smaller than the window is zero-padded up to it
        roi = self.roi_size
        pad_to = [max(r, s) for r, s in zip(roi, spatial)]
        if list(pad_to) != list(spatial):
            pads = []
            for p, s in reversed(list(zip(pad_to, spatial))):
                pads += [0, p - s]
            out = self(F.pad(x, pads), t)
            return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        weight = compute_importance_map(roi, mode=self.blend, sigma_scale=GAUSSIAN_SIGMA_SCALE,
                                        device=x.device, dtype=torch.float32)
        corners = list(itertools.product(*[window_starts(s, r, self.overlap)
                                           for s, r in zip(spatial, roi)]))
        m = self.margin
        padded = F.pad(x, [m] * (2 * len(spatial))) if m else x
        outs = []
        for b in range(x.shape[0]):
            acc = norm = None
            for i in range(0, len(corners), self.batch_size):
                group = corners[i:i + self.batch_size]
                # in padded coordinates the window with margin starts at the corner itself
                wins = torch.stack([padded[(b, slice(None)) + tuple(slice(c, c + r + 2 * m)
                                                                    for c, r in zip(cs, roi))]
                                    for cs in group])
                tt = None if t is None else t[b:b + 1].expand(len(group))
                y = self.net(wins) if tt is None else self.net(wins, tt)
                if m:
                    y = y[(slice(None), slice(None)) + tuple(slice(m, m + r) for r in roi)]
                if acc is None:
                    acc = torch.zeros((y.shape[1], *spatial), device=x.device, dtype=torch.float32)
                    norm = torch.zeros(spatial, device=x.device, dtype=torch.float32)
                for cs, yi in zip(group, y):
                    region = tuple(slice(c, c + r) for c, r in zip(cs, roi))
                    acc[(slice(None),) + region] += yi.float() * weight
                    norm[region] += weight
            outs.append((acc / norm).to(x.dtype))
        return torch.stack(outs)


def windowed(net: Callable, roi_size: Sequence[int] | None, overlap: float = 0.25, margin: int = 0,
             batch_size: int = 1) -> Callable:
    """``net`` itself when ``roi_size`` is None, else a :class:`WindowedNet` around it."""
    if roi_size is None:
        return net
    return WindowedNet(net, roi_size, overlap=overlap, margin=margin, batch_size=batch_size)
