"""A U-Net denoiser for latent grids (Ho et al. 2020; Rombach et al. 2022), all of it in this file.

Read top to bottom: ``UNetConfig``, ``ResBlock`` (where time and class enter), ``SelfAttention``
(at the low resolutions), ``Layer`` (the two together), ``Downsample`` / ``Upsample``, ``UNet``.

The network maps a noisy input x_t [B, C, H, W], its timestep t [B] and a class label y [B]
(label ``num_classes`` is the null label that classifier-free guidance needs; a model built with
num_classes = 0 is unconditional and takes no y) to a prediction
with x_t's shape; whether that is ε or v is the diffusion recipe's business, not the model's.

Its shape: ``channel_mult`` lists the levels, level 0 at the input resolution and each later
one at half the resolution of the one before. Going down, every layer's output is kept; going
up, every layer concatenates one of them (the skip connections), last kept, first used. In
between, at the lowest resolution, a middle block: residual block, self-attention, residual
block. Time and class enter every residual block as a per-channel scale and shift of its
normalised features (the "AdaGN" of Dhariwal & Nichol 2021).

At initialisation the last conv of every residual block, the output projection of every
attention and the final conv are all zero (as in Ho et al.'s code): each block starts as the
identity and the untrained network predicts exactly 0. One consequence: the first optimiser
step can move only the final conv; everything else receives gradient from the second on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from vdcli.conditioning import Cond
from vdcli.config import Section
from vdcli.models.attention import Attention, attend, merge_heads, split_heads
from vdcli.models.embeddings import ConditionEmbedding


class UNetConfig(Section):
    channels: int = Field(64, gt=0)  # width at the input resolution
    channel_mult: list[PositiveInt] = Field([1, 2], min_length=1)  # width multiplier per level; [1, 2] on 8x8 latents: 8x8 and 4x4
    blocks_per_level: int = Field(2, gt=0)  # residual blocks per level going down (one more going up)
    attention_levels: list[NonNegativeInt] | None = None  # levels with self-attention; None: the lowest resolution only
    heads: int = Field(4, gt=0)  # attention heads, in every attention layer
    dropout: float = Field(0.0, ge=0, lt=1)  # inside the residual blocks

    @model_validator(mode="after")
    def _levels_and_heads_fit(self) -> UNetConfig:
        levels = len(self.channel_mult)
        missing = sorted(i for i in self.attention_levels or [] if i >= levels)
        if missing:
            raise ValueError(f"model.attention_levels {missing} do not exist: model.channel_mult {self.channel_mult} "
                             f"has {levels} level(s), numbered 0 to {levels - 1}")
        attended = {self.channels * self.channel_mult[i] for i in self.attended_levels() | {levels - 1}}  # + the middle
        if any(w % self.heads for w in attended):
            raise ValueError(f"model.heads ({self.heads}) must divide the width of every level with attention, "
                             f"model.channels * model.channel_mult: {sorted(attended)}")
        return self

    def attended_levels(self) -> set[int]:
        """The levels whose layers have self-attention (the middle block always has it)."""
        if self.attention_levels is None:
            return {len(self.channel_mult) - 1}
        return set(self.attention_levels)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups (Wu & He 2018) where the width allows


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Norm-SiLU-conv twice, plus the input; the condition sets a per-channel scale and shift in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))  # the block starts as the identity
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        # norm2(h) * (1 + scale) + shift, with 1 + scale so that a zero scale leaves the features
        # alone; norm2's own affine is folded into the per-sample scale and shift, so the feature
        # map is passed over twice (normalise, multiply-add) instead of four times.
        gain = self.norm2.weight[:, None, None] * (1 + scale)  # (B, cout, 1, 1)
        bias = torch.addcmul(shift, self.norm2.bias[:, None, None], 1 + scale)  # (B, cout, 1, 1)
        h = torch.addcmul(bias, F.group_norm(h, self.norm2.num_groups, eps=self.norm2.eps), gain)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention among the H*W positions of a feature map, plus the input.

    Why not ``attention.Attention``: its parameters are 1x1 convs, ``qkv.weight`` [3C, C, 1, 1]
    and ``proj.weight`` [C, C, 1, 1] (as in Ho et al.'s code), where ``Attention`` holds Linear
    weights [3C, C] and [C, C]; and it owns a GroupNorm and the residual over a feature map.
    Wrapping ``Attention`` would change the state dict's keys (``attn.qkv`` ->
    ``attn.attn.qkv``) and shapes, and every U-Net checkpoint with them. What is shared is
    the attention itself: the same ``split_heads`` / ``merge_heads`` and the same ``attend``.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        # The 1x1 convs are linear maps of each position's features, and computed as such on the
        # tokens: q, k and v then come out with the head width contiguous, the layout the fused
        # attention kernels need (strided ones fall back to the unfused math, on the CPU too).
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)  # (B, HW, 3C)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))  # 3 x (B, nh, HW, hs)
        y = merge_heads(attend(q, k, v))  # (B, HW, C)
        out = F.linear(y, self.proj.weight.flatten(1), self.proj.bias)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class CrossAttention(nn.Module):
    """The feature map's H*W positions attend to the context tokens (Rombach et al. 2022, sec. 3.3), plus the input."""

    def __init__(self, channels: int, heads: int, context_dim: int):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = Attention(channels, heads, context_dim=context_dim)
        _zero(self.attn.proj)  # starts as the identity, like every other block here

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        y = self.attn(tokens, context, context_mask)  # (B, HW, C)
        return x + y.transpose(1, 2).reshape(B, C, H, W)


