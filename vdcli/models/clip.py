"""CLIP, contrastive language–image pre-training (Radford et al. 2021), small, all of it in this file.

Read top to bottom: ``TextConfig``, ``CLIPConfig``, ``TextBlock``, ``TextTransformer``, ``CLIP``,
``clip_loss``.

- Image tower: vd's ViT (``models/vit.py``), whose linear head is CLIP's image projection W_i:
  the normed class-token state -> the joint embedding space.
- Text tower (the paper's sec. 2.4, as in GPT-2): token + position embeddings, pre-norm blocks
  with a causal mask (vd's one ``Attention``, ``causal=True``), a final LayerNorm. The state at
  the end-of-text token (``[END]``, the last real token, see ``tokenizer.py``) sees the whole
  prompt; projected by W_t it is the text's embedding. ``TextTransformer.attention_maps`` gives
  each layer's probabilities. The token states before projection are what a text-conditioned denoiser attends to.
- Both embeddings are L2-normalised; logits = exp(t) · I_e T_e^T with a learned temperature t,
  initialised to log(1 / 0.07) and clipped so that exp(t) ≤ 100 (sec. 2.5).
- The loss is the symmetric cross-entropy of the paper's fig. 3: each image must pick its own
  caption among the batch's, and each caption its image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from vdcli.config import Section
from vdcli.models.attention import Attention
from vdcli.models.vit import MLP, ViT, ViTConfig, _init_linear, trunc_normal_


class TextConfig(Section):
    dim: int = Field(64, gt=0)  # token width: also the width of the states a text-conditioned denoiser reads
    depth: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(2.0, gt=0)
    max_length: int = Field(16, ge=2)  # tokens per prompt, [END] included

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> TextConfig:
        if self.dim % self.heads:
            raise ValueError(f"text.dim ({self.dim}) must be a multiple of text.heads ({self.heads})")
        return self


class CLIPConfig(Section):
    embed_dim: int = Field(64, gt=0)  # the joint image-text embedding space
    image: ViTConfig = ViTConfig(patch_size=4, dim=64, depth=4, heads=4)
    text: TextConfig = TextConfig()


class TextBlock(nn.Module):
    """Pre-norm block: x = x + CausalAttn(LN(x)); x = x + MLP(LN(x)). Token i sees tokens 0..i only."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """x [B, L, dim] -> [B, L, dim]; with ``need_weights`` also the probabilities [B, heads, L, L]."""
        a = self.attn(self.norm1(x), need_weights=need_weights)
        a, probs = a if need_weights else (a, None)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return (x, probs) if need_weights else x


class TextTransformer(nn.Module):
    """(ids [B, L], mask [B, L]) -> (states [B, L, dim], pooled [B, dim]: the [END] token's state)."""

    def __init__(self, cfg: TextConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_length, cfg.dim))
        self.blocks = nn.ModuleList(TextBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.apply(_init_linear)
        trunc_normal_(self.token_embed.weight)
        trunc_normal_(self.pos_embed)

    def _encode(self, ids: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, L = ids.shape
        if L > self.cfg.max_length:
            raise ValueError(f"{L} tokens, but this text tower takes at most {self.cfg.max_length}")
        x = self.token_embed(ids) + self.pos_embed[:, :L]  # (B, L, dim)
        maps = []
        for block in self.blocks:
            if need_weights:
                x, probs = block(x, need_weights=True)
                maps.append(probs)  # (B, heads, L, L)
            else:
                x = block(x)
        return x, maps

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = len(ids)
        x, _ = self._encode(ids, need_weights=False)
        states = self.norm(x)  # (B, L, dim); padding after [END] never reaches a real token (causal mask)
        end = mask.long().sum(1) - 1  # [END] is the last real token
        return states, states[torch.arange(B), end]  # (B, L, dim), (B, dim)

    def attention_maps(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per block, first to last, the causal self-attention probabilities [B, heads, L, L].

        Row i is what token i reads of tokens 0..i: zero above the diagonal, every row sums to 1.
        ``mask`` [B, L] (True = a real token) is ``forward``'s: the rows and columns after a
        prompt's [END] belong to its padding, computed like any other token but read by no real
        one (the causal mask), so a picture of prompt b crops to its first ``mask[b].sum()`` tokens.
        """
        if mask.shape != ids.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must have the shape of ids {tuple(ids.shape)}")
        return self._encode(ids, need_weights=True)[1]


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig, image_size: int, in_channels: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.image = ViT(cfg.image, image_size, in_channels, cfg.embed_dim)  # its head is W_i
        self.text = TextTransformer(cfg.text, vocab_size)
        self.text_proj = nn.Linear(cfg.text.dim, cfg.embed_dim, bias=False)  # W_t
        trunc_normal_(self.text_proj.weight)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # t; the temperature is exp(-t)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> unit embeddings [B, embed_dim]."""
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, L] -> unit embeddings [B, embed_dim]."""
        return F.normalize(self.text_proj(self.text(ids, mask)[1]), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logits [B, B]: row i scores image i against every caption of the batch."""
        return self.scale() * self.encode_image(images) @ self.encode_text(ids, mask).T


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """The symmetric cross-entropy (fig. 3): (CE over captions per image + CE over images per caption) / 2."""
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
