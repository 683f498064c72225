"""Fine-tuning: a new run that starts from another run's weights (``init_from: RUN_OR_CHECKPOINT``).

Weights only: the source's trained weights (its EMA's when it kept an average:
``Checkpoint.trained``) replace the freshly initialised ones before the first step; the optimiser,
the LR schedule and the step count start afresh, in a new run folder (``--resume`` continues the
fine-tuning run itself, from its own checkpoint). The source must be a checkpoint of the recipe's
kind, and every tensor must have the shape it has in the recipe's network; the first that differs
is named in one line, before any training.

One exception: a label table whose class count differs (a ViT's or CNN's ``head``, a class-
conditional denoiser's ``cond.class_emb``) keeps its fresh initialisation, so a model trained on
MNIST's ten digits can be fine-tuned on a folder of three classes; the note says so. An LDM's
denoiser only makes sense on the latents it was trained on, so the recipe's frozen VAE (and a text
model's CLIP) must be the source's own (vae.checkpoint: the source run's vae/ folder).

``fit`` applies it, reading ``init_from`` from ``meta["recipe"]``, so every training command has it
and a stage trained inside another run (an LDM's VAE) does not inherit its parent's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vdcli.checkpoint import load_checkpoint
from vdcli.errors import VdError
from vdcli.runs import find_checkpoint

# The class-count tables (rows = classes): re-initialised, not refused, when the count changes.
LABEL_TABLES = ("head.weight", "head.bias", "cond.class_emb.weight")
STAGES = ("vae", "clip")  # frozen stages an LDM (or ControlNet) depends on: they must be the source's


def init_from(model: nn.Module, source: str, kind: str, extra: dict | None = None) -> tuple[Path, str]:
    """Load ``source``'s trained weights into ``model`` (in place). Returns (the checkpoint, a note
    for the user: what was loaded and what was re-initialised)."""
    path, _ = find_checkpoint(source, kind)
    try:
        ckpt = load_checkpoint(path, expect=kind)
    except VdError as e:
        raise VdError(f"init_from: {e}") from None
    weights, own = ckpt.trained(), model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        where = "has no tensor" if missing else "has a tensor the recipe's network lacks:"
        raise VdError(f"init_from: {path} {where} {first}; it was trained with another model: section")
    fresh = []
    for key, tensor in own.items():
        theirs = weights[key]
        if theirs.shape == tensor.shape:
            continue
        if key in LABEL_TABLES and theirs.shape[1:] == tensor.shape[1:]:
            fresh.append(key)
            weights[key] = tensor  # the class count changed: this table starts from its initialisation
            continue
        raise VdError(f"init_from: {key} is {tuple(theirs.shape)} in {path} but {tuple(tensor.shape)} in the recipe's network; "
                      "use the source's model: section")
    _same_stages(ckpt, path, extra or {})
    model.load_state_dict(weights)
    note = f"init_from: weights of {path} (step {ckpt.meta.get('step', '?')}{', EMA' if ckpt.has('ema') else ''}), a fresh optimiser"
    if fresh:
        classes = len(own[fresh[0]])
        note += f"; the label table ({', '.join(fresh)}) re-initialised for {classes} rows (the class count changed)"
    return path, note


def _same_stages(ckpt, path: Path, extra: dict) -> None:
    for name in STAGES:
        if name not in extra or not ckpt.has(name):
            continue
        ours = extra[name].state_dict() if isinstance(extra[name], nn.Module) else extra[name]
        theirs = ckpt.weights(name)
        if ours.keys() != theirs.keys() or any(not torch.equal(ours[k].cpu(), theirs[k]) for k in ours):
            raise VdError(f"init_from: {path} was trained on the latents of another {name.upper()}; the recipe must use its own "
                          f"({name}.checkpoint: {path.parent / name} if the source trained it)")
