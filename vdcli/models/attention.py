"""Multi-head attention with an optional context: self-attention, or cross-attention to a text.

One module for both, as in Stable Diffusion (Rombach et al. 2022, sec. 3.3: "Attention(Q, K, V)
= softmax(QK^T / √d) · V, with Q = W_Q · φ(z_t), K = W_K · τ(y), V = W_V · τ(y)"), so that the
U-Net, the DiT and a ControlNet copy share the code and the attention-map commands read its
probabilities one way:

- ``context=None``: self-attention among the tokens x [B, T, dim] (queries, keys and values
  all from x, one fused ``qkv`` projection, as the ViT's ``Attention``);
- ``context`` [B, L, context_dim]: cross-attention; queries from x, keys and values from the
  context tokens (e.g. the CLIP text encoder's token states), with ``context_mask`` [B, L]
  (True = a real token) so that padding gets no probability.

A module built with ``context_dim`` is a cross-attention; one built without is a
self-attention; each refuses the other's call. Probabilities are computed explicitly only when
asked (``need_weights``) or while ``record`` holds a list (that is how ``vd attn-map`` averages
them over steps); otherwise ``attend`` computes the same function with fused kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, **kwargs)``: softmax(QK^T / √d) · V over [..., T, d] heads.

    Eager, torch's fused kernel. Compiled, and with at most 256 query-key pairs a head (the
    U-Net's 4x4 = 16 positions), the math backend instead: its matmuls and softmax are ordinary
    ops that inductor fuses with their neighbours, where the fused kernel is an opaque call with
    a fixed cost larger than this much work (the U-Net's compiled training step: 2-3 points
    faster against diffusers; longer sequences and eager calls gain nothing; bench/RESULTS.md).
    """
    if torch.compiler.is_compiling() and q.shape[-2] * k.shape[-2] <= 256:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


class Attention(nn.Module):
    """(x [B, T, dim], context [B, L, context_dim] or None, context_mask [B, L] bool or None) -> [B, T, dim]."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be a multiple of its heads ({heads})")
        self.heads, self.context_dim, self.dropout = heads, context_dim, dropout
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.record: list[torch.Tensor] | None = None  # a list here collects every call's probabilities

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                need_weights: bool = False):
        B, T, C = x.shape
        h = self.heads
        if self.context_dim is None:
            if context is not None:
                raise ValueError("this attention was built without a context_dim (self-attention) but was given a context")
            q, k, v = (t.view(B, T, h, C // h).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))  # 3 x (B, h, T, d)
            mask = None
        else:
            if context is None:
                raise ValueError("this cross-attention needs a context [B, L, context_dim]")
            L = context.shape[1]
            q = self.q(x).view(B, T, h, C // h).transpose(1, 2)  # (B, h, T, d)
            k, v = (t.view(B, L, h, C // h).transpose(1, 2) for t in self.kv(context).chunk(2, dim=-1))  # 2 x (B, h, L, d)
            mask = None if context_mask is None else context_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, L)
        p_drop = self.dropout if self.training else 0.0
        if need_weights or self.record is not None:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, T, L)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.softmax(dim=-1)  # rows sum to 1 over the real tokens
            if self.record is not None:
                self.record.append(probs.detach())
            y = F.dropout(probs, p_drop) @ v  # (B, h, T, d)
        else:
            probs = None
            y = attend(q, k, v, attn_mask=mask, dropout_p=p_drop)  # (B, h, T, d)
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))  # heads side by side again: (B, T, C)
        return (y, probs) if need_weights else y


class recording:
    """``with recording(model) as maps:`` collects the probabilities of every cross-attention in
    ``model`` while the block runs, as a list of [B, heads, T, L] tensors in call order."""

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if isinstance(m, Attention) and m.context_dim is not None]
        self.maps: list[torch.Tensor] = []

    def __enter__(self) -> list[torch.Tensor]:
        for m in self.modules:
            m.record = self.maps
        return self.maps

    def __exit__(self, *exc) -> None:
        for m in self.modules:
            m.record = None
