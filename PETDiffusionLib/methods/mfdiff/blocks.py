"""The fusion module's building blocks (MFdiff Sec. 3.1, Fig. 2b-c), 2D on 2.5D slice stacks.

- :class:`RestormerBlock`: the "Modality Encoder" / decoder transformer block of Restormer
  (Zamir et al. 2022, ref. [36]): multi-Dconv head transposed attention (MDTA: attention across
  channels, so its cost is linear in the number of pixels) and a gated-Dconv feed-forward network.
- :class:`GlobalBlock`: the global branch, Eq. 3, ``G' = MHA(LN(F)) + F; G = MLP(LN(G')) + G'``
  with SPATIAL multi-head self-attention. To fit a CPU the tokens are the feature map average-pooled
  by ``pool`` (4: a 128 x 128 slice becomes 32 x 32 = 1024 tokens); the block's update
  ``G - F`` is computed at that low resolution and bilinearly up-sampled onto F (documented
  deviation: the paper attends at full resolution on 192 x 192 slices on a GPU, Sec. 4.1.3).
- :class:`InvertedResidual`: MobileNetV2's inverted residual block (Sandler et al. 2018, ref. [38]):
  1x1 expansion, ReLU6, 3x3 depthwise, ReLU6, linear 1x1 projection, identity skip; without
  batch normalisation, as in the invertible detail encoders MFdiff's branch follows (CDDFuse's
  INN blocks), so training and inference compute the same function at any batch size.
- :class:`DetailBlock`: the detail branch, Eq. 4: three affine coupling layers (RealNVP, Dinh et
  al. 2016, ref. [37]); in each, one half of the channels is scaled by ``exp(s(other half))`` and
  shifted by ``t(other half)`` with s and t inverted residual blocks; the halves swap roles between
  layers so every channel is transformed. The log-scale is bounded by ``tanh`` (RealNVP practice for
  stable training); the mapping stays exactly invertible (:meth:`DetailBlock.inverse`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel ([B, C, H, W]), as Restormer's "LN"."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Restormer's multi-Dconv head transposed attention (channel attention, Zamir et al. Sec. 3.1)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.dw(self.qkv(x)).chunk(3, 1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Restormer's gated-Dconv feed-forward network (Zamir et al. Sec. 3.2), expansion ``ffn``."""

    def __init__(self, channels: int, ffn: float = 2.0):
        super().__init__()
        hidden = int(channels * ffn)
        self.inp = nn.Conv2d(channels, 2 * hidden, 1)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.dw(self.inp(x)).chunk(2, 1)
        return self.out(F.gelu(g) * a)


class RestormerBlock(nn.Module):
    def __init__(self, channels: int, heads: int = 2, ffn: float = 2.0):
        super().__init__()
        self.n1, self.attn = LayerNorm2d(channels), MDTA(channels, heads)
        self.n2, self.ffn = LayerNorm2d(channels), GDFN(channels, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.ffn(self.n2(x))


class GlobalBlock(nn.Module):
    """Eq. 3 with spatial MHA on the feature map pooled by ``pool`` (see the module docstring)."""

    def __init__(self, channels: int, heads: int = 2, pool: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.pool = int(pool)
        self.ln1 = nn.LayerNorm(channels)
        self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        low = F.avg_pool2d(f, self.pool, ceil_mode=True) if self.pool > 1 else f
        hl, wl = low.shape[-2:]
        tok = low.flatten(2).transpose(1, 2)                       # [B, N, C]
        n = self.ln1(tok)
        g1 = self.mha(n, n, n, need_weights=False)[0] + tok        # G' = MHA(LN(F)) + F
        g = self.mlp(self.ln2(g1)) + g1                            # G = MLP(LN(G')) + G'
        delta = (g - tok).transpose(1, 2).reshape(b, c, hl, wl)
        if self.pool > 1:
            delta = F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=False)
        return f + delta


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual block (Sandler et al. 2018, Fig. 3d, stride 1)."""

    def __init__(self, c_in: int, c_out: int, expand: int = 2):
        super().__init__()
        hidden = c_in * int(expand)
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.ReLU6(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(hidden, hidden, 3, groups=hidden, bias=False),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, c_out, 1, bias=False))
        self.skip = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.skip else y


class DetailBlock(nn.Module):
    """Eq. 4: ``layers`` (3 in the paper) affine couplings with inverted-residual s and t."""

    def __init__(self, channels: int, layers: int = 3, expand: int = 2):
        super().__init__()
        if channels % 2:
            raise ValueError(f"the detail branch splits channels in two halves; {channels} is odd")
        half = channels // 2
        self.scale = nn.ModuleList(InvertedResidual(half, half, expand) for _ in range(layers))
        self.shift = nn.ModuleList(InvertedResidual(half, half, expand) for _ in range(layers))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        a, b = f.chunk(2, 1)                       # F_f, F_l
        for s_net, t_net in zip(self.scale, self.shift):
            a = a * torch.exp(torch.tanh(s_net(b))) + t_net(b)   # D_f = F_f exp(IRB(F_l)) + IRB(F_l)
            a, b = b, a                            # D_l = F_l; swap for the next layer
        return torch.cat([a, b], 1)

    def inverse(self, d: torch.Tensor) -> torch.Tensor:
        a, b = d.chunk(2, 1)
        for s_net, t_net in zip(reversed(self.scale), reversed(self.shift)):
            a, b = b, a
            a = (a - t_net(b)) * torch.exp(-torch.tanh(s_net(b)))
        return torch.cat([a, b], 1)
