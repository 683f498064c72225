"""Sweep grids (``vd sample --sweep``): one sampling option varied along each of one or two axes,
everything else held, as AUTOMATIC1111's "X/Y plot" does.

Conventions:
- An axis is a key of ``KEYS`` and its values, in the order given (repeats allowed: two equal
  columns are a check that only the swept value changes).
- Every cell is made by exactly the computation a plain ``vd sample`` with the cell's options
  makes (``cell``): the same seed, the same initial draw, the same batch. So the cell whose
  values equal a plain sample's options is that sample's image, bit for bit, and cells differ
  only where the swept value differs (a ``seed`` axis changes the noise on purpose).
- Layout. One axis: a column per value, a row per image of the plain sample (each request's
  ``n`` images, request by request), so a row reads "the same noise, the value changing" and
  several classes or prompts show the value's effect on each. Two axes: a row per value of the
  first, a column per value of the second, one image per cell (one request, n = 1): a third
  dimension in one picture would be unreadable.
- The grid is uint8 [rows, cols, C, H, W]; ``save_sweep`` labels rows and columns "key=value".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vdcli import images
from vdcli.tasks.controlnet import control_grid
from vdcli.tasks.ldm import LDM, _short, generate_batched, image_to_image

# key -> the type of its values; "control-scale" and "prompt" need --controlnet and a text model
KEYS = {"guidance": float, "steps": int, "sampler": str, "eta": float, "seed": int, "strength": float,
        "control-scale": float, "prompt": str}


@dataclass
class Axis:
    key: str  # one of KEYS
    values: list  # of KEYS[key]

    def labels(self) -> list[str]:
        return [f"{self.key}={_short(v, 24) if isinstance(v, str) else f'{v:g}'}" for v in self.values]


@dataclass
class Plain:
    """The options of one plain ``vd sample``; steps and eta None: the sampler's defaults (``resolved``)."""

    requests: list  # one class index or prompt per request
    n: int
    batch_size: int
    seed: int
    sampler: str
    steps: int | None
    eta: float | None
    guidance: float
    spacing: str | None = None
    negative: str | None = None
    strength: float | None = None  # with an init image
    control_scale: float = 1.0  # with a ControlNet


def cell(ldm: LDM, plain: Plain, *, image: torch.Tensor | None = None, controlled=None,
         hint: torch.Tensor | None = None) -> torch.Tensor:
    """The images (uint8 [len(requests) · n, C, H, W]) that plain ``vd sample`` makes with ``plain``:
    from noise, from ``image`` (uint8 [C, H, W], SDEdit), or steered by ``controlled`` with the map ``hint``."""
    steps, eta = resolved(ldm, plain)
    options = dict(sampler=plain.sampler, steps=steps, eta=eta, guidance=plain.guidance, spacing=plain.spacing)
    if image is not None:
        made = image_to_image(ldm, image, plain.requests[0], [plain.strength], n=plain.n, negative=plain.negative,
                              seed=plain.seed, **options)  # (n, 1, C, H, W)
        return made[:, 0]
    if controlled is not None:  # as vd sample --controlnet makes them: one batch per map
        return control_grid(controlled, [hint], plain.requests, plain.n, seed=plain.seed, scale=plain.control_scale,
                            negative=plain.negative, **options)[0]
    wanted = ldm.conditioning.repeat(plain.requests, plain.n)
    negative = None if plain.negative is None else [plain.negative] * len(wanted)
    samples, _ = generate_batched(ldm, wanted, plain.batch_size, generator=torch.Generator().manual_seed(plain.seed),
                                  negative=negative, quiet=True, **options)
    return samples


def resolved(ldm: LDM, plain: Plain) -> tuple[int, float]:
    """(steps, eta) as plain ``vd sample`` defaults them: the recipe's steps (all T for DDPM), the
    recipe's eta for DDIM (0 for the others, which take none)."""
    steps = plain.steps or (ldm.schedule.T if plain.sampler == "ddpm" else ldm.defaults.steps)
    eta = plain.eta if plain.eta is not None else (ldm.defaults.eta if plain.sampler == "ddim" else 0.0)
    return steps, eta


def with_value(plain: Plain, key: str, value) -> Plain:
    """``plain`` with one swept value."""
    field = {"control-scale": "control_scale", "prompt": "requests"}.get(key, key)
    return Plain(**{**plain.__dict__, field: [value] if key == "prompt" else value})


def sweep(ldm: LDM, axes: list[Axis], plain: Plain, **where) -> torch.Tensor:
    """The sweep grid, uint8 [rows, cols, C, H, W] (the layout of the module docstring); ``where``:
    ``image`` or ``controlled`` and ``hint``, as ``cell`` takes them."""
    if len(axes) == 1:
        (axis,) = axes
        columns = [cell(ldm, with_value(plain, axis.key, v), **where) for v in axis.values]  # each (R · n, C, H, W)
        return torch.stack(columns, dim=1)  # (R · n, cols, C, H, W)
    first, second = axes
    rows = []
    for a in first.values:
        row = with_value(plain, first.key, a)
        rows.append(torch.cat([cell(ldm, with_value(row, second.key, b), **where) for b in second.values]))  # (cols, C, H, W)
    return torch.stack(rows)  # (rows, cols, C, H, W)


def row_labels(axes: list[Axis], names: list[str], n: int) -> list[str]:
    """One axis: each row names its request (and which of its n images); two: the first axis' values."""
    if len(axes) == 2:
        return axes[0].labels()
    if axes[0].key == "prompt":
        return [f"image {i}" for i in range(n)]
    return [_short(name) if n == 1 else f"{_short(name)} #{i}" for name in names for i in range(n)]


def save_sweep(grid: torch.Tensor, axes: list[Axis], names: list[str], n: int, out: Path, meta: dict | None = None) -> Path:
    """sweep.png: the grid with a label "key=value" at every row and column."""
    rows, cols = grid.shape[:2]
    picture = images.grid(grid.flatten(0, 1), nrow=cols)
    labelled = images.with_row_labels(picture, row_labels(axes, names, n), picture.height // rows)
    labelled = images.with_column_labels(labelled, axes[-1].labels(), picture.width // cols, left=labelled.width - picture.width)
    out.mkdir(parents=True, exist_ok=True)
    return images.save(labelled, out / "sweep.png", None if meta is None else {**meta, "file": "sweep.png"})
