"""The Vision Transformer classifier of Dosovitskiy et al. 2021, all of it in this file.

Read top to bottom: ``ViTConfig``, ``Attention``, ``MLP``, ``Block``, ``ViT``, and
``attention_rollout`` for looking inside a trained model. An image becomes N patch tokens
(``patches.PatchEmbed``); ``ViT.forward`` prepends the learnable class token, adds the learnable
position embedding (eq. 1 of the paper), runs pre-norm encoder blocks (eq. 2-3) and classifies
the class token's final state (eq. 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from vdcli.config import Section
from vdcli.models.patches import PatchEmbed


class ViTConfig(Section):
    patch_size: int = Field(4, gt=0)
    dim: int = Field(128, gt=0)  # token width
    depth: int = Field(6, gt=0)  # encoder blocks
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(2.0, gt=0)  # MLP hidden width = mlp_ratio * dim
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ViTConfig:
        if self.dim % self.heads:
            raise ValueError(f"model.dim ({self.dim}) must be a multiple of model.heads ({self.heads})")
        return self


class Attention(nn.Module):
    """Multi-head self-attention. Returns the attention probabilities only when asked.

    Without them it calls ``scaled_dot_product_attention`` (fused kernels on GPU); with them it
    computes softmax(QK^T / sqrt(d)) explicitly. Both paths compute the same function.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        if need_weights:
            probs = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, h, T, T)
            y = F.dropout(probs, self.dropout, self.training) @ v
        else:
            probs = None
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return (y, probs) if need_weights else y


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        if need_weights:
            a, probs = self.attn(self.norm1(x), need_weights=True)
        else:
            a, probs = self.attn(self.norm1(x)), None
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return (x, probs) if need_weights else x


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig, image_size: int, in_channels: int, num_classes: int):
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of model.patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.grid_size = image_size // cfg.patch_size  # patches per side
        self.num_patches = self.grid_size**2
        self.patch_embed = PatchEmbed(cfg.patch_size, in_channels, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, cfg.dim))  # position 0: the class token
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_classes)
        self.apply(_init)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, N, dim)
        cls = self.cls_token.expand(len(x), -1, -1)  # (B, 1, dim)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + N, dim)

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        x = self.tokens(images)
        attentions = []
        for block in self.blocks:
            if return_attention:
                x, probs = block(x, need_weights=True)
                attentions.append(probs)
            else:
                x = block(x)
        logits = self.head(self.norm(x[:, 0]))  # (B, classes), from the class token
        return (logits, attentions) if return_attention else logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The normed class-token state [B, dim]: the representation the head classifies."""
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def attention_rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each output token draws on each input token.

    Per layer: fuse the heads (mean, max or min), optionally zero the weakest ``discard_ratio``
    of the weights (the class token's own column is always kept), add the identity for the
    residual connection, renormalise each row to sum to 1; then multiply the layers together.
    attentions: per layer [B, h, T, T] -> [B, T, T]. Row 0 is the class token's view.
    """
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}[head_fusion]
    result = None
    for layer in attentions:
        a = fuse(layer.float())  # (B, T, T)
        if discard_ratio > 0:
            flat = a.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                weakest = flat.topk(k, dim=1, largest=False).indices
                keep_cls = a[:, :, 0].clone()
                a = flat.scatter(1, weakest, 0.0).view_as(a)
                a[:, :, 0] = keep_cls
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result
