"""Multi-head attention, the one module every transformer in vd uses (timm's ``Attention``; STYLE §12, §15).

softmax(QK^T / √d) · V (Vaswani et al. 2017), where what differs between the models is an
argument, not a class:

- ``context=None``: self-attention among the tokens x [B, T, dim] (queries, keys and values
  all from x, one fused ``qkv`` projection): the ViT's encoder, the DiT's blocks;
- ``causal=True``: self-attention where token i sees tokens 0..i only (the CLIP text tower,
  as GPT-2);
- ``context`` [B, L, context_dim], for a module built with ``context_dim``: cross-attention,
  as in Stable Diffusion (Rombach et al. 2022, sec. 3.3: "Q = W_Q · φ(z_t), K = W_K · τ(y),
  V = W_V · τ(y)"); queries from x (``q``), keys and values from the context tokens (``kv``),
  e.g. the CLIP text tower's token states, with ``context_mask`` [B, L] (True = a real token)
  so that padding gets no probability;
- ``queries=n``: only the first n tokens' outputs are computed (all still attend to every key
  they may see): the ViT's last block, whose class token alone is read.

A module built with ``context_dim`` is a cross-attention; one built without is a
self-attention; each refuses the other's call. Probabilities [B, heads, T, keys] are computed
explicitly only when asked (``need_weights``) or while ``record`` holds a list (that is how
``vd attn-map --prompt`` averages them over steps); otherwise ``attend`` computes the same
function with fused kernels. Both paths mask the same keys and drop out the same probabilities.

Heads: ``split_heads`` and ``merge_heads`` are the one place a [B, T, heads * d] projection
becomes [B, heads, T, d] and back; the U-Net's convolutional ``SelfAttention`` uses them too.
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


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, heads * d] -> [B, heads, T, d], a view: each head's d features stay contiguous (the
    layout the fused kernels take; strided ones fall back to the unfused math, on the CPU too)."""
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]: the heads side by side again."""
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)


class Attention(nn.Module):
    """(x [B, T, dim], context [B, L, context_dim] or None, context_mask [B, L] bool or None) -> [B, T, dim].

    ``need_weights=True``: (output, probabilities [B, heads, T, keys]); rows sum to 1, with zero
    for every key a query may not see (above the diagonal when causal, padding of the context).
    ``queries=n``: the first n tokens' outputs only, [B, n, dim] (and probabilities [B, heads, n, keys]).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0,
                 causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be a multiple of its heads ({heads})")
        if causal and context_dim is not None:
            raise ValueError("a causal mask orders a sequence's own tokens: a cross-attention cannot be causal")
        self.heads, self.context_dim, self.dropout, self.causal = heads, context_dim, dropout, causal
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.record: list[torch.Tensor] | None = None  # a list here collects every call's probabilities

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                need_weights: bool = False, queries: int | None = None):
        h = self.heads
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this attention was built without a context_dim (self-attention) "
                                 "but was given a context or context_mask")
            q, k, v = (split_heads(t, h) for t in self.qkv(x).chunk(3, dim=-1))  # 3 x (B, h, T, d)
            mask = None
        else:
            if context is None:
                raise ValueError("this cross-attention needs a context [B, L, context_dim]")
            q = split_heads(self.q(x), h)  # (B, h, T, d)
            k, v = (split_heads(t, h) for t in self.kv(context).chunk(2, dim=-1))  # 2 x (B, h, L, d)
            mask = None if context_mask is None else context_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, L)
        if queries is not None:
            q = q[:, :, :queries]  # (B, h, queries, d): every key is still there
        p_drop = self.dropout if self.training else 0.0
        if need_weights or self.record is not None:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, T, keys)
            if self.causal:  # query i sees keys 0..i: top-left aligned, as SDPA's is_causal, so queries= keeps it
                visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()  # (T, keys)
                scores = scores.masked_fill(~visible, float("-inf"))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.softmax(dim=-1)  # rows sum to 1 over the keys each query may see
            if self.record is not None:
                self.record.append(probs.detach())
            y = F.dropout(probs, p_drop) @ v  # (B, h, T, d)
        else:
            probs = None
            y = attend(q, k, v, attn_mask=mask, dropout_p=p_drop, is_causal=self.causal)  # (B, h, T, d)
        y = self.proj(merge_heads(y))  # (B, T, dim)
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
