"""ControlNet (Zhang, Rao & Agrawala 2023): a spatial condition added to a frozen denoiser.

For a U-Net base, ``ControlNet`` is a trainable copy of the base's encoder (its time/class
embedding, ``conv_in``, the down path and the middle block), initialised from the base's weights
(sec. 3.1). A control map c_f (edges, a scribble, a depth-like map at pixel resolution) is
brought to the latent grid by a small convolutional encoder E (sec. 3.2: four convs with SiLU in
the paper's 512 -> 64 case; here one stride-2 conv per halving), and enters the copy as

    h_0 = conv_in(z_t) + E(c_f),

The copy's outputs reach the base through zero-initialised 1×1 convolutions Z, one per skip
connection and one for the middle block (sec. 3.1, eq. 2):

    y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2),

which the base adds to its skips before the up path reads them (``UNet.forward(control=...)``).
E's last conv is zero too, so at initialisation every residual is exactly zero and the
controlled model is exactly the base; gradients still reach every weight from the first step
(a zero conv has zero output but non-zero gradient with respect to its weights).

For a DiT base, ``DiTControlNet`` is the same construction for a transformer: a copy of its first
blocks, the map entering as patch tokens, the copy's block outputs entering the base's through
zero-initialised linear layers (``DiT.forward(control=...)``). ``controlnet_for`` picks the one
that fits a base.

``Controlled`` wraps base and ControlNet with one control map and a ``scale`` into a module with
the base's call signature, ``net(x_t, t, cond)``, so that guidance, inpainting and image-to-image
use it unchanged.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from vdcli.conditioning import Cond
from vdcli.models.dit import DiT
from vdcli.models.unet import Downsample, UNet, _zero


class HintEncoder(nn.Module):
    """Control map [B, 1, H, W] in [0, 1] -> features [B, width, H / f, W / f] (the latent grid)."""

    def __init__(self, factor: int, width: int, hidden: int = 16):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"the pixel-to-latent factor must be a power of 2, got {factor}")
        layers: list[nn.Module] = [nn.Conv2d(1, hidden, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(factor))):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1, stride=2), nn.SiLU()]
        layers.append(_zero(nn.Conv2d(hidden, width, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.net(hint)


class ControlNet(nn.Module):
    """(z_t, t, hint, cond) -> the residuals ``UNet.forward(control=...)`` takes."""

    def __init__(self, base: UNet, factor: int):
        super().__init__()
        self.cond = copy.deepcopy(base.cond)
        self.conv_in = copy.deepcopy(base.conv_in)
        self.down = copy.deepcopy(base.down)
        self.mid1, self.mid2 = copy.deepcopy(base.mid1), copy.deepcopy(base.mid2)
        self.context_dim = base.context_dim
        self.hint = HintEncoder(factor, base.conv_in.out_channels)
        widths = [base.conv_in.out_channels]
        for layer in base.down:
            widths.append(widths[-1] if isinstance(layer, Downsample) else layer.block.conv1.out_channels)
        widths.append(widths[-1])  # the middle block keeps the lowest level's width
        self.zero = nn.ModuleList(_zero(nn.Conv2d(w, w, 1)) for w in widths)

    def forward(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, cond: Cond | None = None) -> list[torch.Tensor]:
        cond = cond if cond is not None else Cond()
        context, context_mask = cond.states, cond.mask
        emb = F.silu(self.cond(t, cond.labels, cond.pooled))  # (B, emb_dim)
        h = self.conv_in(x) + self.hint(hint)  # (B, widths[0], h, w)
        outs = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb, context, context_mask)
            outs.append(h)
        outs.append(self.mid2(self.mid1(h, emb, context, context_mask), emb))
        return [zero(o) for zero, o in zip(self.zero, outs)]


class DiTControlNet(nn.Module):
    """(z_t, t, cond, hint) -> one residual per copied block, for ``DiT.forward(control=...)``.

    The transformer form of the same idea (Zhang et al. 2023, sec. 3; as PixArt-δ's ControlNet-
    Transformer, Chen et al. 2024, sec. 3.2, builds it for DiT): a trainable copy of the base's
    condition embedding, patch and position embedding and of its first ``blocks`` blocks. The map
    enters as patch tokens: E halves it down to the base's patch grid (factor · patch_size) with
    the tokens' width, its last conv zero-initialised,

        h_0 = PatchEmbed(z_t) + pos + E(c_f),

    and the copy's block i output reaches the base through a zero-initialised linear layer Z_i,
    added to the output of the base's block i. At initialisation every residual is exactly zero,
    so the controlled model is exactly the base.
    """

    def __init__(self, base: DiT, factor: int, blocks: int | None = None):
        super().__init__()
        blocks = blocks or max(1, len(base.blocks) // 2)
        if not 1 <= blocks <= len(base.blocks):
            raise ValueError(f"a DiT ControlNet copies 1 to {len(base.blocks)} blocks of its base, not {blocks}")
        self.cond = copy.deepcopy(base.cond)
        self.patch_embed = copy.deepcopy(base.patch_embed)
        self.pos_embed = copy.deepcopy(base.pos_embed)
        self.blocks = copy.deepcopy(base.blocks[:blocks])
        self.context_dim = base.context_dim
        dim, p = base.cfg.dim, base.cfg.patch_size
        self.hint = HintEncoder(factor * p, dim)  # map -> (B, dim, S/p, S/p): one token per patch, zero at first
        self.zero = nn.ModuleList(_zero(nn.Linear(dim, dim)) for _ in range(blocks))

    def forward(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, cond: Cond | None = None) -> list[torch.Tensor]:
        cond = cond if cond is not None else Cond()
        c = self.cond(t, cond.labels, cond.pooled)  # (B, dim)
        hint_tokens = self.hint(hint).flatten(2).transpose(1, 2)  # (B, N, dim)
        h = self.patch_embed(x) + self.pos_embed + hint_tokens  # (B, N, dim)
        outs = []
        for block, zero in zip(self.blocks, self.zero):
            h = block(h, c, cond.states, cond.mask)
            outs.append(zero(h))
        return outs


def controlnet_for(base: nn.Module, factor: int) -> nn.Module:
    """The ControlNet that fits a base denoiser: a copy of a U-Net's encoder, or of a DiT's first blocks."""
    if isinstance(base, DiT):
        return DiTControlNet(base, factor)
    return ControlNet(base, factor)


class Controlled(nn.Module):
    """The base denoiser (U-Net or DiT) steered by a ControlNet and one control map, with the base's signature.

    ``hint`` [1 or B, 1, H, W] is repeated over the batch it meets (a guided batch is twice the
    images); ``scale`` multiplies every residual: 0 is the base model, 1 the trained control.
    """

    def __init__(self, base: UNet, controlnet: ControlNet, hint: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.base, self.controlnet, self.scale = base, controlnet, scale
        self.register_buffer("hint_map", hint, persistent=False)
        self.context_dim = base.context_dim

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        hint = self.hint_map
        if hint.shape[0] != x.shape[0]:
            hint = hint.repeat(x.shape[0] // hint.shape[0], 1, 1, 1)
        control = None
        if self.scale:
            residuals = self.controlnet(x, t, hint, cond)
            control = [self.scale * r for r in residuals]
        return self.base(x, t, cond, control=control)
