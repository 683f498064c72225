"""Devices and precision: one place decides where tensors live and how they are computed."""

from __future__ import annotations

import contextlib

import torch

from vdcli.errors import VdError


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA when present, else Apple's MPS, else the CPU."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VdError(f"--device {name}: no CUDA device is visible to torch {torch.__version__}; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VdError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise VdError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed); full precision elsewhere.

    CPU bf16 autocast is slower than fp32 on most CPUs and changes results, so the CPU path,
    which tests and benchmarks use, stays in fp32 and stays deterministic.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
