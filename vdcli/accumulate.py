"""Gradient accumulation: one optimiser step from a batch run through the network in micro-batches.

``train.micro_batch`` rows go through the network at a time; each micro-batch's mean loss is
scaled by its share of the per-process batch (rows / batch), so the summed gradient is the
gradient of the whole batch's mean loss, and the trainer takes one optimiser step. Under torchrun
every micro-batch but the last runs inside DDP's ``no_sync()``, so the gradients are all-reduced
once per step (Goyal et al. 2017 on the large-batch equivalence; diffusers #8960 for the trap of
scaling the loss wrongly).

The random draws. A loss function draws its noise per batch (``torch.randn_like(x0)``, a time
step and a label drop per row) from the global RNG, which the trainer seeds from (seed, step).
Drawn per micro-batch, rows would get other noise than in the unsplit step, and the gradients
would differ by far more than rounding. So every micro-batch replays the unsplit step's draws:
the RNG is reseeded from (seed, step) before each micro-batch, and while it runs
(``WholeBatchDraws``) every random draw whose first dimension is the micro-batch's row count is
drawn for the whole per-process batch and sliced to the micro-batch's rows. Each micro-batch makes
the same sequence of calls as the unsplit step, so draw i of micro-batch k is rows k*m:(k+1)*m of
draw i of the unsplit step, bitwise, and loss, gradients and weights equal the unsplit batch's to
float tolerance (summation order). The cost: each micro-batch draws the whole batch's random
numbers, which is small next to the network.

What this covers: ``torch.randn/rand/randint`` and their ``_like`` forms, ``torch.bernoulli``
and ``nn.Dropout`` (``F.dropout``). What it cannot: a draw whose batch is not its first dimension
(``random_shift``'s (2, B, 1) offsets, so ``data.shift``) and the dropout inside fused attention
(``scaled_dot_product_attention``'s ``dropout_p``); with those a split step is a valid step drawn
differently, not the unsplit one. CLIP's contrastive loss compares every image with every
caption of the batch, so it is not a mean over rows and cannot be split (the recipe refuses it).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SIZED = {torch.randn, torch.rand, torch.randint}  # the size is an argument
_LIKE = {torch.randn_like, torch.rand_like, torch.randint_like, torch.bernoulli}  # the size is the first tensor's


def micro_batches(rows: int, micro: int | None) -> list[slice]:
    """The row ranges of a per-process batch of ``rows`` split into micro-batches of ``micro``."""
    micro = micro or rows
    return [slice(i, min(i + micro, rows)) for i in range(0, rows, micro)]


class WholeBatchDraws(TorchFunctionMode):
    """Inside the block, a random draw of a micro-batch's rows ``part`` of a ``rows``-row batch is
    the whole batch's draw, sliced to ``part``."""

    def __init__(self, part: slice, rows: int):
        super().__init__()
        self.part, self.rows, self.n = part, rows, part.stop - part.start

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SIZED:
            size, rebuild = _size_of(func, args, kwargs)
            if size and size[0] == self.n:
                return func(*rebuild((self.rows, *size[1:])), **{k: v for k, v in kwargs.items() if k != "size"})[self.part]
        elif func in _LIKE and args and isinstance(args[0], torch.Tensor) and args[0].ndim and len(args[0]) == self.n:
            x = args[0]
            whole = x.new_empty((self.rows, *x.shape[1:])) if func is not torch.bernoulli else _grow(x, self.rows, self.part)
            return func(whole, *args[1:], **kwargs)[self.part]
        elif func is F.dropout:
            x, p, training = _dropout_args(args, kwargs)
            if training and p > 0 and x.ndim and len(x) == self.n:
                mask = func(x.new_ones((self.rows, *x.shape[1:])), p, True)[self.part]  # the whole batch's mask, scaled by 1/(1-p)
                return x * mask
        return func(*args, **kwargs)


def _size_of(func, args: tuple, kwargs: dict):
    """(the size a sized draw asks for, a function giving its positional args for another size)."""
    if func is torch.randint:  # randint(high, size) or randint(low, high, size)
        if "size" in kwargs:
            return tuple(kwargs["size"]), lambda s: (*args, s)
        return tuple(args[-1]), lambda s: (*args[:-1], s)
    if "size" in kwargs:
        return tuple(kwargs["size"]), lambda s: (s,)
    if args and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0]), lambda s: (s, *args[1:])
    ints = tuple(a for a in args if isinstance(a, int))  # randn(2, 3)
    return (ints, lambda s: (s,)) if len(ints) == len(args) else ((), None)


def _grow(x: torch.Tensor, rows: int, part: slice) -> torch.Tensor:
    """Bernoulli probabilities for the whole batch: this micro-batch's at its rows, 0.5 elsewhere
    (the other rows' values are thrown away; only the RNG's consumption has to match)."""
    whole = torch.full((rows, *x.shape[1:]), 0.5, dtype=x.dtype, device=x.device)
    whole[part] = x
    return whole


def _dropout_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, float, bool]:
    names = ("input", "p", "training")
    defaults = {"p": 0.5, "training": True}
    values = {**defaults, **dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
    return values["input"], values["p"], values["training"]


@contextlib.contextmanager
def whole_batch_draws(part: slice, rows: int) -> Iterator[None]:
    """``WholeBatchDraws`` when the batch is split; nothing at all when it is not (the unsplit
    path stays bitwise what it was)."""
    if part.start == 0 and part.stop == rows:
        yield
        return
    with WholeBatchDraws(part, rows):
        yield
