"""STMDiff on arrays of the working grid: slice matching (STMDiff §2.1, inference) and the latent
attenuation-correction diffusion (§2.2, Eq. 6), shared by the task pipeline and the recipe.

Arrays are [z, y, x] at network scale (``intensities``), y and x multiples of 8.
"""
from __future__ import annotations

import numpy as np
import torch

from PETDiffusionLib.diffusion.ddpm import ConditionalDiffusion
from PETDiffusionLib.diffusion.windows import run_slicewise
from PETDiffusionLib.methods.stmdiff.losses import l1_similarity

SLICE_BATCH = 64


def _slices(a: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32) if isinstance(a, np.ndarray) else a
    return t[:, None].to(device)


@torch.no_grad()
def slice_similarity(g1, g2, pet_net: np.ndarray, ct_net: np.ndarray, device="cpu") -> torch.Tensor:
    """s(G1(pet_i), G2(ct_j)) for every delayed PET slice i and first-scan CT slice j: [n_pet, n_ct]."""
    zx = run_slicewise(g1, _slices(pet_net, device), SLICE_BATCH)
    zy = run_slicewise(g2, _slices(ct_net, device), SLICE_BATCH)
    return l1_similarity(zx, zy)


def top_k(similarity: torch.Tensor, k: int) -> np.ndarray:
    """Indices [n_pet, k] of the k best-matched CT slices per PET slice, best first."""
    k = max(1, min(int(k), similarity.shape[1]))
    return similarity.topk(k, dim=1).indices.cpu().numpy()


@torch.no_grad()
def ct_features(g2, ct_net: np.ndarray, device="cpu") -> torch.Tensor:
    """G2 feature maps of every CT slice [n_ct, C, H/4, W/4] (the CT prior of Eq. 6)."""
    return run_slicewise(g2.features, _slices(ct_net, device), SLICE_BATCH)


def build_condition(nac_latent: torch.Tensor, feats: torch.Tensor | None, topk: np.ndarray | None,
                    k: int) -> torch.Tensor:
    """c = concat(G2 features of the top-k CT slices, NAC latent) (Eq. 6); k = 0: NAC latent only."""
    if k <= 0:
        return nac_latent
    idx = torch.as_tensor(topk[:, :k], device=feats.device)                     # [n, k]
    prior = feats[idx.reshape(-1)].reshape(len(idx), k * feats.shape[1], *feats.shape[2:])
    return torch.cat([prior, nac_latent], 1)


def diffusion_of(card: dict) -> ConditionalDiffusion:
    d = card["diffusion"]
    return ConditionalDiffusion(int(d["num_train_timesteps"]), d["schedule"], d["prediction"])


@torch.no_grad()
def attenuation_correct(networks: dict, card: dict, nac_net: np.ndarray, ct_net: np.ndarray, *,
                        k: int, steps: int, samples: int = 1, seed: int = 0, device="cpu",
                        progress=None, topk: np.ndarray | None = None) -> dict:
    """Delayed NAC + first CT (network scale) -> {"mean", "std" (network-scale PET of the AC image,
    [N?] z, y, x arrays decoded per sample), "samples" [N, z, y, x], "topk", "similarity"}.

    The regression baseline (card diffusion kind "unet") maps the NAC image directly."""
    dev = torch.device(device)
    report = progress or (lambda f, m="": None)
    kind = card["diffusion"]["kind"]
    if kind == "unet":
        out = run_slicewise(networks["unet"], _slices(nac_net, dev), SLICE_BATCH)[:, 0]
        arr = out.cpu().numpy()
        return {"samples": arr[None], "topk": None, "similarity": None}
    model_k = int(card["preprocessing"]["k"])
    if k != model_k and model_k > 0:
        raise ValueError(f"this model was trained with k = {model_k} CT slices; k = {k} needs the "
                         f"model trained for it")
    sim = None
    if model_k > 0 and topk is None:
        report(0.05, "matching slices")
        sim = slice_similarity(networks["g1"], networks["g2"], nac_net, ct_net, dev)
        topk = top_k(sim, model_k)
    scale = float(card["preprocessing"]["latent_scale"])
    ae = networks["autoencoder"]
    report(0.15, "encoding")
    e_nac = run_slicewise(ae.encode, _slices(nac_net, dev), SLICE_BATCH) * scale
    feats = ct_features(networks["g2"], ct_net, dev) if model_k > 0 else None
    cond = build_condition(e_nac, feats, topk, model_k)
    report(0.25, "diffusion sampling")
    diff = diffusion_of(card)
    sub = (lambda f: report(0.25 + 0.6 * f, "diffusion sampling"))
    res = diff.sample(networks["denoiser"], cond, steps=steps, sampler="ddim", seed=seed,
                      n_samples=samples, shape=tuple(e_nac.shape), eta=0.0, progress=sub)
    report(0.85, "decoding")
    dec = [run_slicewise(ae.decode, s / scale, SLICE_BATCH) for s in res.samples]
    if "detail" in networks:  # the NAC-guided refinement (networks.DetailHead), when the model has one
        nac = _slices(nac_net, dev)
        head = networks["detail"]
        if getattr(head, "ct_slices", 0):  # the head also sees the matched CT slices themselves
            ct = torch.as_tensor(np.ascontiguousarray(ct_net[topk[:, :head.ct_slices]]), device=dev)
            dec = [run_slicewise(head, (d, nac, ct), SLICE_BATCH) for d in dec]
        else:
            dec = [run_slicewise(head, (d, nac), SLICE_BATCH) for d in dec]
    dec = torch.stack([d[:, 0] for d in dec])
    return {"samples": dec.cpu().numpy(), "topk": topk, "similarity": sim}
