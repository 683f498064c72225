"""A U-Net denoiser for latent grids (Ho et al. 2020; Rombach et al. 2022), all of it in this file.

Read top to bottom: ``UNetConfig``, ``ResBlock`` (where time and class enter), ``SelfAttention``
(at the low resolutions), ``UNet``. The network maps a noisy latent x_t, its timestep t and a
class label y (``num_classes`` is the null label used for classifier-free guidance) to a
prediction with x_t's shape; what it predicts (ε or v) is the diffusion recipe's business.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vdcli.config import Section
from vdcli.models.embeddings import ConditionEmbedding


class UNetConfig(Section):
    channels: int = Field(64, gt=0)  # width at the input resolution
    channel_mult: list[int] = [1, 2]  # width multiplier per level; each level after the first halves the resolution
    blocks_per_level: int = Field(2, gt=0)
    attention_levels: list[int] = [1]  # levels (0 = input resolution) with self-attention
    heads: int = Field(4, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups where the width allows


class ResBlock(nn.Module):
    """Norm-SiLU-conv twice; the condition vector sets a per-channel scale and shift in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable deep training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W)  # (B, 3, h, d, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # 3 x (B, h, HW, d)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, d)
        return x + self.proj(y.transpose(-1, -2).reshape(B, C, H, W))


class Level(nn.Module):
    """The residual blocks (and attention) of one resolution."""

    def __init__(self, cins: list[int], cout: int, emb_dim: int, attention: bool, heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, cout, emb_dim, dropout) for c in cins)
        self.attns = nn.ModuleList(SelfAttention(cout, heads) if attention else nn.Identity() for _ in cins)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, image_size: int, in_channels: int, num_classes: int):
        super().__init__()
        levels = len(cfg.channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"a {image_size}x{image_size} input cannot be halved {levels - 1} times (model.channel_mult has {levels} levels)")
        self.cfg = cfg
        emb_dim = 4 * cfg.channels
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.cond = ConditionEmbedding(num_classes, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        # Down path: remember every output for the skip connections.
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [widths[0]], widths[0]
        for i, w in enumerate(widths):
            cins = [c] + [w] * (cfg.blocks_per_level - 1)
            self.down.append(Level(cins, w, emb_dim, i in cfg.attention_levels, cfg.heads, cfg.dropout))
            skips += [w] * cfg.blocks_per_level
            c = w
            last = i == levels - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)

        self.mid1 = ResBlock(c, c, emb_dim, cfg.dropout)
        self.mid_attn = SelfAttention(c, cfg.heads)
        self.mid2 = ResBlock(c, c, emb_dim, cfg.dropout)

        # Up path: one more block per level than down, each eating one skip.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            cins = []
            for _ in range(cfg.blocks_per_level + 1):
                cins.append(c + skips.pop())
                c = w
            self.up.append(Level(cins, w, emb_dim, i in cfg.attention_levels, cfg.heads, cfg.dropout))
            self.upsample.append(nn.Identity() if i == 0 else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))

        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # predicts 0 at initialisation
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.cond(t, y)  # (B, emb_dim)
        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)  # (B, C, H/2, W/2)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))
