"""STMDiff's matching losses (STMDiff §2.1, Eqs. 1-2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

TAU = 0.5  # temperature of Eq. 1 (STMDiff §2.1: tau = 0.5)


def l1_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s(a_i, b_j) = -||a_i - b_j||_1 for every pair: [Na, Nb]. STMDiff §2.1 uses the L1 norm as s;
    the latents are L2-normalised first (their encoders end with F.normalize), so s lies in
    [-2 sqrt(d), 0]."""
    return -torch.cdist(a, b, p=1)


def matching_infonce(zx: torch.Tensor, zy: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """L^X + L^Y of Eq. 1 (averaged over the batch M instead of summed).

    L^X_i = -log( exp(s(zx_i, zy_i)/tau) / (sum_{j != i} exp(s(zx_i, zy_j)/tau) + exp(s(zx_i, zx_i)/tau)) )
    and L^Y_i the same with the rows of zy (its negatives sum_{j != i} exp(s(zx_j, zy_i)/tau) and
    self term s(zy_i, zy_i)); with s = -L1 the self terms are exp(0) = 1.
    """
    s = l1_similarity(zx, zy) / tau                                  # [M, M], s[i, j] = s(x_i, y_j)
    n = s.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    pos = s.diagonal()
    neg = s.masked_fill(eye, float("-inf"))
    self_x = (-(zx - zx).abs().sum(1)) / tau                          # 0: s(z, z) with s = -L1
    self_y = (-(zy - zy).abs().sum(1)) / tau
    den_x = torch.logsumexp(torch.cat([neg, self_x[:, None]], 1), 1)
    den_y = torch.logsumexp(torch.cat([neg.t(), self_y[:, None]], 1), 1)
    return (den_x - pos).mean() + (den_y - pos).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against a binary target, per sample then averaged."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def contour_dice(head_x: torch.Tensor, head_y: torch.Tensor, mask_x: torch.Tensor,
                 mask_y: torch.Tensor) -> torch.Tensor:
    """L^dice of Eq. 2 as a cross-modal geometry constraint: the body contour decoded from the PET
    latent must match the CT's body contour and the one decoded from the CT latent the PET's
    (contours by threshold, opening and closing: intensities.body_contours), so both latents carry
    the shared geometry the matching relies on."""
    size = head_x.shape[-2:]
    mx = F.adaptive_avg_pool2d(mask_x.float(), size) > 0.5
    my = F.adaptive_avg_pool2d(mask_y.float(), size) > 0.5
    return 0.5 * (soft_dice_loss(head_x, my) + soft_dice_loss(head_y, mx))
