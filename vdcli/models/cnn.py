"""A small convolutional classifier: the ViT's baseline for the lecture's inductive-bias claim.

Dosovitskiy et al. (2021, sec. 3.1) say a transformer "lacks some of the inductive biases inherent
to CNNs, such as translation equivariance and locality". This file is the network with those
biases, at about the parameter count of the MNIST ViT recipe (~205k with the defaults, the ViT
~206k), trained by the same ``vd train-vit`` (``model.arch: cnn``), so that
``bench/inductive_bias.py`` compares the two architectures and nothing else.

Read top to bottom: ``CNNConfig``, ``ConvBlock``, ``CNN``.

- Locality: every output of a 3x3 convolution is a function of a 3x3 neighbourhood only; a unit
  of stage s sees a window that grows with depth, never the whole image at once. A ViT's first
  layer already lets each patch attend to every other; where a patch is must be learned from the
  position embedding.
- Translation equivariance: one kernel is slid over every position, so shifting the input shifts
  the feature map (up to the borders, and up to the stride of the 2x2 max-pools between stages).
  The normalisation keeps it: ``GroupNorm(1, C)`` takes its statistics over the whole map. The
  global average pool at the end turns equivariance into (approximate) invariance: where the
  digit sits matters little to the class; exactly so only far from the borders, and the zero
  padding's border effect reaches across the small last maps. A ViT's patch embedding is a stride-P convolution, equivariant to
  shifts by whole patches only, and its position embedding breaks even that.

Layout: ``len(channels)`` stages of ``convs`` x (3x3 conv, GroupNorm, GELU), a 2x2 max-pool
between stages, global average pool, one linear head. 28 -> 14 -> 7 pixels with three stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vdcli.config import Section


class CNNConfig(Section):
    channels: list[int] = Field([32, 64, 96], min_length=1)  # width of each stage; a 2x2 max-pool between stages
    convs: int = Field(2, gt=0)  # 3x3 convolutions per stage


class ConvBlock(nn.Module):
    """3x3 convolution (padding 1: same size), GroupNorm over the whole map, GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(1, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x)))


class CNN(nn.Module):
    """Images [B, C, H, W] in [-1, 1] -> class logits [B, num_classes]."""

    def __init__(self, cfg: CNNConfig, image_size: int, in_channels: int, num_classes: int):
        super().__init__()
        if image_size < 2 ** (len(cfg.channels) - 1):
            raise ValueError(f"{len(cfg.channels)} stages halve a {image_size}-pixel image below one pixel; use fewer model.channels")
        self.cfg = cfg
        self.image_size = image_size
        stages, c = [], in_channels
        for i, width in enumerate(cfg.channels):
            layers = [ConvBlock(c if k == 0 else width, width) for k in range(cfg.convs)]
            if i < len(cfg.channels) - 1:
                layers.append(nn.MaxPool2d(2))  # 28 -> 14 -> 7: floor, as the odd sizes of other images need
            stages.append(nn.Sequential(*layers))
            c = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The globally average-pooled last feature map [B, channels[-1]]: what the head classifies."""
        x = images
        for stage in self.stages:
            x = stage(x)  # (B, width, H / 2^i, W / 2^i)
        return x.mean(dim=(2, 3))  # (B, width): where in the image no longer matters

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, num_classes)
