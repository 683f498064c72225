"""Devices and precision: one place decides where tensors live and how they are computed.

On CUDA (and only there, so that CPU results stay as they were): bf16 autocast (``autocast``),
TF32 matmuls and convolutions, and the convolutional networks (VAE, U-Net, ControlNet) in
channels_last memory, the layout tensor cores read without transposing (``prepare``).
"""

from __future__ import annotations

import contextlib

import torch

from torch import nn

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


def prepare(model: nn.Module, device: torch.device, compiled: bool = False) -> nn.Module:
    """Move ``model`` to ``device``; on CUDA also allow TF32 and store a conv net channels_last.

    TF32 rounds matmul inputs to 10 mantissa bits, which bf16 autocast already does to most of
    them; it speeds up what runs outside autocast (the float32 parts). Neither changes a CPU run.
    ``compiled``: the network will run through ``torch.compile``, whose kernels round differently
    from eager ones anyway; then a conv net is channels_last on the CPU too, where oneDNN's NHWC
    convolutions are faster (bench/RESULTS.md). An eager CPU run stays bit for bit what it was.
    """
    model.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda" or compiled:
        channels_last(model)
    return model


def frozen(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """A trained network for inference: ``prepare``d on ``device``, in eval mode, without
    gradients, and with ``compile`` run through ``torch.compile`` (samples then agree with eager
    ones to float tolerance, not bit for bit)."""
    model = prepare(model, device, compiled=compile).eval().requires_grad_(False)
    return compiled(model) if compile else model


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``, the one place vd compiles. On the CPU with inductor's C++
    wrapper, which calls the generated kernels from C++ instead of from a Python function: a
    step of the U-Net runs about a hundred of them (its compiled training step: 2-3 points faster
    against diffusers, bench/RESULTS.md). The first compile takes longer (about a minute)."""
    cpu = next(model.parameters()).device.type == "cpu"
    return torch.compile(model, options={"cpp_wrapper": True} if cpu else None)


def channels_last(model: nn.Module) -> nn.Module:
    """A network with 2-d convolutions stores its 4-d weights channels_last (NHWC); others are left alone.

    Its feature maps then follow (a conv's output takes its weight's layout), so cuDNN runs the
    convolutions without layout transposes. Same function, any device: the tests run it on the CPU.
    """
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model
