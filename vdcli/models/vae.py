"""The KL-regularised autoencoder: the first-stage model of latent diffusion (Rombach et al. 2022).

Read top to bottom: ``VAEConfig``, ``ResBlock``, ``Encoder``, ``Decoder``, ``AutoencoderKL``,
then the loss. The encoder maps an image to the mean and log-variance of a diagonal Gaussian
q(z|x) over a latent grid ``downsample`` times smaller per side; the decoder maps a latent back
to pixels. A small KL term towards N(0, I) keeps the latent space smooth enough to sample and to
walk through, without blurring reconstructions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from vdcli.config import Section


class VAEConfig(Section):
    downsample: int = Field(4, gt=0)  # image side / latent side; a power of 2
    latent_channels: int = Field(4, gt=0)
    channels: int = Field(32, gt=0)  # width at full resolution; doubles at each down-sampling
    blocks_per_level: int = Field(1, gt=0)

    @field_validator("downsample")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of 2 (1, 2, 4, 8 ...), got {v}")
        return v

    def widths(self) -> list[int]:
        """Channel width at each resolution level, from the image down to the latent grid."""
        levels = int(math.log2(self.downsample))
        return [self.channels * min(2**i, 4) for i in range(levels + 1)]


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with a residual connection (1x1 conv when widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, in_channels: int):
        super().__init__()
        widths = cfg.widths()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            cin = widths[max(i - 1, 0)]
            if i > 0:
                layers.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))  # halve the resolution
            layers += [ResBlock(cin if j == 0 else w, w) for j in range(cfg.blocks_per_level)]
        self.layers = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(_groups(widths[-1]), widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.conv_in(x))  # (B, widths[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * latent_channels, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, out_channels: int):
        super().__init__()
        widths = cfg.widths()[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            cin = widths[max(i - 1, 0)]
            if i > 0:  # nearest-neighbour upsampling + conv: no checkerboard artefacts of transposed convs
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
            layers += [ResBlock(cin if j == 0 else w, w) for j in range(cfg.blocks_per_level)]
        self.layers = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(_groups(widths[-1]), widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.conv_in(z))  # (B, widths[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W); no tanh: MSE to [-1, 1] targets trains faster without it


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig, image_size: int, in_channels: int):
        super().__init__()
        if image_size % cfg.downsample:
            raise ValueError(f"image size {image_size} is not a multiple of model.downsample {cfg.downsample}; "
                             f"set data.image_size to a multiple (MNIST: 32, padding 28 -> 32)")
        self.cfg = cfg
        self.encoder = Encoder(cfg, in_channels)
        self.decoder = Decoder(cfg, in_channels)
        self.latent_shape = (cfg.latent_channels, image_size // cfg.downsample, image_size // cfg.downsample)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) as (mean, logvar), each [B, latent_channels, H/f, W/f]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps  # the reparameterisation trick (Kingma & Welling 2014)
        return self.decode(z), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent elements, averaged over the batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, kl_weight: float):
    """Reconstruction + beta * KL, both per image: the squared error summed over pixels.

    Summing both terms over their elements (rather than averaging) keeps beta meaning the same
    thing whatever the image and latent sizes are.
    """
    recon_term = (recon - x).pow(2).flatten(1).sum(1).mean()
    kl = kl_divergence(mean, logvar)
    return recon_term + kl_weight * kl, {"recon": recon_term.detach(), "kl": kl.detach()}
