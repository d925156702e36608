"""AMDiff losses (Xia et al., Sec. 2.1-2.2, Eq. 3-11) and the whole training objective, Eq. 10.

- :func:`lesion_organ_regularizer` (Eq. 5), :func:`revision_loss` (Eq. 7), :func:`focal_dice_ce` and
  :func:`segmentation_loss` (Eq. 9), :func:`lambda_warm` (Eq. 11).
- :func:`amdiff_loss`: ``L_diff + lambda_warm (L_lor + L_rev + L_seg)`` on one batch of 2.5D slices,
  with the settings of :class:`LossSettings`; the recipe passes lambda from the training progress
  (step / max_steps), so the same config trains the same way on any machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion, x0_from_epsilon
from PETDiffusionLib.methods.amdiff.networks import SUVNormalisation, segmenter_input


def _masked_l1(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - ref| inside a binary mask (0 for an empty mask), per Eq. 5's ||M_s (P - I)||_1
    normalised by the mask size so that small lesions are not drowned by large organs."""
    n = mask.sum()
    if n == 0:
        return pred.new_zeros(())
    return (mask * (pred - ref).abs()).sum() / n


def lesion_organ_regularizer(pred: torch.Tensor, ref: torch.Tensor, organs: torch.Tensor,
                             lesions: torch.Tensor, weights: list[float] | tuple[float, ...]
                             ) -> torch.Tensor:
    """L_lor, Eq. 5: ``sum_{s>=1} w_s * ||M_s (P_HC - I_HC)||_1``.

    ``weights[0]`` is the lesion class (s = 1), ``weights[k]`` (k >= 1) the organ class k of
    :data:`ORGAN_CLASSES`. ``organs`` holds organ indices, ``lesions`` is binary; both [B,1,H,W].
    """
    loss = weights[0] * _masked_l1(pred, ref, (lesions > 0).to(pred.dtype))
    for k in range(1, len(weights)):
        loss = loss + weights[k] * _masked_l1(pred, ref, (organs == k).to(pred.dtype))
    return loss


def revision_loss(pred: torch.Tensor, ref: torch.Tensor, organs: torch.Tensor,
                  lesions: torch.Tensor, weights: list[float] | tuple[float, ...],
                  background_weight: float) -> torch.Tensor:
    """L_rev, Eq. 7: Eq. 5 plus the background class s = 0 (outside every organ and lesion)."""
    bg = ((organs == 0) & (lesions == 0)).to(pred.dtype)
    return (background_weight * _masked_l1(pred, ref, bg)
            + lesion_organ_regularizer(pred, ref, organs, lesions, weights))


