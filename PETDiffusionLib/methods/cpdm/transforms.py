"""Array transforms of CPDM's 2D slices: crops and pads on the working grid, and the CT-domain
augmentation of the training recipe.

Augmentation (issue 7, real CT): the simulated CTs are clean, whole-body-in-FOV phantoms; real CTs
differ in noise, sharpness, HU calibration, patient size/position and field of view.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from PETDiffusionLib.methods.cpdm.intensities import CT_HU_MAX, CT_HU_MIN

AUG_DEFAULTS = {
    "noise_hu_max": 25.0,      # additive white noise, sigma ~ U(0, 25) HU (brief; clinical CT ~10-30 HU)
    "blur_sigma_max_px": 0.8,  # in-plane Gaussian blur sigma ~ U(0, 0.8) px (softer reconstruction kernels)
    "hu_scale": 0.03,          # HU * (1 + U(-3 %, 3 %)): kVp / calibration differences of a few per cent
    "hu_offset": 15.0,         # + U(-15, 15) HU: real liver 44 HU vs phantom 50 (measured, issue 7 note)
    "zoom": 0.1,               # in-plane scale U(0.9, 1.1): patient size
    "shift_px": 8,             # in-plane shift U(-8, 8) px (32 mm at 4 mm): patient position
    "flip": True,              # left-right mirror with p = 0.5 (anterior-posterior is fixed by LPS)
    "fov_crop_p": 0.3,         # p of a truncated field of view (real CTs cut the body at the FOV edge)
    "fov_crop_max": 0.2,       # ... removing up to 20 % of the slice on each side (set to air, PET 0)
}


def crop_or_pad(vol: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre-crop or pad the last two axes of a z,y,x array to size x size."""
    out = np.full(vol.shape[:-2] + (size, size), fill, np.float32)
    h, w = vol.shape[-2:]
    sy, sx = max((h - size) // 2, 0), max((w - size) // 2, 0)
    dy, dx = max((size - h) // 2, 0), max((size - w) // 2, 0)
    ch, cw = min(h, size), min(w, size)
    out[..., dy:dy + ch, dx:dx + cw] = vol[..., sy:sy + ch, sx:sx + cw]
    return out


def pad_to_multiple(vol: np.ndarray, multiple: int, fill: float, minimum: int = 0) -> tuple[np.ndarray, tuple]:
    """Pad the last two axes up to a multiple of ``multiple`` (and to at least ``minimum``); returns
    (array, (y0, x0, h, w))."""
    h, w = (max(n, minimum) for n in vol.shape[-2:])
    H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    h, w = vol.shape[-2:]
    y0, x0 = (H - h) // 2, (W - w) // 2
    out = np.full(vol.shape[:-2] + (H, W), fill, np.float32)
    out[..., y0:y0 + h, x0:x0 + w] = vol
    return out, (y0, x0, h, w)


def random_crops(arrs: list[np.ndarray], idx: np.ndarray, crop: int, rng: np.random.Generator
                 ) -> list[torch.Tensor]:
    """The same random ``crop`` x ``crop`` window of slice i in every array, for each i in ``idx``."""
    size = arrs[0].shape[-1]
    out = [[] for _ in arrs]
    for i in idx:
        y0, x0 = rng.integers(0, size - crop + 1, 2)
        for k, a in enumerate(arrs):
            out[k].append(a[i, ..., y0:y0 + crop, x0:x0 + crop])
    return [torch.from_numpy(np.stack(o)).float() for o in out]


def augment_config(cfg: dict) -> dict | None:
    """The config's "augment" block when it is enabled, else None."""
    a = cfg.get("augment") or {}
    return a if a.get("enabled") else None


def augment_params(rng: np.random.Generator, aug: dict) -> dict:
    """One draw of the augmentation parameters (applied alike to every slice of one sample/volume)."""
    a = {**AUG_DEFAULTS, **aug}
    fc = float(a["fov_crop_max"])
    crop = (rng.uniform(0, fc, 4) if rng.random() < float(a["fov_crop_p"]) else np.zeros(4))
    return {"noise": float(rng.uniform(0, a["noise_hu_max"])),
            "blur": float(rng.uniform(0, a["blur_sigma_max_px"])),
            "scale": float(1 + rng.uniform(-a["hu_scale"], a["hu_scale"])),
            "offset": float(rng.uniform(-a["hu_offset"], a["hu_offset"])),
            "zoom": float(1 + rng.uniform(-a["zoom"], a["zoom"])),
            "shift": rng.uniform(-a["shift_px"], a["shift_px"], 2).astype(float),
            "flip": bool(a["flip"] and rng.random() < 0.5),
            "crop": crop.astype(float),  # fraction cut from top, bottom, left, right
            "noise_seed": int(rng.integers(0, 2 ** 31 - 1))}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable in-plane Gaussian blur of [B, C, H, W] (reflect padding keeps edges unbiased)."""
    if sigma < 0.05:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def augment_ct(ct_hu: np.ndarray, others: list[np.ndarray], params: dict
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Augment CT slices (Z, H, W) in HU and, geometrically only, paired maps (PET, masks) (Z, H, W).

    The geometry (zoom, shift, flip, FOV truncation) is applied alike to the CT and ``others``
    (bilinear; outside the image the CT is air and the others 0); blur, HU scale/offset and noise
    to the CT only. Returns float32 arrays of the input shapes, CT clipped to the 12-bit range.
    """
    z, h, w = ct_hu.shape
    p = params
    theta = torch.zeros(1, 2, 3, dtype=torch.float32)
    # output -> input coordinates in [-1, 1]: x_in = x_out / zoom (* -1 when flipped) - shift
    theta[0, 0, 0] = (-1.0 if p["flip"] else 1.0) / p["zoom"]
    theta[0, 1, 1] = 1.0 / p["zoom"]
    theta[0, 0, 2] = -2.0 * p["shift"][1] / w
    theta[0, 1, 2] = -2.0 * p["shift"][0] / h
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)

    def warp(a: np.ndarray, fill: float) -> torch.Tensor:  # a: (any number of slices, h, w)
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None] - fill
        g = grid.expand(len(t), h, w, 2)
        return F.grid_sample(t, g, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0] + fill

    ct = warp(ct_hu, CT_HU_MIN)
    outs = [warp(o, 0.0) for o in others]
    top, bottom, left, right = (int(round(f * n)) for f, n in zip(p["crop"], (h, h, w, w)))
    if top or bottom or left or right:
        keep = torch.zeros(h, w, dtype=torch.bool)
        keep[top:h - bottom, left:w - right] = True
        ct = torch.where(keep, ct, torch.tensor(CT_HU_MIN))
        outs = [torch.where(keep, o, torch.tensor(0.0)) for o in outs]
    air = ct <= CT_HU_MIN + 1.0  # padding and truncated FOV stay exact air, as in a real scan
    ct = gaussian_blur(ct[:, None], p["blur"])[:, 0]
    ct = ct * p["scale"] + p["offset"]
    g = torch.Generator().manual_seed(p["noise_seed"])
    ct = ct + p["noise"] * torch.randn(ct.shape, generator=g)
    ct = torch.where(air, torch.tensor(CT_HU_MIN), ct).clamp(CT_HU_MIN, CT_HU_MAX)
    return ct.numpy().astype(np.float32), [o.numpy().astype(np.float32) for o in outs]
