"""The KL-regularised autoencoder: the first-stage model of latent diffusion (Rombach et al. 2022).

Read top to bottom: ``VAEConfig``, ``ResBlock``, ``Encoder``, ``Decoder``, ``AutoencoderKL``,
then the loss (``kl_divergence``, ``vae_loss``).

The encoder maps an image [B, C, H, W] to the mean and log-variance of a diagonal Gaussian
q(z|x) over a latent grid [B, latent_channels, H/f, W/f], f = ``downsample``; the decoder maps a
latent back to pixels. A small KL term towards N(0, I) (Kingma & Welling 2014) keeps the latent
space smooth enough to sample from and to walk through, without blurring the reconstructions:
Rombach et al. use a weight of about 1e-6 with a perceptual loss; with plain MSE on MNIST 1e-4
does the same job. The latents are not unit-variance; ``tasks/vae.py`` measures the scale factor
that makes them so (sec. 4.3.2) before diffusion sees them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from vdcli.config import Section


class VAEConfig(Section):
    downsample: int = Field(4, gt=0)  # f = image side / latent side; a power of 2 (32x32 -> 8x8 at f=4)
    latent_channels: int = Field(4, gt=0)
    channels: int = Field(32, gt=0)  # width at full resolution; doubles at each down-sampling, up to 4x
    blocks_per_level: int = Field(1, gt=0)  # residual blocks at each resolution

    @field_validator("downsample")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of 2 (1, 2, 4, 8 ...), got {v}")
        return v

    def widths(self) -> list[int]:
        """Channel width at each resolution, from the image (level 0) down to the latent grid.

        Capped at 4x the base width: at f=8 the deepest level works on 4x4 maps, where more
        channels cost memory and time for little gain on small images.
        """
        levels = int(math.log2(self.downsample))
        return [self.channels * min(2**i, 4) for i in range(levels + 1)]


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: the same function in training and evaluation, at any batch size.
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Image -> the 2 * latent_channels parameters (mean, log-variance) of q(z|x) at every latent cell."""

    def __init__(self, cfg: VAEConfig, in_channels: int):
        super().__init__()
        widths = cfg.widths()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            if i > 0:  # a strided conv learns its own down-sampling filter
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # (B, c, H/2, W/2)
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(c, w))
                c = w
        self.layers = nn.Sequential(*layers)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.conv_in(x))  # (B, widths[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * latent_channels, H/f, W/f)


class Decoder(nn.Module):
    """Latent -> image: the encoder's mirror image, up-sampling where it down-sampled."""

    def __init__(self, cfg: VAEConfig, out_channels: int):
        super().__init__()
        widths = cfg.widths()[::-1]  # from the latent grid up to the image
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            if i > 0:  # nearest-neighbour + conv: none of the checkerboard artefacts of transposed convs
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]  # (B, c, 2H, 2W)
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(c, w))
                c = w
        self.layers = nn.Sequential(*layers)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.conv_in(z))  # (B, widths[0], H, W)
        # No tanh: the targets are in [-1, 1], and MSE through a tanh has vanishing gradients
        # exactly at the saturated black background that fills most of an MNIST digit. Callers
        # that need valid pixels clamp (``to_uint8`` does).
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


