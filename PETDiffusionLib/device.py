"""Device choice: CUDA (autocast bf16/fp16) if present, else Apple MPS, else CPU (ARCHITECTURE.md)."""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def choose_device(preference: str | None = None) -> torch.device:
    """``preference`` is None/"auto", "cpu", "cuda", "cuda:1" or "mps"."""
    if preference and preference != "auto":
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {preference}: CUDA is not available on this machine")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"--device {preference}: Apple MPS is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA devices that support it, fp16 on other CUDA devices, none elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
