"""Checkpoints: safetensors files that rebuild their model alone. No pickle is ever loaded.

A checkpoint holds
- tensors: the model's weights under ``model.``, EMA weights under ``ema.``, and any
  sub-model a command needs (an LDM carries its VAE under ``vae.``);
- metadata (JSON strings): ``kind`` (vit | vae | ldm), ``meta`` (model config, data spec with
  class names, the resolved recipe, step, metrics) and the vdcli version.

What only resuming needs (optimizer moments, step) sits beside it in ``<name>.state.safetensors``.
Every write goes to a temporary file, is fsynced and renamed over the old file, so a crash or
Ctrl-C never leaves a half-written checkpoint. Weights and optimizer state are two files, so
``save_resumable`` keeps the previous state (``<name>.state-prev.safetensors``) until the new
weights are in place: a process killed at any instant leaves weights and a state of the same step.
A write that fails (a full disk, no permission) removes its temporary file, puts the previous state
back, and is one ``VdError`` naming the file and its size.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vdcli import __version__, distributed
from vdcli.errors import VdError, write_failure

KINDS = {"vit": "a ViT classifier (vd train-vit)", "vae": "a VAE (vd train-vae)", "ldm": "a latent diffusion model (vd train-ldm)",
         "clip": "a CLIP image-text model (vd train-clip)", "controlnet": "a ControlNet on an LDM (vd train-controlnet)"}


@dataclass
class Checkpoint:
    path: Path
    kind: str
    meta: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)

    def weights(self, prefix: str = "model") -> dict[str, torch.Tensor]:
        """The state dict stored under ``prefix.`` (model, ema, vae ...)."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.tensors.items() if k.startswith(start)}

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix + ".") for k in self.tensors)

    def trained(self) -> dict[str, torch.Tensor]:
        """The weights to use the trained model with: the EMA's when the run kept an average, else the model's."""
        return self.weights("ema" if self.has("ema") else "model")


def atomic_write(path: Path, write, nbytes: int | None = None) -> None:
    """write(tmp_path), fsync, then rename over ``path``: readers see the old file or the new one.

    Every file vd writes goes through here; under torchrun only rank 0 writes (``distributed``).
    On any failure the temporary file is removed and ``path`` is untouched; a full disk or a missing
    permission is one ``VdError`` naming ``path`` and ``nbytes``, the size of what was being written.
    """
    if not distributed.is_main():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C too: no half-written temporary file stays behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        failure = write_failure(e, path, nbytes)
        if failure is not None:
            raise failure from e
        raise


def safetensors_size(tensors: dict[str, torch.Tensor], metadata: dict) -> int:
    """About the size of the safetensors file of ``tensors`` (the data and a header of the same order)."""
    return sum(t.numel() * t.element_size() for t in tensors.values()) + len(json.dumps(metadata)) + 100 * len(tensors)


def save_checkpoint(path: Path, kind: str, modules: dict[str, torch.nn.Module | dict], meta: dict) -> None:
    """Save modules (or state dicts) under their prefixes, e.g. {"model": net, "ema": ema_net}."""
    tensors = {}
    for prefix, module in modules.items():
        state = module.state_dict() if isinstance(module, torch.nn.Module) else module
        for name, value in state.items():
            tensors[f"{prefix}.{name}"] = value.detach().to("cpu").contiguous()
    header = {"format": "vd", "kind": kind, "version": __version__, "meta": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), safetensors_size(tensors, header))


def read_header(path: Path) -> dict:
    """The metadata of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise VdError(f"{path} is not a safetensors checkpoint ({e})") from None


def load_checkpoint(path: str | Path, expect: str | None = None) -> Checkpoint:
    """Load a checkpoint file; with ``expect``, insist on its kind and say what it is otherwise."""
    path = Path(path)
    if not path.is_file():
        raise VdError(f"checkpoint {path} not found")
    header = read_header(path)
    kind = header.get("kind")
    if header.get("format") != "vd" or kind not in KINDS:
        raise VdError(f"{path} is a safetensors file but not a vd checkpoint (no vd metadata)")
    if expect and kind != expect:
        raise VdError(f"{path} is {KINDS[kind]}, but this command needs {KINDS[expect]}")
    return Checkpoint(path, kind, json.loads(header["meta"]), load_file(str(path)))


def state_path(path: Path, previous: bool = False) -> Path:
    return Path(path).with_suffix(".state-prev.safetensors" if previous else ".state.safetensors")


def save_resumable(path: Path, kind: str, modules: dict[str, torch.nn.Module | dict], meta: dict,
                   optimizer: torch.optim.Optimizer, step: int) -> None:
    """Weights and optimizer state of one step, in an order that survives a kill at any point."""
    if not distributed.is_main():
        return
    state, previous = state_path(path), state_path(path, previous=True)
    if state.is_file():
        os.replace(state, previous)
    try:
        save_train_state(path, optimizer, step)
        save_checkpoint(path, kind, modules, {**meta, "step": step})
    except BaseException:  # a full disk, Ctrl-C: the weights on disk are the previous step's; so is its state again
        if previous.is_file():
            with contextlib.suppress(OSError):
                os.replace(previous, state)
        raise
    previous.unlink(missing_ok=True)


def save_train_state(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Optimizer moments and step, for --resume. Written before the checkpoint it belongs to."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().to("cpu").contiguous()
            else:
                scalars[key] = value
    header = {"step": str(step), "param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    atomic_write(state_path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header), safetensors_size(tensors, header))


def load_train_state(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Restore the optimizer from the state file beside ``path`` that was saved at ``step``
    (the newest, or the previous one when a save was cut off before its weights were written)."""
    found = [p for p in (state_path(path), state_path(path, previous=True)) if p.is_file()]
    steps = [int(read_header(p)["step"]) for p in found]
    if step not in steps:
        have = f"it has the state of step {steps[0]}" if steps else f"{state_path(path).name} is missing"
        raise VdError(f"cannot resume {path}: its weights are from step {step}, but {have}")
    spath = found[steps.index(step)]
    header = read_header(spath)
    tensors = load_file(str(spath))
    state: dict = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(header["scalars"]).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["param_groups"])})