class AutoencoderKL(nn.Module):
    """Images [B, C, S, S] in [-1, 1] <-> latents [B, latent_channels, S/f, S/f]."""

    def __init__(self, cfg: VAEConfig, image_size: int, in_channels: int):
        super().__init__()
        if image_size % cfg.downsample:
            raise ValueError(
                f"image size {image_size} is not a multiple of model.downsample {cfg.downsample}; "
                f"set data.image_size to a multiple of it (MNIST: 32, which pads 28 -> 32)"
            )
        self.cfg = cfg
        self.encoder = Encoder(cfg, in_channels)
        self.decoder = Decoder(cfg, in_channels)
        side = image_size // cfg.downsample
        self.latent_shape = (cfg.latent_channels, side, side)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) as (mean, logvar), each [B, latent_channels, H/f, W/f]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        # The range used by Rombach et al.'s released code: exp(logvar) stays finite in float32, so an
        # untrained or diverging encoder cannot turn the sample or the KL into inf or NaN.
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_channels, h, w] -> images [B, C, h*f, w*f]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction of a sample z ~ q(z|x), mean, logvar).

        With a generator, eps is drawn on the generator's device and then moved, so one CPU
        generator gives the same sample whatever device the model is on.
        """
        mean, logvar = self.encode(x)
        if generator is None:
            eps = torch.randn_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype).to(mean.device)
        z = mean + (0.5 * logvar).exp() * eps  # the reparameterisation trick (Kingma & Welling 2014, eq. 10)
        return self.decode(z), mean, logvar


class LatentNorm(nn.Module):
    """The latents a denoiser sees: z = (x − mean) / std, element by element, x ~ q(z|image).

    Rombach et al. (2022, sec. 4.3.2 and appendix G) rescale latents by one global factor 1/σ so
    that their overall variance is 1. That leaves the elements unequal: an MNIST VAE's latent cell
    over the always-empty border varies with std 0.03 after that scaling, a cell over the strokes
    with std 1.76. Diffusion treats every element alike (the prior is N(0, I)), so in a quiet cell
    even a small error of the denoiser moves the decoder's input far outside anything it was
    trained on, and the decoded image turns to texture. Standardising every element, with its
    mean and std over the training set, puts each on the prior's scale and shrinks a denoiser error
    in a quiet cell by that cell's std on the way back. (EDM2, Karras et al. 2024, normalises SD's
    latents per channel; on a latent grid whose positions differ, as digits' do, per element is
    the same idea, and on photos, whose positions are alike, it comes out nearly per channel.)

    The std counts the posterior's own noise, Var[z] = Var_images[μ] + E_images[σ²], because the
    denoiser trains on samples μ + σ ε. A checkpoint from before this stored only the global scale
    factor; ``global_scale`` rebuilds that.
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))  # (c, h, w)
        self.register_buffer("std", torch.ones(shape))  # (c, h, w)

    @classmethod
    def fit(cls, mean: torch.Tensor, logvar: torch.Tensor) -> "LatentNorm":
        """From the posteriors of a training set, [N, c, h, w] each."""
        norm = cls(mean.shape[1:])
        var = mean.double().var(0) + logvar.double().exp().mean(0)  # (c, h, w)
        # A floor against a cell that never varies (a dead channel): dividing by ~0 would blow it up.
        norm.mean.copy_(mean.double().mean(0))
        norm.std.copy_(var.sqrt().clamp(min=1e-3 * var.mean().sqrt().item()))
        return norm

    @classmethod
    def global_scale(cls, shape: tuple[int, ...], scale_factor: float) -> "LatentNorm":
        norm = cls(shape)
        norm.std.fill_(1.0 / scale_factor)
        return norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latents [B, c, h, w] -> standardised latents."""
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents -> VAE latents, for the decoder."""
        return z * self.std + self.mean


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the latent elements, averaged over the batch.

    The closed form for diagonal Gaussians (Kingma & Welling 2014, appendix B), per element:
    0.5 * (mean^2 + exp(logvar) - 1 - logvar), which is 0 exactly when mean = 0 and logvar = 0.
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction + kl_weight * KL, both per image: the squared error is summed over pixels.

    This is the negative ELBO of a Gaussian decoder (up to constants) with beta = kl_weight.
    Summing both terms over their elements, rather than averaging, keeps kl_weight meaning the
    same trade-off whatever the image and latent sizes are. So ``parts["recon"]`` is a sum of
    squared errors per image, not a per-pixel MSE: divide by C*H*W for that.
    """
    recon_term = (recon - x).pow(2).flatten(1).sum(1).mean()
    kl = kl_divergence(mean, logvar)
    return recon_term + kl_weight * kl, {"recon": recon_term.detach(), "kl": kl.detach()}
