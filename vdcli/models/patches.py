"""Patches: how an image becomes a sequence of tokens (Dosovitskiy et al. 2021, sec. 3.1).

``patchify`` is the one function that cuts images into patches: the ViT's patch embedding, the
DiT denoiser and ``vd patchify`` all call it, so what the command exports is exactly what the
encoder receives.

Order: row-major from the top left. With P the patch size and W // P patches per row, patch
k = r * (W // P) + c is ``images[:, :, r*P:(r+1)*P, c*P:(c+1)*P]``, flattened channel first
(all of channel 0's rows, then channel 1's, ...), which is also how a [C, P, P] tensor flattens.
"""

import torch
from torch import nn


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C*P*P] with N = (H // P) * (W // P), in the order above."""
    if images.ndim != 4:
        raise ValueError(f"patchify expects a batch of images [B, C, H, W], got a tensor of shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"a {h}x{w} image does not split into {p}x{p} patches (both sides must be multiples of {p})")
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, rows, P, cols, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, P, P): patch index first, pixels channel-first
    return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The exact inverse of ``patchify``: [B, N, C*P*P] -> [B, C, H, W]."""
    b, n, d = patches.shape
    p = patch_size
    if height % p or width % p or n != (height // p) * (width // p) or d != channels * p * p:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not tile a {channels}x{height}x{width} image with "
            f"{p}x{p} patches (expected [B, {(height // p) * (width // p)}, {channels * p * p}])"
        )
    x = patches.reshape(b, height // p, width // p, channels, p, p)  # (B, rows, cols, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, P, cols, P)
    return x.reshape(b, channels, height, width)


class PatchEmbed(nn.Module):
    """patchify, then one linear map from a flattened patch to the token width.

    This is the usual stride-P convolution written as what it is, a linear layer applied to each
    patch, so the patch a reader sees in ``vd patchify`` is visibly the embedding's input.
    """

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(images, self.patch_size))  # (B, N, C*P*P) -> (B, N, dim)