def focal_dice_ce(logits: torch.Tensor, target: torch.Tensor,
                  weights: list[float] | tuple[float, ...] | None = None,
                  gamma: float = 4.0 / 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 9 for one branch: ``1/S sum_s w_s (CE_s + FD_s)`` over the classes of ``logits``.

    CE_s = mean over voxels of ``-M_s log P_s``; FD_s = ``(1 - Dice_s)^gamma`` with Dice_s the soft
    Dice of class s over the batch. The paper's exponent 4/3 (Eq. 9) is applied to the Dice deficit,
    the focal form of Yeung et al. 2022 that the paper cites: as printed, Eq. 9 puts it on
    ``(1 - P)`` inside the Dice, which would not vanish for a perfect prediction. Classes absent from
    both target and prediction contribute no Dice term. ``target`` holds class indices [B,1,H,W].
    """
    n_cls = logits.shape[1]
    w = torch.ones(n_cls, dtype=logits.dtype, device=logits.device) if weights is None else \
        torch.as_tensor(list(weights), dtype=logits.dtype, device=logits.device)
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    onehot = F.one_hot(target[:, 0].long(), n_cls).permute(0, 3, 1, 2).to(logits.dtype)
    dims = (0, 2, 3)
    ce = -(onehot * logp).sum(dims) / onehot[:, :1].numel()
    inter = (p * onehot).sum(dims)
    denom = (p * p).sum(dims) + (onehot * onehot).sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    fd = (1.0 - dice).clamp_min(0.0) ** gamma
    return (w * (ce + fd)).sum() / n_cls


def segmentation_loss(lesion_logits: torch.Tensor, organ_logits: torch.Tensor,
                      lesions: torch.Tensor, organs: torch.Tensor,
                      lesion_weights=None, organ_weights=None,
                      organs_annotated: torch.Tensor | None = None) -> torch.Tensor:
    """L_seg: Eq. 9 on the lesion branch plus Eq. 9 on the organ branch.

    ``organs_annotated`` (bool [B]) marks the samples whose organ map is a label map; the organ term
    is taken over those samples only (real PET with a tumour contour but no organ labels trains the
    lesion branch alone)."""
    loss = focal_dice_ce(lesion_logits, (lesions > 0).long(), lesion_weights)
    if organs_annotated is None:
        return loss + focal_dice_ce(organ_logits, organs.long(), organ_weights)
    sel = organs_annotated.bool()
    if sel.any():
        loss = loss + focal_dice_ce(organ_logits[sel], organs[sel].long(), organ_weights)
    return loss


def lambda_warm(epoch: float, e_max: float, e_t: float) -> float:
    """Eq. 11: ``(e >= e_T) * exp(-5 (1 - e/e_max)^2)``."""
    if epoch < e_t:
        return 0.0
    return math.exp(-5.0 * (1.0 - min(epoch, e_max) / e_max) ** 2)


# --------------------------------------------------------------------------------------------
# Eq. 10 on one batch
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSettings:
    """The weights and switches of Eq. 10 (the recipe's config holds the same names)."""
    lor_weights: tuple[float, ...]             # w_s of Eq. 5/7: lesion, then organ classes 1..7
    background_weight: float                   # w_0 of Eq. 7 (background)
    lesion_class_weights: tuple[float, ...]    # Eq. 9, lesion branch (background, lesion)
    organ_class_weights: tuple[float, ...]     # Eq. 9, organ branch
    lor_max_t_fraction: float = 0.5            # L_lor/L_rev/L_seg only on t < this * T
    segmenter_only: bool = False               # encoder comparison: f_seg alone on I_LC
    use_ct: bool = True                        # the segmenter's use_ct (its CT channels); given
                                               # here because DDP-wrapped networks hide attributes


def seg_input_from_batch(u_hcr: torch.Tensor, u_lc: torch.Tensor, batch: dict,
                         use_ct: bool) -> torch.Tensor:
    """Eq. 8's segmenter input for a training batch whose CT is present per sample (``has_ct``)."""
    x = segmenter_input(u_hcr, u_lc, None, use_ct)
    if use_ct:
        flag = batch["has_ct"].view(-1, 1, 1, 1).to(x.dtype)
        x[:, 2:3] = (batch["ct"] / 1000.0).clamp(-1.0, 2.0) * flag
        x[:, 3:4] = flag.expand_as(x[:, 3:4])
    return x


def amdiff_loss(batch: dict, networks: dict[str, nn.Module], diffusion: ConditionalDiffusion,
                norm: SUVNormalisation, settings: LossSettings, lam: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. 10 on one batch; returns (loss, logs). ``generator`` draws t and the noise (the
    Trainer's per-step generator, so that a resumed run draws the same)."""
    den, rev, seg = networks["denoiser"], networks["revision"], networks["segmenter"]
    cfg = settings
    low = batch["low"]
    k = (low.shape[1] - 1) // 2                              # 2k+1 context slices
    cond = norm.to_x(low)                                    # I_LC slices, clipped at the cut-off
    u_lc = norm.to_u(low[:, k:k + 1])                        # centre slice, unclipped
    x0 = norm.to_x(batch["suv"])
    u_ref_clip = norm.x_to_u(x0)
    u_ref = norm.to_u(batch["suv"])
    use_ct = cfg.use_ct
    logs: dict[str, float] = {}
    if cfg.segmenter_only:
        les_logits, org_logits = seg(seg_input_from_batch(u_lc, u_lc, batch, use_ct))
        l_seg = segmentation_loss(les_logits, org_logits, batch["lesions"], batch["organs"],
                                  cfg.lesion_class_weights, cfg.organ_class_weights,
                                  batch.get("organs_annotated"))
        return l_seg, {"seg": float(l_seg.detach())}
    b = x0.shape[0]
    T = diffusion.num_train_timesteps
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(0, T, (b,), generator=generator, device=gen_device).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=gen_device,
                      dtype=x0.dtype).to(x0.device)
    x_t = diffusion.scheduler.add_noise(x0, eps, t)
    eps_hat = den(torch.cat([x_t, cond], 1), t)
    l_diff = (eps_hat - eps).abs().mean()                    # Eq. 3
    logs["diff"] = float(l_diff.detach())
    loss = l_diff
    if lam > 0:
        sel = t < max(1, int(cfg.lor_max_t_fraction * T))
        weight = 1.0
        if not sel.any() and dist.is_available() and dist.is_initialized():
            # under DDP every wrapped network must take part in every step (each rank all-reduces
            # its gradients, and a rank that skipped them would hang the others): run the revision
            # module and the segmenter on one sample with weight 0 when no t < T/2 was drawn here
            sel = torch.zeros_like(sel)
            sel[0] = True
            weight = 0.0
        if sel.any():
            ab = diffusion.alphas_cumprod.to(x0.device)[t[sel]].float().view(-1, 1, 1, 1)
            u_hc = norm.x_to_u(x0_from_epsilon(x_t[sel], eps_hat[sel], ab, clip=1.0))  # P_HC
            org, les = batch["organs"][sel], batch["lesions"][sel]
            l_lor = lesion_organ_regularizer(u_hc, u_ref_clip[sel], org, les, cfg.lor_weights)
            u_hcr = rev(u_hc, u_lc[sel])                     # P_HCR, Eq. 6
            l_rev = revision_loss(u_hcr, u_ref[sel], org, les, cfg.lor_weights,
                                  cfg.background_weight)     # Eq. 7
            sub = {kk: v[sel] for kk, v in batch.items() if isinstance(v, torch.Tensor)}
            les_logits, org_logits = seg(seg_input_from_batch(u_hcr, u_lc[sel], sub, use_ct))
            ann = batch.get("organs_annotated")
            l_seg = segmentation_loss(les_logits, org_logits, les, org,
                                      cfg.lesion_class_weights, cfg.organ_class_weights,
                                      None if ann is None else ann[sel])
            loss = loss + weight * lam * (l_lor + l_rev + l_seg)
            logs.update(lor=float(l_lor.detach()), rev=float(l_rev.detach()), seg=float(l_seg.detach()))
    logs["lambda"] = lam
    return loss, logs