class Layer(nn.Module):
    """A residual block, then self-attention if its level has any (and cross-attention to the
    context if the model has one): one skip connection's worth."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, heads: int | None,
                 context_dim: int | None = None):
        super().__init__()
        self.block = ResBlock(cin, cout, emb_dim, dropout)
        self.attn = SelfAttention(cout, heads) if heads else nn.Identity()
        if heads and context_dim:  # only then: a class model's state dict keeps its keys
            self.cross = CrossAttention(cout, heads, context_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attn(self.block(x, emb))
        return self.cross(h, context, context_mask) if hasattr(self, "cross") else h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour doubling, then a conv: no checkerboard artefacts of transposed convs."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """(x_t [B, C, S, S], t [B], cond) -> [B, C, S, S]."""

    def __init__(self, cfg: UNetConfig, image_size: int, in_channels: int, num_classes: int,
                 context_dim: int | None = None):
        super().__init__()
        levels = len(cfg.channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"a {image_size}x{image_size} input cannot be halved {levels - 1} times "
                             f"(model.channel_mult has {levels} levels); use fewer levels or a larger input")
        self.cfg = cfg
        emb_dim = 4 * cfg.channels  # as in Ho et al.
        widths = [cfg.channels * m for m in cfg.channel_mult]
        attended = cfg.attended_levels()

        def make_layer(cin: int, cout: int, level: int) -> Layer:
            return Layer(cin, cout, emb_dim, cfg.dropout, cfg.heads if level in attended else None, context_dim)

        self.context_dim = context_dim
        self.cond = ConditionEmbedding(num_classes, emb_dim, text_dim=context_dim)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        # Down: every output, conv_in's included, is a skip; note their widths for the up path.
        self.down = nn.ModuleList()
        c = widths[0]
        skips = [c]
        for i, w in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                self.down.append(make_layer(c, w, i))
                c = w
                skips.append(c)
            if i < levels - 1:
                self.down.append(Downsample(c))
                skips.append(c)

        # The middle always attends, whatever attention_levels says: at the lowest resolution it is cheap.
        self.mid1 = Layer(c, c, emb_dim, cfg.dropout, cfg.heads, context_dim)
        self.mid2 = Layer(c, c, emb_dim, cfg.dropout, None)

        # Up: one layer more per level than down, so that every skip is used exactly once.
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(make_layer(c + skips.pop(), w, i))
                c = w
            if i > 0:
                self.up.append(Upsample(c))

        self.norm_out = _norm(c)
        self.conv_out = _zero(nn.Conv2d(c, in_channels, 3, padding=1))  # the untrained model predicts 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None = None,
                control: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, C, H, W]; t [B] integer or fractional timesteps; ``cond`` what the model was built to
        read (``conditioning.Cond``): ``labels`` [B] in 0..num_classes (the null) for a class model;
        for a model built with ``context_dim`` (text), ``states`` [B, L, context_dim], the text
        encoder's token states, with ``mask`` [B, L] (True = a real token) and optionally ``pooled``
        [B, context_dim], the whole prompt's state, added to the time embedding; None for a model
        built with neither.

        ``control``: a ControlNet's residuals (Zhang et al. 2023, sec. 3.2), one per skip
        connection in the order the down path makes them, then one for the middle block's output;
        each is added to what it matches before the up path reads it.
        """
        # Ho et al. apply this SiLU in every block, before its projection of emb: the same function, computed once.
        cond = cond if cond is not None else Cond()
        context, context_mask = cond.states, cond.mask
        if (context is None) != (self.context_dim is None):
            raise ValueError("this U-Net was built " + ("with a context_dim: give it a context" if context is None
                                                        else "without a context_dim (no text conditioning)"))
        emb = F.silu(self.cond(t, cond.labels, cond.pooled))  # (B, emb_dim)
        h = self.conv_in(x)  # (B, widths[0], H, W)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb, context, context_mask)
            skips.append(h)
        h = self.mid2(self.mid1(h, emb, context, context_mask), emb)  # (B, widths[-1], H / 2^(levels-1), W / 2^(levels-1))
        if control is not None:
            if len(control) != len(skips) + 1:
                raise ValueError(f"control has {len(control)} residuals; this U-Net needs {len(skips) + 1}")
            skips = [s + c for s, c in zip(skips, control)]
            h = h + control[-1]
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else layer(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
