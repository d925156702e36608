"""CPDM's 2.5D inputs, per case: CT slice stacks for the attention U-Net and the condition of the
bridge denoiser on the latent grid (CPDM eq. 3: concat(x_t, context latents, M_sigma, M_mu)).

Slices of several cases may sit in one array (the recipe's training set); ``case`` gives each
slice's case, and a neighbour never crosses into another case: at a case's first and last slice
the edge slice is repeated (as ``diffusion.windows.slices_25d`` does at the ends of one volume).
"""
from __future__ import annotations

import numpy as np
import torch

from PETDiffusionLib.diffusion.windows import slices_25d


def ct_stacks(ct_net: np.ndarray, case: np.ndarray, context: int) -> np.ndarray:
    """(N, S, S) CT slices (any units) -> (N, 2c+1, S, S): each slice with its neighbours z-c..z+c
    in the same case (``slices_25d`` applied per case)."""
    out = np.empty((len(ct_net), 2 * context + 1) + ct_net.shape[1:], np.float32)
    for c in np.unique(case):
        sel = np.flatnonzero(case == c)
        out[sel] = slices_25d(torch.from_numpy(np.ascontiguousarray(ct_net[sel], np.float32)),
                              context).numpy()
    return out


def neighbour_indices(case: np.ndarray, i: np.ndarray, context: int) -> list[np.ndarray]:
    """For slices ``i``: the indices of their neighbours at offsets -c..-1, 1..c in the same case
    (the slice itself where the neighbour would be outside the array or in another case)."""
    n = len(case)
    out = []
    for off in [o for o in range(-context, context + 1) if o != 0]:
        j = np.clip(i + off, 0, n - 1)
        out.append(np.where(case[j] == case[i], j, i))
    return out


def latent_condition(y, msig, mmu, neighbours: list[np.ndarray]) -> torch.Tensor:
    """cond = [CT latents y of each neighbour, M_sigma (if given), M_mu (if given)] along channels.

    ``y`` holds the CT latents of every slice (tensor or array, [N, C, h, w]); ``neighbours`` from
    :func:`neighbour_indices`; ``msig``/``mmu`` the pooled maps of the slices themselves or None
    (the ablations without them)."""
    parts = [torch.as_tensor(y[j]) for j in neighbours]
    parts += [torch.as_tensor(m) for m in (msig, mmu) if m is not None]
    return torch.cat(parts, 1)
