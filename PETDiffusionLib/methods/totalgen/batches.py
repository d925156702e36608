"""Training batches of TotalGen's two stages, drawn from prepared subjects (methods/totalgen/data.py).

- stage 1 (global): one of the 64 stratified sub-samplings ``HR[oz::4, oy::4, ox::4]`` of a random
  subject (TotalGen §2.2), channels CT, PET and one channel per organ group (its indicator, or its
  signed distance when the subject carries ``organ_unit``, data.organ_sdf_unit), in network units
  (2u - 1), with the four demographic channels as the condition;
- stage 2 (super-resolution): a random HR patch (centred on a body voxel) of the residual target,
  its linear upsampling of the same sub-sampled LR volume (computed on an LR crop with a one-voxel
  margin, equal to the whole-volume upsampling for patches aligned to the factor), normalised
  position channels of the patch (PatchDiffusion, TotalGen §2.2) and the demographic channels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from PETDiffusionLib.methods.totalgen.data import FACTOR, HR_SHAPE, organ_indicators
from PETDiffusionLib.methods.totalgen.intensities import (demographic_channels, demographic_vector,
                                                          position_channels)

BODY_UNIT = 0.2
"""CT unit above which a voxel is body for patch centring: -300 HU on the [-500, 500] scale."""


def subject_demographics(info: dict) -> list[float]:
    d = info["demographics"]
    return demographic_vector(d["age"], d["sex"], d["height_cm"], d["weight_kg"])


def hr_channels(arr: dict) -> np.ndarray:
    """[2 + n_organs, Z, Y, X] unit channels: CT, PET, organ groups (``arr["organ_unit"]`` when
    present, the signed-distance encoding, else the groups' indicators)."""
    if "organ_unit" in arr:
        organs = arr["organ_unit"].astype(np.float32)
    else:
        organs = organ_indicators(arr["groups"])
    return np.concatenate([np.stack([arr["ct"], arr["pet"]]), organs])


def global_batch(arrays: list[dict], infos: list[dict], batch: int, rng: np.random.Generator
                 ) -> dict[str, torch.Tensor]:
    """{"x0": [B, 8, 48, 32, 32] in 2u - 1, "demo": [B, 4]}."""
    xs, demos = [], []
    for _ in range(batch):
        i = int(rng.integers(len(arrays)))
        oz, oy, ox = (int(v) for v in rng.integers(0, FACTOR, 3))
        a = arrays[i]
        lr = {"ct": a["ct"][oz::FACTOR, oy::FACTOR, ox::FACTOR],
              "pet": a["pet"][oz::FACTOR, oy::FACTOR, ox::FACTOR],
              "groups": a["groups"][oz::FACTOR, oy::FACTOR, ox::FACTOR]}
        if "organ_unit" in a:
            lr["organ_unit"] = a["organ_unit"][:, oz::FACTOR, oy::FACTOR, ox::FACTOR]
        xs.append(hr_channels(lr))
        demos.append(subject_demographics(infos[i]))
    return {"x0": torch.from_numpy(np.stack(xs)) * 2 - 1,
            "demo": torch.tensor(demos, dtype=torch.float32)}


def sr_batch(arrays: list[dict], infos: list[dict], batch: int, patch: int,
             rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """{"high": [B, 2, p, p, p] (2u - 1), "up": its upsampled LR, "cond": [B, 7, p, p, p]
    (position z, y, x then demographics)}; p = ``patch``, a multiple of FACTOR."""
    lp = patch // FACTOR
    highs, ups, conds = [], [], []
    lr_shape = [s // FACTOR for s in HR_SHAPE]
    for _ in range(batch):
        i = int(rng.integers(len(arrays)))
        a = arrays[i]
        body = a["ct"][::FACTOR, ::FACTOR, ::FACTOR] > BODY_UNIT
        cand = np.argwhere(body)
        c = cand[int(rng.integers(len(cand)))] if len(cand) else np.array(lr_shape) // 2
        start_lr = [int(np.clip(cc - lp // 2, 0, n - lp)) for cc, n in zip(c, lr_shape)]
        start = [s * FACTOR for s in start_lr]
        oz, oy, ox = (int(v) for v in rng.integers(0, FACTOR, 3))
        hr = np.stack([a["ct"], a["pet"]])
        lr = hr[:, oz::FACTOR, oy::FACTOR, ox::FACTOR]
        # LR crop with one voxel of margin (edge-replicated), upsampled, margin cropped off
        idx = [np.clip(np.arange(s - 1, s + lp + 1), 0, n - 1) for s, n in zip(start_lr, lr_shape)]
        crop = lr[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(crop))[None], scale_factor=FACTOR,
                           mode="trilinear", align_corners=False)[0]
        up = up[:, FACTOR:FACTOR + patch, FACTOR:FACTOR + patch, FACTOR:FACTOR + patch]
        sl = tuple(slice(s, s + patch) for s in start)
        highs.append(torch.from_numpy(np.ascontiguousarray(hr[(slice(None),) + sl])))
        ups.append(up)
        pos = position_channels(HR_SHAPE, tuple(start), (patch,) * 3)
        demo = torch.tensor(subject_demographics(infos[i]), dtype=torch.float32)
        conds.append(torch.cat([pos, demographic_channels(demo, (patch,) * 3)]))
    return {"high": torch.stack(highs) * 2 - 1, "up": torch.stack(ups) * 2 - 1,
            "cond": torch.stack(conds)}
