"""A DiT denoiser (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"), all of it here.

A ViT over latent patches: the same ``PatchEmbed``, vd's one ``Attention`` (``attention.py``)
and the ViT's ``MLP``. What is new is how time t and class y enter (sec. 3.2, "adaLN-Zero"):
``ConditionEmbedding`` turns (t, y) into one vector c, and every block regresses from c a shift,
a scale and a gate for each of its two branches:

    x = x + gate_1 * Attention(LN(x) * (1 + scale_1) + shift_1)
    x = x + gate_2 * MLP(LN(x) * (1 + scale_2) + shift_2)

with LayerNorms that have no affine parameters of their own (c provides them). The final layer is
an adaLN LayerNorm (shift, scale) and a linear map back to C*P*P values per patch, unpatchified.

At initialisation the regressions and the final linear are zero (the "-Zero"): every block is the
identity and the output is exactly zero, so an untrained ε-predictor says "no noise". One
consequence worth knowing: the first optimiser step can only move the final linear (everything
upstream is multiplied by its zero weights); the gates and the conditioning receive gradient
from the second step on.

Same call as the U-Net, ``model(x, t, cond)`` (``conditioning.Cond``), so ``model.arch`` can pick either.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from vdcli.conditioning import Cond
from vdcli.config import Section
from vdcli.models.attention import Attention
from vdcli.models.embeddings import ConditionEmbedding
from vdcli.models.patches import PatchEmbed, unpatchify
from vdcli.models.vit import MLP, trunc_normal_


class DiTConfig(Section):
    patch_size: int = Field(2, gt=0)  # on the latent grid: 8x8 latents -> 4x4 = 16 tokens
    dim: int = Field(192, gt=0)  # token width
    depth: int = Field(6, gt=0)  # DiT blocks
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)  # MLP hidden width = mlp_ratio * dim

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DiTConfig:
        if self.dim % self.heads:
            raise ValueError(f"model.dim ({self.dim}) must be a multiple of model.heads ({self.heads})")
        return self


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, T, dim] scaled and shifted per sample by [B, dim]; 1 + scale so that scale = 0 is the identity."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """A pre-norm transformer block whose norms, and residual gates, are set by the condition c."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))  # c -> 2 x (shift, scale, gate)
        if context_dim:  # DiT's "cross-attention block" (sec. 3.2), between self-attention and MLP; class models have none
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, context_dim=context_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # 6 x (B, dim)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if hasattr(self, "cross"):
            x = x + self.cross(self.norm_cross(x), context, context_mask)  # (B, N, dim): tokens read the prompt
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N, dim)


class DiT(nn.Module):
    """(x_t [B, C, S, S], t [B] int or float, cond) -> [B, C, S, S]: ``cond.labels`` [B] long in 0..num_classes.

    y = num_classes is the null class ("no condition") that classifier-free guidance needs; a DiT
    built with num_classes = 0 is unconditional and takes no y.
    """

    def __init__(self, cfg: DiTConfig, image_size: int, in_channels: int, num_classes: int,
                 context_dim: int | None = None):
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(f"latent size {image_size} is not a multiple of model.patch_size {cfg.patch_size}")
        self.cfg, self.image_size, self.in_channels = cfg, image_size, in_channels
        self.num_patches = (image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg.patch_size, in_channels, cfg.dim)
        # Learnable like the ViT's, where DiT uses fixed 2-D sin-cos: on latent grids of a few
        # dozen tokens, learning one vector per position is cheap and needs no extra code.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, cfg.dim))
        self.context_dim = context_dim
        self.cond = ConditionEmbedding(num_classes, cfg.dim, text_dim=context_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, context_dim) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))  # c -> final (shift, scale)
        self.out = nn.Linear(cfg.dim, in_channels * cfg.patch_size**2)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the DiT reference code: Xavier-uniform linears and zero biases in the transformer
        # (the condition embedding keeps its own init, shared with the U-Net), then adaLN-Zero.
        for module in [self.patch_embed, *self.blocks, self.out]:
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        trunc_normal_(self.pos_embed)
        cross = [block.cross.proj for block in self.blocks if hasattr(block, "cross")]  # a text model starts as the class-free one
        for layer in [*(block.ada[1] for block in self.blocks), self.ada[1], self.out, *cross]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | None = None,
                control: list[torch.Tensor] | None = None) -> torch.Tensor:
        """As the U-Net's: ``cond`` holds labels for a class model, or for a model built with
        ``context_dim`` the text's token ``states`` [B, L, context_dim], their ``mask`` [B, L] and
        optionally ``pooled`` [B, context_dim]. ``control``: a DiT ControlNet's residuals, one per
        block from the first on (``models/controlnet.py``), each added to that block's output."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this DiT was built for {self.image_size}x{self.image_size} latents, got {x.shape[-2]}x{x.shape[-1]}")
        cond = cond if cond is not None else Cond()
        context, context_mask = cond.states, cond.mask
        if (context is None) != (self.context_dim is None):
            raise ValueError("this DiT was built " + ("with a context_dim: give it a context" if context is None
                                                      else "without a context_dim (no text conditioning)"))
        c = self.cond(t, cond.labels, cond.pooled)  # (B, dim)
        h = self.patch_embed(x) + self.pos_embed  # (B, N, dim)
        control = control or []
        if len(control) > len(self.blocks):
            raise ValueError(f"control has {len(control)} residuals; this DiT has {len(self.blocks)} blocks")
        for i, block in enumerate(self.blocks):
            h = block(h, c, context, context_mask)
            if i < len(control):
                h = h + control[i]
        shift, scale = self.ada(c).chunk(2, dim=-1)  # 2 x (B, dim)
        h = self.out(modulate(self.norm(h), shift, scale))  # (B, N, C*P*P)
        return unpatchify(h, self.cfg.patch_size, self.in_channels, self.image_size, self.image_size)  # (B, C, S, S)
