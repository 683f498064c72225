"""A DiT denoiser (Peebles & Xie 2023): a ViT over latent patches, conditioned by adaptive LayerNorm.

It reuses the ViT's ``Attention`` and ``MLP`` and the same ``PatchEmbed``; what is new is how
time and class enter. Each block regresses a shift, a scale and a gate for its two branches from
the condition vector (adaLN-Zero): the gates start at zero, so every block starts as the
identity and the untrained model predicts zero.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from vdcli.config import Section
from vdcli.models.embeddings import ConditionEmbedding
from vdcli.models.patches import PatchEmbed, unpatchify
from vdcli.models.vit import MLP, Attention


class DiTConfig(Section):
    patch_size: int = Field(2, gt=0)
    dim: int = Field(192, gt=0)
    depth: int = Field(6, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DiTConfig:
        if self.dim % self.heads:
            raise ValueError(f"model.dim ({self.dim}) must be a multiple of model.heads ({self.heads})")
        return self


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: gates (and shifts, scales) start at 0
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # 6 x (B, dim)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig, image_size: int, in_channels: int, num_classes: int):
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(f"latent size {image_size} is not a multiple of model.patch_size {cfg.patch_size}")
        self.cfg, self.image_size, self.in_channels = cfg, image_size, in_channels
        self.patch_embed = PatchEmbed(cfg.patch_size, in_channels, cfg.dim)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // cfg.patch_size) ** 2, cfg.dim) * 0.02)
        self.cond = ConditionEmbedding(num_classes, cfg.dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.out = nn.Linear(cfg.dim, in_channels * cfg.patch_size**2)
        for layer in (self.ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.cond(t, y)  # (B, dim)
        h = self.patch_embed(x) + self.pos_embed  # (B, N, dim)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm(h), shift, scale))  # (B, N, C*P*P)
        return unpatchify(h, self.cfg.patch_size, self.in_channels, self.image_size, self.image_size)
