"""Conditioning shared by the denoisers (U-Net and DiT): timestep and class embeddings, and
optionally the pooled text state (a text model's token states enter through cross-attention,
``attention.py``)."""

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in Vaswani et al. 2017 / Ho et al. 2020.

    t: [B] -> [B, dim]; the first half are cosines, the second half sines.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class ConditionEmbedding(nn.Module):
    """Time embedding (sinusoid -> MLP) plus, for a class-conditional model, a learned class embedding.

    Class ``num_classes`` is the extra "null" class: the unconditional model that classifier-free
    guidance needs; labels are dropped to it during training. ``num_classes = 0`` builds an
    unconditional denoiser (``conditioning: none``) with no label input at all.

    The class table starts at N(0, 0.02²), as in the DiT reference code, not at nn.Embedding's
    N(0, 1): a unit-variance row of width 4·channels has norm ≈ 2√channels, several times the time
    embedding's, so at the start every label, the null one included, would drown the timestep.
    """

    def __init__(self, num_classes: int, dim: int, freq_dim: int = 256, text_dim: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        if self.class_emb is not None:
            nn.init.normal_(self.class_emb.weight, std=0.02)
        if text_dim:  # only then, so that a class model's state dict keeps its keys
            self.text_proj = nn.Linear(text_dim, dim)
            nn.init.zeros_(self.text_proj.weight)  # the prompt enters through cross-attention first, this learns to help
            nn.init.zeros_(self.text_proj.bias)

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.freq_dim))  # (B, dim)
        if pooled is not None:
            if not hasattr(self, "text_proj"):
                raise ValueError("this denoiser was built without a text input; it takes no pooled text state")
            emb = emb + self.text_proj(pooled)  # the pooled prompt, as Imagen and SDXL add it to the time embedding
        if self.class_emb is None:
            if y is not None:
                raise ValueError("this denoiser was built without a class input (conditioning: none)")
            return emb
        return emb + self.class_emb(y)
